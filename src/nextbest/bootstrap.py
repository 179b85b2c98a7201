"""The one place that wires nextbest together from :class:`~nextbest.settings.Settings`.

``build_worker`` makes the Faust app, its topics and table, the Redis mirror and
the metrics, and binds the core's :class:`~nextbest.core.engine.Engine` into the
agent. Nothing here runs on import.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
import weakref
from collections.abc import Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from typing import Any

import faust
import mode
import uvloop
from aiohttp import web
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError
from faust.streams import _current_event  # behind faust.current_event()
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    disable_created_metrics,
    generate_latest,
)

from nextbest.adapters.access import AccessError, check_api, check_worker
from nextbest.adapters.cache import StateCache
from nextbest.adapters.clients import (
    ClientConfigError,
    faust_credentials,
    kafka_client_options,
    redis_client,
)
from nextbest.adapters.delivery import use_eager_delivery
from nextbest.adapters.projection import RedisMirror
from nextbest.adapters.recovery import RecoveryWatch
from nextbest.adapters.stream import (
    DEADLETTER_TOPIC,
    EventHandler,
    event_topic,
    rekey_topic,
    tick_topic,
    trigger_topic,
)
from nextbest.api.app import ApiConfig, ApiMetrics, ContextApi
from nextbest.api.contexts import RedisContexts
from nextbest.api.widget_tokens import WidgetTokenError, widget_tokens_from
from nextbest.core.config import EngineConfig
from nextbest.core.engine import Engine
from nextbest.core.rules import RulesError, RuleSet, load_rules
from nextbest.core.schedule import DueIndex
from nextbest.failures import log_failure
from nextbest.metrics import Metrics
from nextbest.settings import Settings

TABLE = "contexts"
BLOCK_CACHE_BYTES = 32 * 1024 * 1024  # per partition; faust's default is 2 GiB
# per partition, at most MEMTABLES x WRITE_BUFFER_BYTES of writes in memory before a
# flush; faust's defaults (3 x 64 MiB) allow 1.5 GiB over 8 partitions
WRITE_BUFFER_BYTES = 16 * 1024 * 1024
MEMTABLES = 2
TICK_INTERVAL = 0.25  # seconds between timer ticks per partition: deadlines fire within 1 s
BATCH_MAX = 1000  # records per batch: one table (changelog) write per customer per batch
BATCH_WITHIN = 0.005  # seconds a batch waits to fill: the most it adds to a trigger
PRODUCER_LINGER = 0.005  # seconds: batches changelog and trigger records per request
TICK_RETENTION_MS = 3_600_000  # ticks are worthless once handled
RECOVERY_STALL_AFTER = 10.0  # seconds a partition's restore may stand still before a re-read
log = logging.getLogger(__name__)


class StartupError(Exception):
    """Something outside the process stops start-up; one line says what."""


def load_ruleset(settings: Settings) -> RuleSet:
    if settings.rules is None:
        text = resources.files("nextbest").joinpath("default_rules.toml").read_text("utf-8")
        return load_rules(text, channels=settings.channels, source="default_rules.toml")
    text = settings.rules.read_text("utf-8")
    return load_rules(text, channels=settings.channels, source=str(settings.rules))


def engine_config(settings: Settings) -> EngineConfig:
    return EngineConfig(
        channels=settings.channels,
        journey_window=settings.journey_window,
        cart_abandon_after=settings.cart_abandon_after,
        checkout_stall_after=settings.checkout_stall_after,
        search_frustration_count=settings.search_frustration_count,
        search_frustration_window=settings.search_frustration_window,
        trigger_cooldown=settings.trigger_cooldown,
        max_signal_age=settings.max_signal_age,
        max_event_bytes=settings.max_event_bytes,
    )


def changelog_topic(app_id: str) -> str:
    """Faust's name for the table's changelog, created here first (see ensure_topics)."""
    return f"{app_id}-{TABLE}-changelog"


def topic_names(settings: Settings) -> list[str]:
    names = [event_topic(c) for c in settings.channels]
    names += [trigger_topic(c) for c in settings.channels]
    app_id = settings.app_id
    return [
        *names,
        DEADLETTER_TOPIC,
        rekey_topic(app_id),
        tick_topic(app_id),
        changelog_topic(app_id),
    ]


async def ensure_topics(settings: Settings) -> None:
    """Create the contract's topics that are missing; refuse mismatched partition counts.

    The table's changelog is created here too, before faust starts: when faust
    creates it itself on a fresh broker, its consumer may keep a metadata
    snapshot with zero partitions and refuse every table write for minutes.
    """
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.kafka_bootstrap,
        request_timeout_ms=10_000,
        **kafka_client_options(settings),
    )
    try:
        await admin.start()
    except KafkaError as error:
        await admin.close()
        raise StartupError(
            f"cannot reach Kafka at {settings.kafka_bootstrap} ({type(error).__name__})"
        ) from None
    try:
        wanted = topic_names(settings)
        existing = set(await admin.list_topics())
        missing = [name for name in wanted if name not in existing]
        if missing:
            with suppress(TopicAlreadyExistsError):  # another worker was quicker
                await admin.create_topics(
                    [
                        NewTopic(
                            name,
                            settings.topic_partitions,
                            1,
                            topic_configs=_topic_configs(name, settings.app_id),
                        )
                        for name in missing
                    ]
                )
            log.info("created %d missing topics", len(missing))
        co_partitioned = [n for n in wanted if not n.startswith("triggers.")]
        for description in await admin.describe_topics(co_partitioned):
            count = len(description.get("partitions", ()))
            if description.get("error_code", 0) == 0 and count != settings.topic_partitions:
                raise StartupError(
                    f"topic {description['topic']} has {count} partitions but "
                    f"NEXTBEST_TOPIC_PARTITIONS is {settings.topic_partitions}"
                )
    finally:
        await admin.close()


def _topic_configs(name: str, app_id: str) -> dict[str, str]:
    if name == tick_topic(app_id):
        return {"retention.ms": str(TICK_RETENTION_MS), "segment.ms": str(TICK_RETENTION_MS)}
    if name == changelog_topic(app_id):
        return {"cleanup.policy": "compact"}
    return {}


@dataclass
class Worker:
    app: faust.App
    metrics: Metrics
    mirror: RedisMirror
    handler: EventHandler


def _clock() -> datetime:
    return datetime.now(UTC)


def build_worker(settings: Settings) -> Worker:
    """Wire the worker: raises :class:`RulesError` for a bad rules file."""
    rules = load_ruleset(settings)
    engine = Engine(engine_config(settings), rules)
    disable_created_metrics()  # type: ignore[no-untyped-call]  # *_created: scrape noise
    metrics = Metrics(CollectorRegistry())
    metrics.declare(settings.channels, rules.actions)
    partitions = settings.topic_partitions
    app = faust.App(
        settings.app_id,
        broker=[f"kafka://{host}" for host in settings.kafka_bootstrap.split(",")],
        broker_credentials=faust_credentials(settings),
        store="rocksdb://",
        datadir=str(settings.data_dir),
        topic_partitions=partitions,
        topic_replication_factor=1,
        topic_disable_leader=True,
        processing_guarantee=settings.processing_guarantee,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=settings.kafka_session_timeout.total_seconds(),
        broker_heartbeat_interval=min(3.0, settings.kafka_session_timeout.total_seconds() / 3),
        table_standby_replicas=0,
        stream_wait_empty=False,
        producer_linger=PRODUCER_LINGER,
        web_port=settings.worker_port,
        web_host="0.0.0.0",  # noqa: S104 - scraped by Prometheus from other hosts
    )
    use_eager_delivery(app)  # before the topics below touch app.transport
    rekey = rekey_topic(settings.app_id)
    ticks = tick_topic(settings.app_id)
    source = _raw_topic(app, *[event_topic(c) for c in settings.channels], rekey, ticks)
    table = app.Table(
        TABLE,
        default=None,
        partitions=partitions,
        key_type=bytes,  # bytes in and out: the core encodes its own state
        value_type=bytes,
        options={
            "block_cache_size": BLOCK_CACHE_BYTES,
            "write_buffer_size": WRITE_BUFFER_BYTES,
            "max_write_buffer_number": MEMTABLES,
        },
    )
    mirror = RedisMirror(redis_client(settings), metrics, ttl=settings.context_ttl)
    handler = EventHandler(
        engine=engine,
        table=table,
        triggers={c: _raw_topic(app, trigger_topic(c)) for c in settings.channels},
        deadletter=_raw_topic(app, DEADLETTER_TOPIC),
        rekey=_raw_topic(app, rekey),
        rekey_topic=rekey,
        tick_topic=ticks,
        index=DueIndex(),
        mirror=mirror,
        metrics=metrics,
        partitions=partitions,
        clock=_clock,
        cache=StateCache(settings.state_cache_size),
    )

    async def process(stream: faust.StreamT[bytes]) -> None:
        # take_events is on faust's Stream, not (yet) on its StreamT interface
        assert isinstance(stream, faust.Stream)
        # faust acknowledges a batch once this body returns: after its table writes
        async for events in stream.take_events(BATCH_MAX, within=BATCH_WITHIN):
            await handler.handle_batch(events, _enter_event)  # catches what it can

    app.agent(source, name="nextbest.events")(process)

    def owned_partitions() -> set[int]:
        return {tp.partition for tp in app.assignor.assigned_actives() if tp.topic == ticks}

    async def rebuild_index() -> None:
        handler.forget_states()  # partitions moved: another worker may have changed some
        try:
            handler.rebuild_index(owned_partitions())
        except Exception as error:  # deadlines then fire once events touch them again
            log_failure(log, error, "could not rebuild the deadline index")

    table.on_recover(rebuild_index)
    tick_sender = _raw_topic(app, ticks)

    async def send_ticks() -> None:
        # Owned partitions come and go during a rebalance: the index is not trimmed
        # here (that lost deadlines when a rebalance kept the same partitions and
        # ran no recovery); it is rebuilt when recovery completes.
        for partition in sorted(owned_partitions()):
            await tick_sender.send(value=b"", partition=partition)

    app.timer(TICK_INTERVAL, name="nextbest.ticks")(_guarded("timer ticks", send_ticks))
    app.service(_mirror_service(mirror))
    _add_pages(app, metrics)
    lag = _lag_updater(app, metrics, owned_partitions, handler.report_pending)
    app.timer(1.0, name="nextbest.consumer_lag")(_guarded("consumer lag", lag))
    # not an app.timer: faust starts those only once the first recovery is done
    app.add_dependency(_every_second(_guarded("recovery watch", _recovery_watcher(app))))
    return Worker(app, metrics, mirror, handler)


def _enter_event(event: faust.EventT[bytes]) -> None:
    """Make ``event`` faust's "current event" in this task, as stream iteration does.

    faust reads and writes a table in the partition of the current event, which
    ``take_events`` does not set in the agent's task. Only the context variable
    behind ``faust.current_event()`` is set: the stream's own ``current_event``
    attribute belongs to its iteration (``take_events`` reads it to collect the
    next record), and setting it there mixed up records.
    """
    _current_event.set(weakref.ref(event))


def _raw_topic(app: faust.App, *names: str) -> faust.TopicT:
    """A topic of bytes: the adapter decodes and encodes values itself."""
    return app.topic(*names, key_serializer="raw", value_serializer="raw")


def _mirror_service(mirror: RedisMirror) -> type[mode.Service]:
    class MirrorService(mode.Service):
        """Runs the Redis mirror beside the agents; drains it on shutdown."""

        @mode.Service.task
        async def _write(self) -> None:
            await mirror.run()

        async def on_stop(self) -> None:
            if not await mirror.drained(within=5.0):
                log.warning("stopping with %d context(s) not yet in Redis", mirror.pending)

    return MirrorService


def _add_pages(app: faust.App, metrics: Metrics) -> None:
    async def metrics_page(web: Any, request: Any) -> Any:
        return web.bytes(
            generate_latest(metrics.registry),
            content_type=CONTENT_TYPE_LATEST.split(";")[0] + "; version=0.0.4",
        )

    async def healthz(web: Any, request: Any) -> Any:
        return web.json({"status": "ok"})

    async def readyz(web: Any, request: Any) -> Any:
        body = _readiness(app)
        return web.json(body, status=200 if body["ready"] else 503)

    app.page("/metrics")(metrics_page)
    app.page("/healthz")(healthz)
    app.page("/readyz")(readyz)


def _readiness(app: faust.App) -> dict[str, bool]:
    recovered = bool(app.tables.recovery.completed.is_set())  # type: ignore[attr-defined]
    assigned = bool(app.consumer.assignment()) if app.consumer else False
    ready = recovered and assigned and not app.rebalancing
    return {"ready": ready, "recovered": recovered, "assigned": assigned}


def _lag_updater(
    app: faust.App,
    metrics: Metrics,
    partitions: Callable[[], set[int]],
    report_pending: Callable[[set[int]], None],
) -> Callable[[], Awaitable[None]]:
    async def update_lag() -> None:
        committed = app.monitor.tp_committed_offsets
        metrics.consumer_lag.clear()  # partitions move: report only the ones owned now
        for tp in app.consumer.assignment():
            end = app.consumer.highwater(tp)
            if end is None:  # not fetched yet after an assignment
                continue
            done = committed.get(tp, 0)
            metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(max(0, end - done))
        owned = partitions()
        metrics.partitions.set(len(owned))
        report_pending(owned)
        metrics.ready.set(1 if _readiness(app)["ready"] else 0)

    return update_lag


def _every_second(work: Callable[[], Awaitable[None]]) -> mode.Service:
    class EverySecond(mode.Service):
        """Started with the app's own services, before its first table recovery."""

        @mode.Service.timer(1.0)
        async def _tick(self) -> None:
            await work()

    return EverySecond()


