"""The table's restorer against faust's own store and recovery: a fetch at a time, by offsets."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from nextbest.adapters.table import APPLIED_KEY, ContextTable
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


def changelog(partition: int, *entries: tuple[int, bytes, bytes | None]) -> list[FakeRecord]:
    return [FakeRecord(CHANGELOG, partition, offset, value, key) for offset, key, value in entries]


async def test_a_restore_writes_the_fetch_and_ends_recovery_at_the_highwater(
    parts: tuple[Any, Any, ContextTable],
) -> None:
    table, recovery, contexts = parts
    active = tp(CHANGELOG, 3)
    recovery.add_active(table, active)
    recovery.active_offsets[active] = -1
    recovery.active_highwaters[active] = 3  # faust keeps the last offset, not the end
    recovery._set_recovery_started()
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
