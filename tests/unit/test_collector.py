"""The worker's garbage-collector settings (adapters/collector.py)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from nextbest.adapters import collector


@pytest.fixture
def restored() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


def test_tune_freezes_what_lives_and_puts_the_full_collection_out_of_reach(
    restored: None,
) -> None:
    collector.tune()
    assert gc.get_freeze_count() > 0
    young, middle, oldest = gc.get_threshold()
    assert (young, middle) == (700, 10)  # CPython's: short young collections
    assert oldest >= 1_000_000


def test_a_scheduled_full_collection_frees_garbage_in_cycles(restored: None) -> None:
    collector.tune()

    class Node:
        other: object = None

    a, b = Node(), Node()
    a.other, b.other = b, a  # a cycle only the collector frees
    del a, b
    before = len(gc.get_objects())
    took = collector.collect_all()
    assert took >= 0
    assert len(gc.get_objects()) < before
