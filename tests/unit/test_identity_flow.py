"""The identity protocol through the worker's handler, without a broker.

The handler runs on faust's own RocksDB store (tests/unit/fakes.py); what it
sends to ``<app id>-rekey`` is handed back to it, partition by partition and
in order, until nothing is in flight: the same records a broker would deliver,
as fast as a unit test needs. ``duplicate=True`` hands every rekey record over
twice (a sender that crashed after sending), which must change nothing.
The same flows run against the real broker in tests/integration/test_identity.py.
"""

from __future__ import annotations

import itertools
import random
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from nextbest.adapters.identity import DIRECTORY, FORWARD, MARKER
from nextbest.adapters.table import FAUST_OFFSET_KEY
from nextbest.adapters.topics import partition_for
from nextbest.core.identity import Identifier
from nextbest.core.state import CustomerState, decode
from tests.unit.fakes import FakeRecord
from tests.unit.test_handler import NAMES, NOW, PARTITIONS, Harness, batch_of, harness, sample

_ids = itertools.count()


class MemoryRedis:
    """As much of redis.asyncio.Redis as the mirror uses, over a dict."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data

    async def script_load(self, script: str) -> str:
        return "sha"

    def pipeline(self, transaction: bool = False) -> MemoryRedis:
        return self

    async def __aenter__(self) -> MemoryRedis:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    def evalsha(self, sha: str, keys: int, key: str, document: bytes, *args: Any) -> None:
        self.data[key] = document

    def delete(self, key: str) -> None:
        self.data.pop(key, None)

    def set(self, key: str, value: str, px: int) -> None:
        self.data[key] = value

    def pexpire(self, key: str, ms: int) -> None:
        pass

    def publish(self, channel: str, message: bytes) -> None:
        pass

    async def execute(self) -> list[int]:
        return []


class Cluster:
    def __init__(self, h: Harness, duplicate: bool = False) -> None:
        self.h = h
        self.redis: dict[str, Any] = {}
        self.duplicate = duplicate
        self.done: set[int] = set()
        self.offsets: dict[tuple[str, int], int] = {}

    def _offset(self, topic: str, partition: int) -> int:
        offset = self.offsets.get((topic, partition), 0)
        self.offsets[(topic, partition)] = offset + 1
        return offset

    async def send(
        self,
        channel: str,
        type_: str,
        subject: str,
        data: dict[str, Any] | None = None,
        *,
        kind: str | None = None,
        minute: float = -1,
        id_: str | None = None,
        settle: bool = True,
    ) -> str:
        """An event as a producer keying by subject sends it; then everything it causes
        (``settle=False``: what it causes stays in flight until :meth:`settle`)."""
        event_id = id_ or f"e-{next(_ids)}"
        document: dict[str, Any] = {
            "specversion": "1.0",
            "id": event_id,
            "source": "/t",
            "type": type_,
            "time": (NOW + timedelta(minutes=minute)).isoformat(),
            "subject": subject,
            "data": data or {},
        }
        if kind is not None:
            document["subjecttype"] = kind
        topic = f"events.{channel}"
        partition = partition_for(subject.encode(), PARTITIONS)
        record = FakeRecord(topic, partition, self._offset(topic, partition),
                            orjson.dumps(document), subject.encode(),
                            timestamp=int(NOW.timestamp() * 1000))  # fmt: skip
        await self.h.handler.handle(partition, batch_of(record))
        if settle:
            await self.settle()
        return event_id

    async def settle(self) -> None:
        """Deliver what was sent to the rekey topic until nothing is left."""
        while await self.settle_once():
            pass

    def in_flight(self) -> list[Any]:
        return [
            s for s in self.h.producer.sent if s.topic == NAMES.rekey and id(s) not in self.done
        ]

    async def settle_once(self, partition: int | None = None) -> bool:
        """Deliver what is in flight now (to ``partition`` only, when given), each
        partition's records in the order they were sent; False when nothing was."""
        if True:
            pending = [s for s in self.in_flight() if partition in (None, s.partition)]
            self.done.update(id(s) for s in pending)
            if not pending:
                return False
            by_partition: dict[int, list[FakeRecord]] = {}
            for sent in pending:
                assert sent.partition is not None
                records = [sent, sent] if self.duplicate else [sent]
                for item in records:
                    by_partition.setdefault(sent.partition, []).append(
                        FakeRecord(
                            NAMES.rekey,
                            sent.partition,
                            self._offset(NAMES.rekey, sent.partition),
                            item.value,
                            item.key,
                            timestamp=int(NOW.timestamp() * 1000),
                            headers=list(item.headers),
                        )
                    )
            for partition, records in sorted(by_partition.items()):
                await self.h.handler.handle(partition, batch_of(*records))
        return True

    def state(self, key: str, at: Identifier | None = None) -> CustomerState | None:
        """The stored state under ``key`` (on the partition of ``at``'s id, default ``key``'s)."""
        route = (at.id if at is not None else key).encode()
        raw = self.h.table.data._db_for_partition(partition_for(route, PARTITIONS)).get(
            key.encode()
        )
        return None if raw is None else decode(raw)

    def profile_of(self, identifier: Identifier) -> tuple[str, int] | None:
        """Where the directory says the identifier's profile is."""
        db = self.h.table.data._db_for_partition(partition_for(identifier.id.encode(), PARTITIONS))
        raw = db.get(DIRECTORY + identifier.key.encode())
        if raw is None:
            return None
        key, home, *_ = orjson.loads(raw)
        return key, home

    async def flush_redis(self) -> dict[str, Any]:
        """Let the mirror write into a dict standing for Redis, and every partition take
        the confirmations of its deletes (what a tick's batch does)."""
        fake = MemoryRedis(self.redis)
        self.h.mirror._client = fake  # type: ignore[assignment]
        while self.h.mirror.pending:
            await self.h.mirror._flush_batch()
        for partition in range(PARTITIONS):
            tick = FakeRecord(NAMES.ticks, partition, self._offset(NAMES.ticks, partition), b"")
            await self.h.handler.handle(partition, batch_of(tick))
        return self.redis

    def everything(self) -> list[tuple[int, bytes, bytes]]:
        return [
            (p, k, v)
            for p in range(PARTITIONS)
            for k, v in self.h.table.data._db_for_partition(p).items()
        ]

    def triggers(self, channel: str) -> list[dict[str, Any]]:
        return [orjson.loads(s.value) for s in self.h.producer.to(f"triggers.{channel}")]


