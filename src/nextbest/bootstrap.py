"""The one place that wires nextbest together from :class:`~nextbest.settings.Settings`.

``build_worker`` makes the Faust app, its topics and table, the Redis mirror and
the metrics, and binds the core's :class:`~nextbest.core.engine.Engine` into the
handler that the batch consumer feeds. Nothing here runs on import.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from typing import Any

import faust
import uvloop
from aiohttp import web
from prometheus_client import CollectorRegistry, disable_created_metrics

from nextbest.adapters import collector
from nextbest.adapters.access import AccessError, check_api, check_worker
from nextbest.adapters.cache import StateCache
from nextbest.adapters.clients import (
    ClientConfigError,
    faust_credentials,
    kafka_client_options,
    redis_client,
)
from nextbest.adapters.consumer import use_batch_consumer
from nextbest.adapters.identity import IdentityConfig
from nextbest.adapters.outputs import Direct, Outputs, Transactional
from nextbest.adapters.pages import add_pages
from nextbest.adapters.projection import RedisMirror
from nextbest.adapters.services import (
    closing,
    every_second,
    guarded,
    lag_updater,
    mirror_service,
    recovery_watcher,
    tick_sender,
)
from nextbest.adapters.stream import EventHandler
from nextbest.adapters.table import ContextTable
from nextbest.adapters.topics import TABLE, TopicError, TopicNames, create_topics
from nextbest.api.app import ApiConfig, ApiMetrics, ContextApi
from nextbest.api.contexts import RedisContexts
from nextbest.api.widget_tokens import WidgetTokenError, widget_tokens_from
from nextbest.core.config import EngineConfig
from nextbest.core.engine import Engine
from nextbest.core.identity import profile_id_of
from nextbest.core.rules import RulesError, RuleSet, load_rules
from nextbest.core.schedule import DueIndex
from nextbest.failures import log_failure
from nextbest.metrics import Metrics
from nextbest.settings import Settings

BLOCK_CACHE_BYTES = 32 * 1024 * 1024  # per partition; faust's default is 2 GiB
# per partition, at most MEMTABLES x WRITE_BUFFER_BYTES of writes in memory before a
# flush; faust's defaults (3 x 64 MiB) allow 1.5 GiB over 8 partitions
WRITE_BUFFER_BYTES = 16 * 1024 * 1024
MEMTABLES = 2
TICK_INTERVAL = 0.25  # seconds between timer ticks per partition: deadlines fire within 1 s
# A batch's records are all queued before the batch waits for their acks, so the
# first request already carries them: a linger only delays every batch (5 ms: p50
# 35.5 against 18.1 ms at 1,000 events/s; see the README's Performance section).
PRODUCER_LINGER = 0.0
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
        reorder_window=settings.reorder_window,
        reorder_max_events=settings.reorder_max_events,
        reorder_max_bytes=settings.reorder_max_bytes,
        subject_types=settings.identity_types,
    )


def identity_config(settings: Settings) -> IdentityConfig:
    secret = settings.erasure_secret
    return IdentityConfig(
        types=settings.identity_types,
        max_per_type=settings.identity_max_per_type,
        suppress=settings.erasure_suppress,
        # the keyed hash of erased identifiers: the app id when no secret is set
        secret=(secret.get_secret_value() if secret else settings.app_id).encode(),
        partitions=settings.topic_partitions,
    )


def topic_names(settings: Settings) -> TopicNames:
    return TopicNames(
        settings.app_id,
        settings.channels,
        compaction_lag=settings.changelog_compaction_lag,
        tombstone_retention=settings.changelog_tombstone_retention,
        rekey_retention=settings.rekey_retention,
    )


async def ensure_topics(settings: Settings) -> None:
    """Create the contract's topics that are missing (see :mod:`nextbest.adapters.topics`)."""
    try:
        await create_topics(
            topic_names(settings),
            settings.kafka_bootstrap,
            settings.topic_partitions,
            settings.topic_replication,
            kafka_client_options(settings),
        )
    except TopicError as error:
        raise StartupError(str(error)) from None


