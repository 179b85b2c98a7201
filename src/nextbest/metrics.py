"""The Prometheus metrics of contract §8, in a registry the caller owns.

Labels carry only bounded values (channels, actions, reason codes): never a
customer id or any other personal value.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from nextbest.core.envelope import Reason
from nextbest.core.links import Refusal, Result
from nextbest.core.rules import Suppression

LATENESS_BUCKETS = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0)
LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip


class Metrics:
    """Every metric the worker exports, bound to ``registry``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.events = Counter(
            "nextbest_events", "Valid events received, by channel.", ["channel"], registry=registry
        )
        self.duplicates = Counter(
            "nextbest_events_duplicate",
            "Events ignored because their id was among the customer's last 100.",
            ["channel"],
            registry=registry,
        )
        self.rejected = Counter(
            "nextbest_events_rejected",
            "Records written to events.deadletter, by channel and reason.",
            ["channel", "reason"],
            registry=registry,
        )
        self.late = Counter(
            "nextbest_events_late",
            "Events later than NEXTBEST_REORDER_WINDOW behind their customer's newest event:"
            " applied, but they fire nothing.",
            ["channel"],
            registry=registry,
        )
        self.late_seconds = Histogram(
            "nextbest_event_lateness_seconds",
            "How far an event's time lies behind its customer's newest event, for events"
            " that arrive out of order.",
            ["channel"],
            buckets=LATENESS_BUCKETS,
            registry=registry,
        )
        self.skipped = Counter(
            "nextbest_records_skipped",
            "Records read again (after a crash or a rebalance) that the states already hold.",
            registry=registry,
        )
        self.rekeyed = Counter(
            "nextbest_events_rekeyed",
            "Events not keyed by their customer id, forwarded to the customer's partition.",
            ["channel"],
            registry=registry,
        )
        self.triggers = Counter(
            "nextbest_triggers",
            "Triggers emitted, by action and target channel.",
            ["action", "channel"],
            registry=registry,
        )
        self.suppressed = Counter(
            "nextbest_triggers_suppressed",
            "Matching rules that emitted nothing, by action and reason.",
            ["action", "reason"],
            registry=registry,
        )
        self.trigger_latency = Histogram(
            "nextbest_trigger_latency_seconds",
            "Kafka timestamp of the causing record (or the deadline) to the trigger's ack.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.redis_errors = Counter(
            "nextbest_redis_errors", "Failed Redis mirror writes (retried).", registry=registry
        )
        self.mirror_lag = Histogram(
            "nextbest_context_mirror_lag_seconds",
            "Context change applied to Redis write acknowledged.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.mirror_pending = Gauge(
            "nextbest_context_mirror_pending",
            "Context documents waiting to be written to Redis.",
            registry=registry,
        )
        self.state_cache_hits = Counter(
            "nextbest_state_cache_hits",
            "Customer states found decoded in memory, without reading the table.",
            registry=registry,
        )
        self.state_cache_misses = Counter(
            "nextbest_state_cache_misses",
            "Customer states read from the table (RocksDB) and decoded.",
            registry=registry,
        )
        self.timers_pending = Gauge(
            "nextbest_timers_pending",
            "Customers with an absence deadline pending on this worker.",
            registry=registry,
        )
        self.ready = Gauge(
            "nextbest_worker_ready",
            "1 when partitions are assigned and the table is recovered, else 0.",
            registry=registry,
        )
        self.partitions = Gauge(
            "nextbest_partitions_assigned",
            "Customer partitions this worker owns now.",
            registry=registry,
        )
        # contract v0.2 (§10, §11)
        self.identity_links = Counter(
            "nextbest_identity_links",
            "Identifiers named by identity.linked events, by what became of them:"
            " linked, moved (a soft identifier following a newer login), unchanged, refused.",
            ["result"],
            registry=registry,
        )
        self.identity_refused = Counter(
            "nextbest_identity_links_refused",
            "Identifiers identity.linked could not link, by reason: unique, limit, blocked,"
            " erased, type.",
            ["reason"],
            registry=registry,
        )
        self.identity_operations = Counter(
            "nextbest_identity_operations",
            "Identity operations the coordinator started, by kind: link, unlink, erase.",
            ["kind"],
            registry=registry,
        )
        self.identity_waiting = Gauge(
            "nextbest_identity_operations_waiting",
            "Identity operations waiting for a profile that another one is changing"
            " (on the worker that owns the coordinator's partition).",
            registry=registry,
        )
        self.suppressed_events = Counter(
            "nextbest_events_suppressed",
            "Events dropped without being applied or dead-lettered, by reason: erased (an"
            " identifier of an erased person, within NEXTBEST_ERASURE_SUPPRESS), unroutable"
            " (its profile was not found after several hops).",
            ["reason"],
            registry=registry,
        )
        self.routed = Counter(
            "nextbest_events_routed",
            "Events of a non-customer identifier sent on to the partition of its profile.",
            registry=registry,
        )
        self.consumer_lag = Gauge(
            "nextbest_consumer_lag",
            "Records between the committed offset and the end of each assigned partition.",
            ["topic", "partition"],
            registry=registry,
        )

    def declare(self, channels: Iterable[str], actions: Iterable[str]) -> None:
        """Create every known label set at zero, so rates and alerts see them from the start."""
        actions = tuple(actions)
        for channel in channels:
            self.events.labels(channel)
            self.duplicates.labels(channel)
            self.late.labels(channel)
            for reason in Reason:
                self.rejected.labels(channel, reason.value)
        for action in actions:
            for suppression in Suppression:
                self.suppressed.labels(action, suppression.value)
        for result in Result:
            self.identity_links.labels(result.value)
        for refusal in Refusal:
            self.identity_refused.labels(refusal.value)
        for kind in ("link", "unlink", "erase"):
            self.identity_operations.labels(kind)
        for why in ("erased", "unroutable"):
            self.suppressed_events.labels(why)