@pytest.fixture(params=[False, True], ids=["once", "twice"])
def cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Cluster:
    return Cluster(harness(tmp_path), duplicate=request.param)


CART = {"sku": "SHOE-42", "qty": 1, "price": 89.0}
A = Identifier("anonymous", "ck-77")
D = Identifier("device", "tablet-7")
P = Identifier("phone", "h-555")
LOGIN_A = {"identities": [{"type": "anonymous", "id": A.id}], "method": "login"}


def members(state: CustomerState | None) -> list[str]:
    assert state is not None
    return [i.key for i in state.context.identities]


async def test_an_anonymous_cart_then_a_login_on_mobile_is_resume_cart_on_mobile(
    cluster: Cluster,
) -> None:
    await cluster.send("web", "session.started", A.id, kind="anonymous", minute=-3)
    await cluster.send("web", "cart.item_added", A.id, CART, kind="anonymous", minute=-2.5)
    assert members(cluster.state(A.state_key, A)) == [A.key]
    await cluster.send("mobile", "identity.linked", "c-1", LOGIN_A, minute=-2)
    merged = cluster.state("c-1")
    assert members(merged) == ["customer:c-1", A.key]
    assert merged is not None
    assert merged.context.cart.items[0].sku == "SHOE-42"
    assert cluster.state(A.state_key, A) is None  # the anonymous profile went into c-1
    assert cluster.profile_of(A) == ("c-1", partition_for(b"c-1", PARTITIONS))
    [trigger] = cluster.triggers("mobile")
    assert (trigger["data"]["action"], trigger["subject"]) == ("resume_cart", "c-1")
    assert trigger["data"]["identities"] == [
        {"type": "customer", "id": "c-1"},
        {"type": "anonymous", "id": A.id},
    ]
    assert sample(cluster.h.metrics, "nextbest_identity_links_total", result="linked") == 1
    # the cookie's next event goes to the customer's profile
    await cluster.send("web", "page.viewed", A.id, {"page_type": "home"}, kind="anonymous")
    after = cluster.state("c-1")
    assert after is not None
    assert after.context.version == merged.context.version + 1
    assert after.parts[A.key].context.version == 3