def _recovery_watcher(app: faust.App) -> Callable[[], Awaitable[None]]:
    """Seek a partition whose table restore stands still back to where it stands.

    See :mod:`nextbest.adapters.recovery`: faust's restore can wait forever on
    a partition it received nothing for; reading it again unblocks it.
    """
    watch: RecoveryWatch[Any] = RecoveryWatch(RECOVERY_STALL_AFTER)

    async def check() -> None:
        recovery = app.tables.recovery  # type: ignore[attr-defined]
        if not recovery.in_recovery:
            watch.clear()
            return
        behind = {}
        for tp, highwater in recovery.active_highwaters.items():
            offset = recovery.active_offsets.get(tp)
            if highwater is not None and offset is not None and highwater > offset:
                behind[tp] = (offset, highwater)
        for stall in watch.stalled(behind, time.monotonic()):
            tp = stall.partition
            position = await app.consumer.position(tp)
            log.warning(
                "table restore of %s[%d] made no progress for %.0f s (restored to offset %d "
                "of %d, fetch position %s): reading it again from there",
                tp.topic,
                tp.partition,
                stall.seconds,
                stall.offset,
                stall.highwater,
                position,
            )
            app.consumer.resume_partitions({tp})
            await app.consumer.seek_wait({tp: max(stall.offset, 0)})

    return check


