"""The peer arm: nextbest's workload written on Quix Streams 3.

The same decisions as the worker (nextbest's pure core: envelope parsing, the
context reducer, signals, rules, triggers), so only the streaming framework
differs. What Quix provides is used the way its documentation shows:

* one ``StreamingDataFrame`` per ``events.<channel>`` topic, concatenated with
  ``concat``; a stateful ``apply`` on the concatenation keeps one state store
  shared by all channels (co-partitioned by customer id), in RocksDB with a
  changelog written at each checkpoint;
* triggers leave through ``to_topic`` on a filtered branch per channel;
* the Redis mirror is a ``BatchingSink``: at each checkpoint it writes the
  newest document of every customer changed since the last one, in one
  pipeline, with nextbest's own version-guarded script (same key, TTL and
  update channel as the worker).

Choices: state values are the core's own encoding, stored as bytes
(identity ``dumps``/``loads``), as the worker stores them;
``commit_interval=1.0`` s (Quix's default is 5 s) because the mirror
is written at checkpoints and a live context should not lag seconds behind;
otherwise Quix's defaults (at-least-once). Timer ticks and rekeying are not
part of the peer workload: the harness keys every record by customer id.

Settings come from the same ``NEXTBEST_*`` variables as the worker.

    python -m bench.arms.quix      # in .dev/bench/venv (make bench)
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from quixstreams import Application, message_context
from quixstreams.sinks import BatchingSink, SinkBatch
from quixstreams.state import State
from quixstreams.state.rocksdb import RocksDBOptions
from redis import Redis

from nextbest.adapters.projection import WRITE_IF_NOT_OLDER, context_key, updates_channel
from nextbest.bootstrap import engine_config, load_ruleset
from nextbest.core import state as states
from nextbest.core import triggers as trigger_codec
from nextbest.core.engine import Engine
from nextbest.core.envelope import Rejected, parse
from nextbest.settings import Settings

COMMIT_INTERVAL = 1.0
STATE_KEY = b"state"
POLL_TIMEOUT = 0.05


class RedisMirrorSink(BatchingSink):
    """Newest document per customer, written at each checkpoint in one pipeline."""

    def __init__(self, url: str, ttl_ms: int) -> None:
        super().__init__()
        self._url = url
        self._ttl_ms = ttl_ms
        self._client: Redis | None = None
        self._sha = ""

    def setup(self) -> None:
        self._client = Redis.from_url(self._url)
        self._sha = str(self._client.script_load(WRITE_IF_NOT_OLDER))

    def write(self, batch: SinkBatch) -> None:
        assert self._client is not None
        newest: dict[str, tuple[int, bytes]] = {}
        for item in batch:
            customer, version, document = item.value
            if customer not in newest or newest[customer][0] <= version:
                newest[customer] = (version, document)
        pipe = self._client.pipeline(transaction=False)
        for customer, (version, document) in newest.items():
            pipe.evalsha(
                self._sha,
                1,
                context_key(customer),
                document,
                version,
                self._ttl_ms,
                updates_channel(customer),
            )
        pipe.execute()


def build(settings: Settings) -> Application:
    engine = Engine(engine_config(settings), load_ruleset(settings))
    config = engine.config
    app = Application(
        broker_address=settings.kafka_bootstrap,
        consumer_group=settings.app_id,
        auto_offset_reset="earliest",
        state_dir=str(settings.data_dir),
        commit_interval=COMMIT_INTERVAL,
        consumer_poll_timeout=POLL_TIMEOUT,
        # the core encodes its own state: store its bytes as they are (as the worker does)
        rocksdb_options=RocksDBOptions(dumps=_same, loads=_same),
        on_processing_error=_count_error,
    )
    deadletter = app.topic("events.deadletter", value_serializer="bytes", key_serializer="bytes")
    frames = [
        app.dataframe(
            app.topic(f"events.{c}", value_deserializer="bytes", key_deserializer="bytes")
        )
        for c in settings.channels
    ]
    events = frames[0]
    for frame in frames[1:]:
        events = events.concat(frame)

    def process(value: bytes, key: Any, timestamp: int, headers: Any, state: State) -> Any:
        now = datetime.now(UTC)
        channel = message_context().topic.removeprefix("events.")
        try:
            event = parse(
                value,
                [(k, bytes(v)) for k, v in headers or ()],
                channel,
                now=now,
                max_bytes=config.max_event_bytes,
                max_clock_skew=config.max_clock_skew,
            )
        except Rejected:
            return ("rejected", value)
        raw = state.get(STATE_KEY)  # Quix scopes state by the record key: the customer
        outcome = engine.process(None if raw is None else states.decode(raw), event, now)
        if not outcome.applied:
            return None
        context = outcome.state.context
        document = states.encode_document(context)
        state.set(STATE_KEY, states.encode(outcome.state, document))
        trigger = None
        if outcome.trigger is not None and outcome.snapshot is not None:
            snapshot = states.encode_document(outcome.snapshot)
            trigger = (outcome.trigger.channel, trigger_codec.encode(outcome.trigger, snapshot))
        return ("applied", (context.customer_id, context.version, document), trigger)

    results = events.apply(process, stateful=True, metadata=True).filter(lambda r: r is not None)
    rejected = results.filter(lambda r: r[0] == "rejected")
    rejected.apply(lambda r: r[1]).to_topic(deadletter)
    applied = results.filter(lambda r: r[0] == "applied")
    applied.apply(lambda r: r[1]).sink(
        RedisMirrorSink(settings.redis_url, int(settings.context_ttl.total_seconds() * 1000))
    )
    for channel in settings.channels:
        topic = app.topic(f"triggers.{channel}", value_serializer="bytes", key_serializer="bytes")
        (
            applied.filter(lambda r, c=channel: r[2] is not None and r[2][0] == c)
            .apply(lambda r: r[2][1])
            .to_topic(topic)  # keyed like the input record: by customer id
        )
    return app


def _same(value: bytes) -> bytes:
    return value


def _count_error(*_: Any) -> bool:
    return False  # not ignored: Quix stops, the harness reports the arm's exit


def main() -> None:
    app = build(Settings())
    print("quix arm ready", flush=True)
    app.run()


if __name__ == "__main__":
    main()