async def test_an_unlink_gives_the_identifier_back_its_own_context(cluster: Cluster) -> None:
    await cluster.send("web", "cart.item_added", A.id, CART, kind="anonymous", minute=-5)
    await cluster.send("mobile", "identity.linked", "c-1", LOGIN_A, minute=-4)
    await cluster.send("mobile", "cart.item_removed", "c-1", {"sku": "SHOE-42", "qty": 1},
                       minute=-3)  # fmt: skip
    assert cluster.state("c-1").context.cart.items == ()  # type: ignore[union-attr]
    await cluster.send("web", "identity.unlinked", "c-1", {"type": "anonymous", "id": A.id})
    rest = cluster.state("c-1")
    assert members(rest) == ["customer:c-1"]
    home = partition_for(b"c-1", PARTITIONS)
    leaver = cluster.state(A.state_key, Identifier("customer", "c-1"))  # stays where it was
    assert members(leaver) == [A.key]
    assert leaver is not None
    assert leaver.context.cart.items[0].sku == "SHOE-42"
    assert leaver.context.customer_id == A.profile_id
    assert cluster.profile_of(A) == (A.state_key, home)
    # its events now go to its own profile
    await cluster.send("web", "page.viewed", A.id, {"page_type": "home"}, kind="anonymous")
    again = cluster.state(A.state_key, Identifier("customer", "c-1"))
    assert again is not None
    assert again.context.version == leaver.context.version + 1
    assert cluster.state("c-1").context.version == rest.context.version  # type: ignore[union-attr]


async def test_a_shared_device_follows_the_newest_login(cluster: Cluster) -> None:
    await cluster.send("mobile", "identity.linked", "c-1", {
        "identities": [{"type": "device", "id": D.id}], "method": "login"}, minute=-5)  # fmt: skip
    await cluster.send("mobile", "cart.item_added", D.id, CART, kind="device", minute=-4)
    await cluster.send("mobile", "identity.linked", "c-2", {
        "identities": [{"type": "device", "id": D.id}], "method": "login"}, minute=-3)  # fmt: skip
    assert members(cluster.state("c-1")) == ["customer:c-1"]
    assert members(cluster.state("c-2")) == ["customer:c-2", D.key]
    assert cluster.state("c-2").context.cart.items  # type: ignore[union-attr]
    assert cluster.state("c-1").context.cart.items == ()  # type: ignore[union-attr]
    assert cluster.profile_of(D) == ("c-2", partition_for(b"c-2", PARTITIONS))
    assert sample(cluster.h.metrics, "nextbest_identity_links_total", result="moved") == 1


async def test_refusals_are_counted_by_reason(cluster: Cluster) -> None:
    loyalty = {"identities": [{"type": "loyalty", "id": "L-1"}], "method": "loyalty_scan"}
    await cluster.send("store", "identity.linked", "c-1", loyalty, minute=-5)
    await cluster.send("store", "identity.linked", "c-2", loyalty, minute=-4)
    await cluster.send("web", "identity.linked", "c-2", {
        "identities": [{"type": "device", "id": "undefined"}, {"type": "fax", "id": "1"}],
        "method": "other"}, minute=-3)  # fmt: skip
    metrics = cluster.h.metrics
    assert sample(metrics, "nextbest_identity_links_refused_total", reason="unique") == 1
    assert sample(metrics, "nextbest_identity_links_refused_total", reason="blocked") == 1
    assert sample(metrics, "nextbest_identity_links_refused_total", reason="type") == 1
    assert members(cluster.state("c-2")) == ["customer:c-2"]


async def test_erasure_leaves_nothing_but_hashes_and_suppresses_later_events(
    cluster: Cluster,
) -> None:
    await cluster.send("web", "cart.item_added", A.id, CART, kind="anonymous", minute=-5)
    await cluster.send("mobile", "identity.linked", "c-9", {
        "identities": [{"type": "anonymous", "id": A.id}, {"type": "phone", "id": P.id}],
        "method": "login"}, minute=-4)  # fmt: skip
    await cluster.send("contact-center", "call.started", P.id, kind="phone", minute=-3)
    assert members(cluster.state("c-9")) == ["customer:c-9", A.key, P.key]
    redis = await cluster.flush_redis()
    assert redis["nextbest:identity:phone:h-555"] == "c-9"
    assert "nextbest:context:c-9" in redis
    await cluster.send("contact-center", "customer.erased", P.id, kind="phone", minute=-2)
    await cluster.flush_redis()
    assert [k for k, v in redis.items() if any(x in k + str(v) for x in ("c-9", A.id, P.id))] == []
    left = cluster.everything()
    for _, key, value in left:
        for personal in (b"c-9", A.id.encode(), P.id.encode()):
            assert personal not in key, key
            assert personal not in value, (key, value)
    markers = [key for _, key, _ in left if key.startswith(MARKER)]
    assert markers  # hashes, and only hashes
    assert not [key for _, key, _ in left if key.startswith((DIRECTORY, FORWARD))]
    await cluster.send("web", "page.viewed", A.id, {"page_type": "home"}, kind="anonymous")
    await cluster.send("web", "page.viewed", "c-9", {"page_type": "home"})
    assert cluster.state("c-9") is None
    assert cluster.state(A.state_key, A) is None
    metrics = cluster.h.metrics
    assert sample(metrics, "nextbest_events_suppressed_total", reason="erased") == 2
    assert cluster.h.sent_to("events.deadletter") == []  # never dead-lettered
    # and a later link naming an erased identifier is refused
    await cluster.send("web", "identity.linked", "c-10", {
        "identities": [{"type": "anonymous", "id": A.id}], "method": "login"})  # fmt: skip
    assert sample(metrics, "nextbest_identity_links_refused_total", reason="erased") == 1


