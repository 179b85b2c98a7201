"""Fault injection for the worker processes of one test, loaded through PYTHONPATH.

``NEXTBEST_FAULT_LOSE_CHANGELOG=<partition>``: the first time the worker's
consumer fetches each record of that partition of a ``*-changelog`` topic, the
record is dropped instead of handed over (the fetch, ``_wait_next_records``,
returns without it). That is the stall seen in CI
after a rebalance: the consumer has read past records the table restore never
received, so the restore waits forever unless the partition is read again.

``NEXTBEST_FAULT_DIE_ON_WRITE=<n>``: see below.

Test code only: it patches the worker in the process it is loaded into.
"""

from __future__ import annotations

import os
from typing import Any

_partition = os.environ.get("NEXTBEST_FAULT_LOSE_CHANGELOG")

if _partition is not None:
    from faust.transport import consumer as _consumer

    _lose = int(_partition)
    _fetch = _consumer.Consumer._wait_next_records
    _lost: set[tuple[str, int]] = set()

    async def _losing_fetch(self: Any, timeout: float) -> Any:  # noqa: ASYNC109 - faust's
        records, active = await _fetch(self, timeout)
        if not records:
            return records, active
        kept = {}
        for tp, fetched in records.items():
            if tp.topic.endswith("-changelog") and tp.partition == _lose:
                fresh = [r for r in fetched if (tp.topic, r.offset) not in _lost]
                _lost.update((tp.topic, r.offset) for r in fresh)
                fetched = [r for r in fetched if r not in fresh]
            if fetched:
                kept[tp] = fetched
        return kept, active

    _consumer.Consumer._wait_next_records = _losing_fetch  # type: ignore[method-assign]

_die_on = os.environ.get("NEXTBEST_FAULT_DIE_ON_WRITE")

if _die_on is not None:
    # ``NEXTBEST_FAULT_DIE_ON_WRITE=<n>``: the process dies (as by kill -9) at its n-th
    # state write, after the batch's triggers and changelog records were acknowledged
    # and before RocksDB holds the states: the worst moment of a batch to be killed.
    from nextbest.adapters import table as _table

    _writes = [0]
    _write = _table.ContextTable.write

    def _dying_write(self: Any, *args: Any, **kwargs: Any) -> None:
        _writes[0] += 1
        if _writes[0] >= int(_die_on):
            os._exit(137)
        _write(self, *args, **kwargs)

    _table.ContextTable.write = _dying_write  # type: ignore[method-assign]

_die_in_transaction = os.environ.get("NEXTBEST_FAULT_DIE_IN_TRANSACTION")

if _die_in_transaction is not None:
    # ``NEXTBEST_FAULT_DIE_IN_TRANSACTION=<n>`` (exactly_once): the process dies (as by
    # kill -9) before committing the n-th transaction that sent triggers, every record
    # of it acknowledged: the transaction is left open, for the next owner to abort.
    from nextbest.adapters import outputs as _outputs

    _with_triggers = [0]
    _send = _outputs._Transaction.send
    _commit = _outputs._Transaction.commit

    async def _noting_send(self: Any, topic: str, *args: Any) -> Any:
        if topic.startswith("triggers."):
            self.__dict__["sent_triggers"] = True
        return await _send(self, topic, *args)

    async def _dying_commit(self: Any, consumed: Any) -> None:
        if self.__dict__.pop("sent_triggers", False):
            _with_triggers[0] += 1
            if _with_triggers[0] >= int(_die_in_transaction):
                os._exit(137)
        await _commit(self, consumed)

    _outputs._Transaction.send = _noting_send  # type: ignore[method-assign]
    _outputs._Transaction.commit = _dying_commit  # type: ignore[method-assign]
