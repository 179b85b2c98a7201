"""The soak's fault schedule: every kind, seeded, spaced, one burst overlapping."""

from __future__ import annotations

from bench.soak.plan import KINDS, QUICK, Timing, schedule


def test_every_kind_of_fault_comes_once_in_a_short_run_in_a_seeded_order() -> None:
    faults = schedule(1, 120.0, 2, QUICK)
    assert sorted({f.kind for f in faults}) == sorted(KINDS)
    assert [f.at for f in faults] == sorted(f.at for f in faults)
    assert all(20.0 <= f.at < 120.0 for f in faults)
    assert schedule(1, 120.0, 2, QUICK) == faults
    assert [f.kind for f in schedule(2, 120.0, 2, QUICK)] != [f.kind for f in faults]


def test_a_long_run_repeats_the_faults_and_holds_them_as_long_as_asked() -> None:
    faults = schedule(7, 600.0, 3, Timing())
    kinds = [f.kind for f in faults if f.kind != "burst"]
    assert len(kinds) >= 5
    redis = [f for f in faults if f.kind == "redis"]
    assert all(f.hold == 60.0 for f in redis)  # a minute without Redis
    pauses = [f for f in faults if f.kind == "pause"]
    assert all(f.hold > Timing().session_timeout for f in pauses)  # past the session
    bursts = [f for f in faults if f.kind == "burst"]
    assert bursts
    assert all(b.count == 10_000 for b in bursts)
    # a burst lands while another fault is under way
    others = [f for f in faults if f.kind != "burst"]
    assert any(o.at < b.at <= o.at + max(o.hold, 5.0) for b in bursts for o in others)
    assert all(0 <= f.target < 3 for f in faults)