async def test_events_in_flight_during_a_merge_are_neither_lost_nor_misapplied(
    cluster: Cluster,
) -> None:
    """The link's commands travel while both identifiers keep sending: every event ends
    in the merged profile once, under its own identifier's part."""
    await cluster.send("web", "session.started", A.id, kind="anonymous", minute=-6)
    await cluster.send("mobile", "session.started", "c-1", minute=-6)
    await cluster.send("mobile", "identity.linked", "c-1", {
        "identities": [{"type": "anonymous", "id": A.id}], "method": "login"},
        minute=-5, settle=False)  # fmt: skip
    sent = []
    for n in range(4):  # each delivers some of the commands in flight, in order
        sent.append(
            await cluster.send(
                "web",
                "page.viewed",
                A.id,
                {"page_type": "home"},
                kind="anonymous",
                minute=-4 + n / 10,
                settle=False,
            )
        )
        sent.append(
            await cluster.send(
                "mobile",
                "page.viewed",
                "c-1",
                {"page_type": "home"},
                minute=-4 + n / 10 + 0.05,
                settle=False,
            )
        )
        pending = cluster.in_flight()
        if pending:  # deliver one rekey partition's records, leave the rest in flight
            await cluster.settle_once(pending[0].partition)
    await cluster.settle()
    merged = cluster.state("c-1")
    assert merged is not None
    assert members(merged) == ["customer:c-1", A.key]
    assert set(sent) <= set(merged.seen_ids)
    assert merged.context.version == 2 + 1 + 8 + 1  # sessions, link, views, the merge
    assert merged.parts[A.key].context.version == 5
    assert merged.parts["customer:c-1"].context.version == 6
    assert cluster.state(A.state_key, A) is None


async def test_a_profile_without_customer_is_renamed_when_its_name_leaves(
    cluster: Cluster,
) -> None:
    await cluster.send("contact-center", "call.started", P.id, kind="phone", minute=-6)
    await cluster.send("web", "session.started", A.id, kind="anonymous", minute=-5)
    await cluster.send("contact-center", "identity.linked", P.id, {
        "identities": [{"type": "anonymous", "id": A.id}], "method": "phone_verified"},
        kind="phone", minute=-4)  # fmt: skip
    where = partition_for(P.id.encode(), PARTITIONS)
    named = cluster.state(P.state_key, P)
    assert members(named) == [P.key, A.key]  # the phone is the oldest: it names the profile
    assert named is not None
    assert named.context.customer_id == "phone:h-555"
    await cluster.send("contact-center", "identity.unlinked", P.id, {"type": "phone", "id": P.id},
                       kind="phone", minute=-3)  # fmt: skip
    rest = cluster.state(A.state_key, P)  # renamed where it lives
    assert members(rest) == [A.key]
    assert rest is not None
    assert rest.context.customer_id == A.profile_id
    assert cluster.profile_of(A) == (A.state_key, where)
    await cluster.send("web", "page.viewed", A.id, {"page_type": "home"}, kind="anonymous")
    assert cluster.state(A.state_key, P).context.version == rest.context.version + 1  # type: ignore[union-attr]


async def test_a_link_to_a_customer_never_seen_makes_the_customers_profile(
    cluster: Cluster,
) -> None:
    """The subject is the cookie; the customer has sent nothing yet: the merged profile is
    the customer's, where the customer id lives, and lists the customer."""
    await cluster.send("web", "cart.item_added", A.id, CART, kind="anonymous", minute=-5)
    await cluster.send("web", "identity.linked", A.id, {
        "identities": [{"type": "customer", "id": "c-new"}], "method": "login"},
        kind="anonymous", minute=-4)  # fmt: skip
    merged = cluster.state("c-new")
    assert members(merged) == ["customer:c-new", A.key]
    assert merged is not None
    assert merged.context.customer_id == "c-new"
    assert merged.context.cart.items
    assert cluster.profile_of(A) == ("c-new", partition_for(b"c-new", PARTITIONS))
    await cluster.send("mobile", "session.started", "c-new", minute=-3)
    assert cluster.state("c-new").context.version == merged.context.version + 1  # type: ignore[union-attr]