def _guarded(name: str, work: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
    """An exception escaping a faust timer crashes the whole app: log it instead."""

    async def run() -> None:
        try:
            await work()
        except Exception as error:
            log_failure(log, error, "%s failed; trying again at its next interval", name)

    return run


def build_api(settings: Settings) -> web.Application:
    """The API process: reads the Redis mirror only, never the worker.

    Raises :class:`WidgetTokenError` for an unusable widget-token key file.
    """
    widgets = widget_tokens_from(
        settings.widget_token_public_key_file,
        audience=settings.widget_token_audience,
        max_ttl=settings.widget_token_max_ttl.total_seconds(),
    )
    if widgets is not None:
        log.info("widget tokens accepted, signed by key(s) %s", ", ".join(widgets.key_ids))
    elif not settings.api_tokens:
        log.warning(
            "no NEXTBEST_API_TOKENS and no NEXTBEST_WIDGET_TOKEN_PUBLIC_KEY_FILE: "
            "/v1 answers anyone who can reach this port"
        )
    contexts = RedisContexts(redis_client(settings))
    api = ContextApi(
        contexts,
        ApiConfig(
            tokens=settings.api_tokens,
            rate_limit=settings.api_rate_limit,
            rate_burst=settings.api_rate_burst,
            max_request_bytes=settings.api_max_request_bytes,
            keepalive=settings.api_keepalive.total_seconds(),
            widget_tokens=widgets,
        ),
        ApiMetrics(CollectorRegistry()),
    )
    app = api.app()

    async def close(_: web.Application) -> None:
        await contexts.close()

    app.on_cleanup.append(close)
    return app


def run_api(settings: Settings) -> int:
    """Serve the API in the foreground until SIGINT/SIGTERM."""
    logging.basicConfig(
        level=settings.log_level, format="[%(asctime)s] [%(levelname)s] %(message)s"
    )
    try:
        app = build_api(settings)
        asyncio.run(check_api(settings))
    except (ClientConfigError, WidgetTokenError) as error:
        print(f"nextbest: {error}", file=sys.stderr)
        return 2
    except AccessError as error:
        print(f"nextbest: {error}", file=sys.stderr)
        return 1
    web.run_app(
        app,
        host="0.0.0.0",  # noqa: S104 - widgets and desktops call it from other hosts
        port=settings.api_port,
        access_log=None,  # paths carry customer ids: no access log at INFO
        print=lambda text: log.info("%s", text.strip()),
    )
    return 0


def run_worker(settings: Settings) -> int:
    """Run the worker in the foreground until SIGINT/SIGTERM."""
    try:
        worker = build_worker(settings)
    except (RulesError, OSError, ClientConfigError) as error:
        print(f"nextbest: {error}", file=sys.stderr)
        return 2
    loop = uvloop.new_event_loop()  # faust's per-record path is event-loop bound
    asyncio.set_event_loop(loop)
    try:
        # credentials, certificates and ACLs, before faust retries what cannot work
        loop.run_until_complete(check_worker(settings, topic_names(settings)))
        loop.run_until_complete(ensure_topics(settings))
    except (StartupError, AccessError) as error:
        print(f"nextbest: {error}", file=sys.stderr)
        return 1
    runner = faust.Worker(worker.app, loop=loop, loglevel=settings.log_level.lower())
    # At WARNING and above faust keeps a terminal spinner, which sets the root
    # logger to DEBUG: every debug call in faust and aiokafka then built a record.
    runner.spinner = None
    runner.execute_from_commandline()
    return 0
