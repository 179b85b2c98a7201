"""faust's Kafka consumer, handing each fetched record to its stream without a task.

faust's fetcher delivers every record as ``wait_first(callback(record),
suspend_flow.wait())``: four tasks and an ``asyncio.wait`` per record, so that a
delivery held up (a full stream buffer, flow control during a rebalance) gives
way when the flow is stopped. On the benchmark's VM that is a third to a half
of the 90-100 µs faust spends on a record before the agent sees it
(``bench/faust_cost.py``, modes ``iterate`` and ``eager``).

Almost every delivery completes without suspending: it puts the event into a
queue that has room. :class:`EagerConsumer` therefore runs the delivery inline
first, as Python 3.12's eager tasks do. Only a delivery that does suspend
becomes a task, and races the flow stop exactly as in faust.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterable
from typing import Any, ClassVar, TypeVar, cast

import faust
from faust.transport.drivers import aiokafka as driver
from faust.types import ConsumerT
from mode.services import WaitArgT, WaitResults
from mode.utils.times import Seconds

T = TypeVar("T")


async def resume(coro: Coroutine[Any, Any, T], waiting_on: Any) -> T:
    """Drive ``coro`` on from where it suspended on ``waiting_on``.

    This is what a task does with the coroutine it wraps: wait for the future it
    yielded (``None`` is a bare yield: one turn of the loop), then send it on,
    or throw in what the future raised, cancellation of this task included.
    Other yielded values are awaited too, and whatever that raises is thrown in.
    """
    while True:
        failure: BaseException | None = None
        try:
            if waiting_on is None:
                await asyncio.sleep(0)
            else:
                # the coroutine's await flagged the future as blocking; a task takes
                # the flag down before it waits (asyncio's Future protocol)
                waiting_on._asyncio_future_blocking = False
                await waiting_on
        except BaseException as error:  # handed to the coroutine, as a task does
            failure = error
        try:
            waiting_on = coro.send(None) if failure is None else coro.throw(failure)
        except StopIteration as stop:
            result: T = stop.value
            return result


def _close(coros: Iterable[WaitArgT]) -> None:
    for other in coros:
        if asyncio.iscoroutine(other):
            other.close()  # never started: no "was never awaited" warning


class EagerConsumer(driver.Consumer):
    """faust's aiokafka consumer whose ``wait_first`` starts its first coroutine inline.

    Unlike an eager task, a coroutine that suspends goes on in another task than
    the one it started in: fine for faust's delivery (queues, events, flow
    control), wrong for one that ties itself to its task (``asyncio.timeout``).
    """

    async def wait_first(
        self,
        *coros: WaitArgT,
        timeout: Seconds | None = None,  # noqa: ASYNC109 - the signature it overrides
    ) -> WaitResults:
        # mode takes None for "no timeout" but annotates the parameter as Seconds
        limit = cast(Seconds, timeout)
        first = coros[0] if coros else None
        if not asyncio.iscoroutine(first) or self.should_stop or self.crashed:
            return await super().wait_first(*coros, timeout=limit)
        others = coros[1:]
        try:
            waiting_on = first.send(None)
        except StopIteration as stop:  # done without suspending: the common case
            _close(others)
            return WaitResults(done=[first], results=[stop.value], stopped=False)
        except BaseException:
            _close(others)
            raise
        rest = resume(first, waiting_on)
        outcome = await super().wait_first(rest, *others, timeout=limit)
        done = [first if winner is rest else winner for winner in outcome.done]
        return WaitResults(done=done, results=outcome.results, stopped=outcome.stopped)


class Transport(driver.Transport):
    """faust's aiokafka transport, with :class:`EagerConsumer`."""

    Consumer: ClassVar[type[ConsumerT]] = EagerConsumer


def use_eager_delivery(app: faust.App) -> None:
    """Give ``app`` the eager consumer; call before anything touches ``app.transport``."""
    app.transport = Transport(app.conf.broker_consumer, app)