# --- random interleavings ------------------------------------------------------------------


async def interleaved(tmp_path: Path, seed: int, steps: int = 400) -> tuple[Cluster, int]:
    """Five customers, their cookies, two shared tablets moving from one to another,
    and their events, all in flight together: records of every topic delivered to their
    partition in random batches, each partition's records in order (as Kafka does)."""
    cluster = Cluster(harness(tmp_path))
    rng = random.Random(seed)
    queues: dict[int, list[FakeRecord]] = {}
    taken = 0

    def enqueue(record: FakeRecord) -> None:
        queues.setdefault(record.partition, []).append(record)

    def collect() -> None:
        nonlocal taken
        for sent in cluster.h.producer.sent[taken:]:
            if sent.topic == NAMES.rekey and sent.partition is not None:
                offset = cluster._offset(NAMES.rekey, sent.partition)
                enqueue(FakeRecord(NAMES.rekey, sent.partition, offset, sent.value, sent.key,
                                   timestamp=int(NOW.timestamp() * 1000),
                                   headers=list(sent.headers)))  # fmt: skip
        taken = len(cluster.h.producer.sent)

    async def deliver() -> bool:
        ready = [p for p, q in queues.items() if q]
        if not ready:
            return False
        partition = rng.choice(ready)
        size = rng.randint(1, 12)
        batch, queues[partition] = queues[partition][:size], queues[partition][size:]
        await cluster.h.handler.handle(partition, batch_of(*batch))
        collect()
        return True

    customers = [f"c-{n}" for n in range(5)]
    tablets = ["tablet-a", "tablet-b"]
    for step in range(steps):
        who = rng.choice(customers)
        choice = rng.random()
        subject, kind, type_, data = who, None, "page.viewed", {"page_type": "home"}
        if choice < 0.3:
            subject, kind = rng.choice(tablets), "device"
        elif choice < 0.45:
            type_ = "identity.linked"
            data = {
                "identities": [{"type": "device", "id": rng.choice(tablets)}],
                "method": "login",
            }
        elif choice < 0.6:
            subject, kind = f"ck-{who}", "anonymous"
        elif choice < 0.7:
            type_ = "identity.linked"
            data = {"identities": [{"type": "anonymous", "id": f"ck-{who}"}], "method": "login"}
        document: dict[str, Any] = {
            "specversion": "1.0", "id": f"s{seed}-{step}", "source": "/t", "type": type_,
            "time": (NOW + timedelta(seconds=step - steps)).isoformat(),
            "subject": subject, "data": data,
        }  # fmt: skip
        if kind is not None:
            document["subjecttype"] = kind
        topic = "events.mobile"
        partition = partition_for(subject.encode(), PARTITIONS)
        enqueue(FakeRecord(topic, partition, cluster._offset(topic, partition),
                           orjson.dumps(document), subject.encode(),
                           timestamp=int(NOW.timestamp() * 1000)))  # fmt: skip
        if rng.random() < 0.6:
            await deliver()
    while await deliver():
        pass
    return cluster, steps


@pytest.mark.parametrize("seed", range(12))
async def test_random_interleavings_lose_nothing_and_agree_in_the_end(
    tmp_path: Path, seed: int
) -> None:
    cluster, sent = await interleaved(tmp_path, seed)
    metrics = cluster.h.metrics
    assert sample(metrics, "nextbest_events_suppressed_total", reason="unroutable") == 0
    assert sample(metrics, "nextbest_events_total", channel="mobile") == sent  # each once
    # every identifier is in exactly one stored profile, and its directory entry (or, for
    # one alone where its id lives, its absence) says which
    where: dict[str, list[tuple[int, str]]] = {}
    for partition, key, value in cluster.everything():
        if key.startswith(b"\x00") or key == FAUST_OFFSET_KEY:
            continue
        for identity in decode(value).context.identities:
            where.setdefault(identity.key, []).append((partition, key.decode()))
    assert all(len(found) == 1 for found in where.values()), where
    for identifier_key, [(partition, state_key)] in where.items():
        identifier = Identifier(*identifier_key.split(":", 1))
        if identifier.type == "customer":
            assert state_key == identifier.id
            continue
        entry = cluster.profile_of(identifier)
        if entry is None:
            assert (state_key, partition) == (
                identifier.state_key,
                partition_for(identifier.id.encode(), PARTITIONS),
            )
        else:
            assert entry == (state_key, partition)