@dataclass
class Worker:
    app: faust.App
    metrics: Metrics
    mirror: RedisMirror
    handler: EventHandler


def _clock() -> datetime:
    return datetime.now(UTC)


class _Sink:
    """The consumer's view of the worker: batches to the handler, changelogs to the table."""

    def __init__(self) -> None:
        self.topics: frozenset[str] = frozenset()
        self.clocks: frozenset[str] = frozenset()
        self.handler: EventHandler | None = None
        self.table: ContextTable | None = None

    async def handle(self, partition: int, batch: Any, watermark: float) -> None:
        assert self.handler is not None
        await self.handler.handle(partition, batch, watermark)

    def restore(self, tp: Any, records: Any) -> bool:
        assert self.handler is not None
        return self.handler.restore(tp, records)

    def restoring(self) -> Any:
        return [] if self.table is None else self.table.restoring()

    def restored_to(self, tp: Any) -> int | None:
        return None if self.table is None else self.table.restored_to(tp)

    def read_through(self, tp: Any, position: int) -> None:
        if self.table is not None:
            self.table.read_through(tp, position)


def build_worker(settings: Settings) -> Worker:
    """Wire the worker: raises :class:`RulesError` for a bad rules file."""
    rules = load_ruleset(settings)
    engine = Engine(engine_config(settings), rules)
    disable_created_metrics()  # type: ignore[no-untyped-call]  # *_created: scrape noise
    metrics = Metrics(CollectorRegistry())
    metrics.declare(settings.channels, rules.actions)
    names = topic_names(settings)
    partitions = settings.topic_partitions
    session = settings.kafka_session_timeout.total_seconds()
    app = faust.App(
        settings.app_id,
        broker=[f"kafka://{host}" for host in settings.kafka_bootstrap.split(",")],
        broker_credentials=faust_credentials(settings),
        store="rocksdb://",
        datadir=str(settings.data_dir),
        topic_partitions=partitions,
        topic_replication_factor=settings.topic_replication,
        topic_disable_leader=True,
        processing_guarantee="at_least_once",
        consumer_auto_offset_reset="earliest",
        consumer_group_instance_id=settings.kafka_group_instance_id,
        broker_session_timeout=session,
        broker_heartbeat_interval=min(3.0, session / 3),
        table_standby_replicas=settings.standby_replicas,
        producer_linger=PRODUCER_LINGER,
        web_port=settings.worker_port,
        web_host="0.0.0.0",  # noqa: S104 - scraped by Prometheus from other hosts
    )
    sink = _Sink()
    transactional = settings.processing_guarantee == "exactly_once"
    # before the topics below touch app.transport
    use_batch_consumer(app, sink, transactions=transactional)
    source = _raw_topic(app, *names.sources)
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
    contexts = ContextTable(
        table,
        names.changelog,
        app.producer,
        lambda: app.tables.recovery,  # type: ignore[attr-defined]
        # a profile without customer id is stored under \x01<type>:<id>: Redis names it <type>:<id>
        on_restored=lambda key, version, document: mirror.submit(
            profile_id_of(key), version, document
        ),
    )
    outputs: Outputs = Direct(app.producer)
    if transactional:
        outputs = Transactional(
            app_id=settings.app_id,
            group_id=app.conf.id,
            bootstrap=settings.kafka_bootstrap,
            client_options=kafka_client_options(settings),
            linger_ms=round(PRODUCER_LINGER * 1000),
        )
        app.service(closing(outputs.stop))
    handler = EventHandler(
        engine=engine,
        table=contexts,
        outputs=outputs,
        names=names,
        index=DueIndex(),
        mirror=mirror,
        metrics=metrics,
        partitions=partitions,
        clock=_clock,
        cache=StateCache(settings.state_cache_size),
        identity=identity_config(settings),
    )
    sink.topics, sink.clocks, sink.handler = handler.topics, handler.clocks, handler
    sink.table = contexts

    async def subscribe(stream: faust.StreamT[bytes]) -> None:
        """Declares the subscription; the batches themselves go to the handler."""
        async for _ in stream:  # nothing is delivered here (adapters/consumer.py)
            pass

    app.agent(source, name="nextbest.events")(subscribe)

    def owned_partitions() -> set[int]:
        return {tp.partition for tp in app.assignor.assigned_actives() if tp.topic == names.ticks}

    async def rebuild_index() -> None:
        handler.forget_states()  # partitions moved: another worker may have changed some
        try:
            await outputs.own(owned_partitions())  # exactly_once: fence the previous owners
        except Exception as error:  # then each partition's first batch does it
            log_failure(log, error, "could not start the transactional producers")
        try:
            handler.rebuild_index(owned_partitions())
        except Exception as error:  # deadlines then fire once events touch them again
            log_failure(log, error, "could not rebuild the deadline index")
        for partition in owned_partitions():  # what their last owner may not have mirrored
            try:
                contexts.remirror(partition)
            except Exception as error:  # those documents then wait for their next change
                log_failure(log, error, "could not mirror partition %d's last batches again",
                            partition)  # fmt: skip

    table.on_recover(rebuild_index)
    ticks = tick_sender(app.producer, names.ticks, owned_partitions)
    app.timer(TICK_INTERVAL, name="nextbest.ticks")(guarded("timer ticks", ticks))
    app.service(mirror_service(mirror))
    add_pages(app, metrics)
    lag = lag_updater(app, metrics, owned_partitions, handler.report_pending)
    app.timer(1.0, name="nextbest.consumer_lag")(guarded("consumer lag", lag))

    async def collect() -> None:
        collector.collect_all()

    app.timer(collector.FULL_EVERY, name="nextbest.collector")(guarded("collection", collect))
    # not an app.timer: faust starts those only once the first recovery is done
    app.add_dependency(every_second(guarded("recovery watch", recovery_watcher(app))))
    return Worker(app, metrics, mirror, handler)


