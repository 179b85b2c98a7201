"""Fault injection for the worker processes of one test, loaded through PYTHONPATH.

``NEXTBEST_FAULT_LOSE_CHANGELOG=<partition>``: the first time the worker's
consumer fetches each record of that partition of a ``*-changelog`` topic, the
record is dropped instead of handed to faust. That is the stall seen in CI
after a rebalance: the consumer has read past records the table restore never
received, so the restore waits forever unless the partition is read again.

Test code only: it patches faust's consumer in the process it is loaded into.
"""

from __future__ import annotations

import os

_partition = os.environ.get("NEXTBEST_FAULT_LOSE_CHANGELOG")

if _partition is not None:
    from collections.abc import AsyncIterator
    from typing import Any

    from faust.transport import consumer as _consumer

    _lose = int(_partition)
    _fetch = _consumer.Consumer.getmany
    _lost: set[tuple[str, int]] = set()

    async def _losing_getmany(self: Any, **options: Any) -> AsyncIterator[tuple[Any, Any]]:
        async for tp, message in _fetch(self, **options):
            first_time = (tp.topic, message.offset) not in _lost
            if tp.topic.endswith("-changelog") and tp.partition == _lose and first_time:
                _lost.add((tp.topic, message.offset))
                continue
            yield tp, message

    _consumer.Consumer.getmany = _losing_getmany  # type: ignore[method-assign]
