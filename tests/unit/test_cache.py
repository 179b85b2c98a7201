"""The in-memory copy of recently used customer states."""

from __future__ import annotations

import pytest

from nextbest.adapters.cache import StateCache
from nextbest.core.state import CustomerState


def state(name: str) -> CustomerState:
    return CustomerState.new(name)


def test_the_least_recently_used_state_goes_first() -> None:
    cache = StateCache(2)
    cache.put(b"a", state("a"))
    cache.put(b"b", state("b"))
    assert cache.get(b"a") is not None  # a is now the most recent
    cache.put(b"c", state("c"))
    assert cache.get(b"b") is None
    assert cache.get(b"a") is not None
    assert cache.get(b"c") is not None
    assert len(cache) == 2


def test_putting_again_replaces_and_refreshes() -> None:
    cache = StateCache(2)
    first, second = state("a"), state("a")
    cache.put(b"a", first)
    cache.put(b"b", state("b"))
    cache.put(b"a", second)
    cache.put(b"c", state("c"))
    assert cache.get(b"a") is second
    assert cache.get(b"b") is None


def test_capacity_zero_keeps_nothing() -> None:
    cache = StateCache(0)
    cache.put(b"a", state("a"))
    assert cache.get(b"a") is None
    assert len(cache) == 0


def test_clear() -> None:
    cache = StateCache(5)
    for name in ("a", "b", "c"):
        cache.put(name.encode(), state(name))
    cache.clear()
    assert len(cache) == 0


def test_a_negative_capacity_is_refused() -> None:
    with pytest.raises(ValueError, match="capacity"):
        StateCache(-1)