class _Worker(faust.Worker):
    """faust's worker, sure to exit within ``grace`` seconds of SIGTERM or SIGINT.

    A stop commits, flushes and leaves the group, and each of those can wait
    on a broker that is gone (faust allows minutes). The work is safe to cut
    short (a batch not written is read again), so once the grace is over the
    process exits, saying so, rather than outlive its orchestrator's patience.
    """

    grace: float = 30.0

    def _schedule_shutdown(self, signal: Any) -> None:
        watchdog = threading.Timer(self.grace, _exit_now, args=(self.grace,))
        watchdog.daemon = True
        watchdog.start()
        super()._schedule_shutdown(signal)


def _exit_now(grace: float) -> None:
    log.warning("not stopped %.0f s after the signal: exiting now", grace)
    logging.shutdown()
    os._exit(3)


def _raw_topic(app: faust.App, *names: str) -> faust.TopicT:
    """A topic of bytes: the adapter decodes and encodes values itself."""
    return app.topic(*names, key_serializer="raw", value_serializer="raw")


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
    # first: faust binds its services to the loop that is current when they are made
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        worker = build_worker(settings)
    except (RulesError, OSError, ClientConfigError) as error:
        print(f"nextbest: {error}", file=sys.stderr)
        return 2
    try:
        # credentials, certificates and ACLs, before faust retries what cannot work
        loop.run_until_complete(check_worker(settings, topic_names(settings).all()))
        loop.run_until_complete(ensure_topics(settings))
    except (StartupError, AccessError) as error:
        print(f"nextbest: {error}", file=sys.stderr)
        return 1
    runner = _Worker(worker.app, loop=loop, loglevel=settings.log_level.lower())
    runner.grace = settings.shutdown_timeout.total_seconds()
    # At WARNING and above faust keeps a terminal spinner, which sets the root
    # logger to DEBUG: every debug call in faust and aiokafka then built a record.
    runner.spinner = None
    collector.tune()  # full collections on a schedule, not once a second (adapters/collector.py)
    runner.execute_from_commandline()
    return 0
