"""Python's cyclic garbage collector, set for a worker that keeps many states alive.

The worker keeps up to ``NEXTBEST_STATE_CACHE_SIZE`` decoded customer states
(each with its recent events for the reorder window) and replaces many of them
every batch. With CPython's default thresholds (700, 10, 10) the survivors of
that churn call for a *full* collection about once a second under load; each
walks every live object — 300-400 ms with a few hundred thousand objects on
the benchmark machine, during which nothing else runs — and finds next to no
garbage (the states hold no reference cycles; plain reference counting frees
them). Measured with ``gc.callbacks`` on a worker taking 3,300 events/s: 40
full collections in 40 s, 270-415 ms each, 0 objects collected by most.

So the worker collects the young generations less often and the oldest only on
a schedule:

* the objects alive once the worker is built (modules, faust's app) are frozen
  out of every collection (:func:`gc.freeze`);
* the young generations keep CPython's thresholds: they are small, and their
  collections short (larger ones were tried: a first generation of 50,000
  allocations took 23 ms to collect, the second 280-650 ms);
* the full collection that the thresholds would start is not reached in hours
  (``OLDEST`` second-generation collections), and :func:`collect_all` runs one
  every ``FULL_EVERY`` seconds instead, so garbage in cycles still goes, at a
  known pace, with its duration logged at DEBUG. (Every 10 minutes was tried
  first; over a 10-minute soak the workers' memory kept growing, and garbage
  in cycles waiting that long may be part of it: once a minute bounds that, at
  one pause a minute.)
"""

from __future__ import annotations

import gc
import logging
import time

log = logging.getLogger(__name__)

YOUNG = 700  # allocations (net) between collections of the first generation
MIDDLE = 10  # first-generation collections between collections of the second
OLDEST = 10_000_000  # second-generation collections before a full one: hours at any load
FULL_EVERY = 60.0  # seconds between the scheduled full collections


def tune() -> None:
    """Freeze what is alive now and set the thresholds above; call once, after start-up
    work has made its long-lived objects."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG, MIDDLE, OLDEST)


def collect_all() -> float:
    """One full collection now; the seconds it took."""
    started = time.perf_counter()
    found = gc.collect()
    took = time.perf_counter() - started
    log.debug("full garbage collection: %d objects in cycles freed in %.3f s", found, took)
    return took
