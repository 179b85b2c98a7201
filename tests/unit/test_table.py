"""The table's restorer against faust's own store and recovery: a fetch at a time, by offsets."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from nextbest.adapters.table import APPLIED_KEY, OWNER_KEY, ContextTable
from nextbest.core.config import EngineConfig
from nextbest.core.context import encode_document
from nextbest.core.envelope import DEFAULT_CHANNELS
from tests.unit.fakes import FakeProducer, FakeRecord, faust_table, stored, tp

RULES = resources.files("nextbest").joinpath("default_rules.toml").read_text()
NOW = __import__("tests.unit.events", fromlist=["at"]).at(10)

CHANGELOG = "nextbest-test-contexts-changelog"


@pytest.fixture
def parts(tmp_path: Path) -> tuple[Any, Any, ContextTable]:
    app, table = faust_table(tmp_path)
    recovery = app.tables.recovery  # type: ignore[attr-defined]
    return table, recovery, ContextTable(table, CHANGELOG, FakeProducer(), lambda: recovery)


def restoring(table: Any, recovery: Any, active: Any, offset: int, highwater: int) -> None:
    """``active`` assigned and being restored from after ``offset`` up to ``highwater``
    (faust keeps the last offset, not the end)."""
    recovery.add_active(table, active)
    recovery.active_offsets[active] = offset
    recovery.active_highwaters[active] = highwater
    recovery._set_recovery_started()


def changelog(partition: int, *entries: tuple[int, bytes, bytes | None]) -> list[FakeRecord]:
    return [FakeRecord(CHANGELOG, partition, offset, value, key) for offset, key, value in entries]


async def test_a_restore_writes_the_fetch_and_ends_recovery_at_the_highwater(
    parts: tuple[Any, Any, ContextTable],
) -> None:
    table, recovery, contexts = parts
    active = tp(CHANGELOG, 3)
    restoring(table, recovery, active, -1, 3)
    assert contexts.restore(active, changelog(3, (0, b"c-1", b"v1"), (1, b"c-2", b"v2")))
    assert recovery.in_recovery  # not all there yet
    assert contexts.restore(
        active, changelog(3, (2, b"c-1", None), (3, APPLIED_KEY, b'{"events.web": 9}'))
    )
    assert dict(stored(table, 3)) == {
        b"c-2": b"v2",
        APPLIED_KEY: b'{"events.web": 9}',
        b"__faust\x00offset__": b"3",
    }
    assert table.data.persisted_offset(active) == 3  # a restart reads on from there
    assert contexts.applied(3) == {"events.web": 9}
    assert recovery.active_offsets[active] == 3
    assert not recovery.in_recovery
    assert recovery.signal_recovery_end.is_set()
    assert list(contexts.items(3)) == [(b"c-2", b"v2")]  # only customers


async def test_records_read_again_are_not_written_again(
    parts: tuple[Any, Any, ContextTable],
) -> None:
    table, recovery, contexts = parts
    active = tp(CHANGELOG, 0)
    recovery.add_active(table, active)
    recovery.active_offsets[active] = 4
    recovery.active_highwaters[active] = 10
    assert contexts.restore(active, changelog(0, (3, b"c-1", b"old"), (4, b"c-1", b"old")))
    assert dict(stored(table, 0)) == {}


async def test_standbys_are_restored_and_other_partitions_are_refused(
    parts: tuple[Any, Any, ContextTable],
) -> None:
    table, recovery, contexts = parts
    standby = tp(CHANGELOG, 5)
    recovery.add_standby(table, standby)
    recovery.standby_offsets[standby] = -1
    recovery.standby_highwaters[standby] = 0
    assert contexts.restore(standby, changelog(5, (0, b"c-7", b"v")))
    assert dict(stored(table, 5))[b"c-7"] == b"v"
    assert recovery.tables.standbys_ready
    assert not contexts.restore(tp(CHANGELOG, 6), changelog(6, (0, b"c-8", b"v")))
    assert dict(stored(table, 6)) == {}


async def test_an_active_restore_hands_each_restored_document_to_the_mirror(
    tmp_path: Path,
) -> None:
    """A worker may die between writing a state and mirroring it: whoever restores the
    partition hands the documents over again (Redis skips the ones it has)."""
    from nextbest.core.state import CustomerState, encode
    from tests.unit.events import event

    app, table = faust_table(tmp_path)
    recovery = app.tables.recovery  # type: ignore[attr-defined]
    handed: list[tuple[str, int, bytes]] = []
    contexts = ContextTable(
        table, CHANGELOG, FakeProducer(), lambda: recovery,
        on_restored=lambda *found: handed.append(found),
    )  # fmt: skip
    from nextbest.core.engine import Engine
    from nextbest.core.rules import load_rules

    state = CustomerState.new("c-1")
    engine = Engine(EngineConfig(), load_rules(RULES, channels=DEFAULT_CHANNELS))
    for minute in range(3):
        state = engine.process(state, event("session.started", minute=minute), NOW).state
    value = encode(state)
    active, standby = tp(CHANGELOG, 1), tp(CHANGELOG, 2)
    recovery.add_active(table, active)
    recovery.add_standby(table, standby)
    for tp_ in (active, standby):
        contexts.restore(tp_, changelog(tp_.partition, (0, b"c-1", value),
                                        (1, APPLIED_KEY, b"{}")))  # fmt: skip
    assert handed == [("c-1", 3, encode_document(state.context))]  # the active one only


async def test_a_zombies_writes_after_another_workers_claim_are_not_restored(
    parts: tuple[Any, Any, ContextTable],
) -> None:
    """A paused worker wakes up and finishes its batch after another worker claimed the
    partition: its changelog records must not reach any restore."""
    table, recovery, contexts = parts
    active = tp(CHANGELOG, 4)
    recovery.add_active(table, active)
    recovery.active_offsets[active] = -1
    recovery.active_highwaters[active] = 5

    def by(owner: bytes, offset: int, key: bytes, value: bytes) -> FakeRecord:
        return FakeRecord(CHANGELOG, 4, offset, value, key, headers=[("nextbest.owner", owner)])

    records = [
        FakeRecord(CHANGELOG, 4, 0, b"old-owner", OWNER_KEY),
        by(b"old-owner", 1, b"c-1", b"v1"),
        FakeRecord(CHANGELOG, 4, 2, b"new-owner", OWNER_KEY),  # another worker took over
        by(b"old-owner", 3, b"c-1", b"zombie"),  # the old one woke up and wrote
        by(b"new-owner", 4, b"c-2", b"v2"),
        FakeRecord(CHANGELOG, 4, 5, b"legacy", b"c-3"),  # no owner header (0.1): kept
    ]
    assert contexts.restore(active, records[:4])
    assert contexts.restore(active, records[4:])  # the claim read before is remembered
    found = dict(stored(table, 4))
    assert (found[b"c-1"], found[b"c-2"], found[b"c-3"]) == (b"v1", b"v2", b"legacy")
    assert found[OWNER_KEY] == b"new-owner"
    assert recovery.active_offsets[active] == 5  # the zombie's record read past, not applied


async def test_a_changelog_ending_in_a_transaction_marker_ends_its_recovery(
    parts: tuple[Any, Any, ContextTable],
) -> None:
    """exactly_once: offset 2 is the commit marker, which no fetch returns as a record."""
    table, recovery, contexts = parts
    active = tp(CHANGELOG, 3)
    restoring(table, recovery, active, -1, 2)  # the end offset (3) minus one: the marker
    assert contexts.restoring() == [active]
    assert contexts.restore(active, changelog(3, (0, b"c-1", b"v1"), (1, APPLIED_KEY, b"{}")))
    contexts.read_through(active, 2)  # the consumer has not passed the marker yet
    assert recovery.in_recovery
    contexts.read_through(active, 3)  # now it has
    assert recovery.active_offsets[active] == 2
    assert not recovery.in_recovery
    assert recovery.signal_recovery_end.is_set()
    assert table.data.persisted_offset(active) == 1  # a restart reads the marker again
    contexts.read_through(tp(CHANGELOG, 4), 10)  # not being restored: nothing happens
    assert tp(CHANGELOG, 4) not in recovery.active_offsets


async def test_the_last_two_batches_written_are_mirrored_again_when_owned_anew(
    tmp_path: Path,
) -> None:
    """A worker may die after a batch's RocksDB write and before the mirror's flush:
    nothing is then left to restore, so the next owner hands the documents of the
    last batches written to the mirror again (Redis keeps the newer of two)."""
    from nextbest.core.state import CustomerState, encode

    _, table = faust_table(tmp_path)
    handed: list[tuple[str, int, bytes]] = []
    contexts = ContextTable(
        table, CHANGELOG, FakeProducer(), on_restored=lambda *found: handed.append(found)
    )
    states = {c: CustomerState.new(c) for c in ("c-1", "c-2", "c-3", "c-4")}
    values = {c.encode(): encode(s) for c, s in states.items()}
    contexts.write(0, {b"c-1": values[b"c-1"], APPLIED_KEY: b"{}"}, {}, 10)
    contexts.write(0, {b"c-2": values[b"c-2"], b"c-3": values[b"c-3"]}, {}, 12)
    contexts.write(0, {b"c-4": values[b"c-4"], b"c-3": None}, {}, 14)  # c-3 deleted
    assert contexts.remirror(0) == 2
    assert sorted(customer for customer, _, _ in handed) == ["c-2", "c-4"]  # not c-1, c-3
    assert contexts.remirror(1) == 0  # a partition never written
    assert ContextTable(table, CHANGELOG, FakeProducer()).remirror(0) == 0  # no mirror
