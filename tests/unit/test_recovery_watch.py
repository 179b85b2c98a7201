"""Telling a stalled table restore from a slow one."""

from __future__ import annotations

import pytest

from nextbest.adapters.recovery import RecoveryWatch, Stall


def test_a_partition_that_moves_is_never_stalled() -> None:
    watch: RecoveryWatch[int] = RecoveryWatch(10)
    for second, offset in enumerate(range(0, 300, 10)):
        assert watch.stalled({4: (offset, 500)}, now=float(second * 5)) == []


def test_a_partition_standing_still_is_stalled_after_the_limit() -> None:
    watch: RecoveryWatch[int] = RecoveryWatch(10)
    assert watch.stalled({4: (-1, 126), 5: (-1, 90)}, now=0.0) == []
    assert watch.stalled({4: (-1, 126), 5: (20, 90)}, now=9.0) == []
    assert watch.stalled({4: (-1, 126), 5: (20, 90)}, now=10.0) == [Stall(4, -1, 126, 10.0)]
    # once reported, it gets another ten seconds
    assert watch.stalled({4: (-1, 126), 5: (20, 90)}, now=15.0) == []
    assert watch.stalled({4: (-1, 126), 5: (20, 90)}, now=20.0) == [
        Stall(4, -1, 126, 10.0),
        Stall(5, 20, 90, 11.0),
    ]


def test_progress_after_a_report_starts_the_clock_again() -> None:
    watch: RecoveryWatch[int] = RecoveryWatch(10)
    watch.stalled({4: (-1, 126)}, now=0.0)
    assert watch.stalled({4: (-1, 126)}, now=10.0) != []
    assert watch.stalled({4: (60, 126)}, now=11.0) == []
    assert watch.stalled({4: (60, 126)}, now=20.0) == []
    assert watch.stalled({4: (60, 126)}, now=21.0) == [Stall(4, 60, 126, 10.0)]


def test_partitions_no_longer_behind_are_forgotten() -> None:
    watch: RecoveryWatch[int] = RecoveryWatch(10)
    watch.stalled({4: (-1, 126)}, now=0.0)
    watch.stalled({}, now=5.0)  # restored, or moved to another worker
    assert watch.stalled({4: (-1, 126)}, now=12.0) == []  # back again: a fresh clock
    watch.clear()
    assert watch.stalled({4: (-1, 126)}, now=30.0) == []


def test_the_limit_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        RecoveryWatch(0)
