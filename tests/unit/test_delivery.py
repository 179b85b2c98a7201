"""The eager consumer: a delivery runs inline, and one that suspends behaves as faust's."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator
from typing import Any

import faust
import pytest

from nextbest.adapters.delivery import EagerConsumer, use_eager_delivery


@pytest.fixture
async def consumer() -> AsyncIterator[EagerConsumer]:
    app = faust.App("test-delivery", broker="kafka://127.0.0.1:1", web_enabled=False)
    use_eager_delivery(app)  # nothing connects until the app starts
    made = app.consumer
    assert isinstance(made, EagerConsumer)
    yield made
    made._thread.thread_loop.close()  # the loop its (never started) Kafka thread was given


def closed(coro: Any) -> bool:
    return inspect.getcoroutinestate(coro) == inspect.CORO_CLOSED


async def test_a_delivery_that_does_not_suspend_runs_inline(consumer: EagerConsumer) -> None:
    tasks: list[asyncio.Task[Any] | None] = []

    async def deliver() -> str:
        tasks.append(asyncio.current_task())
        return "delivered"

    coro, flow_stopped = deliver(), asyncio.Event().wait()
    outcome = await consumer.wait_first(coro, flow_stopped)
    assert outcome.done == [coro]
    assert outcome.results == ["delivered"]
    assert not outcome.stopped
    assert tasks == [asyncio.current_task()]  # the caller's task: none was made for it
    assert closed(flow_stopped)  # never started, closed: no "never awaited" warning


async def test_a_delivery_that_suspends_finishes_in_a_task(consumer: EagerConsumer) -> None:
    gate: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    tasks: list[asyncio.Task[Any] | None] = []

    async def deliver() -> str:
        tasks.append(asyncio.current_task())
        value = await gate
        tasks.append(asyncio.current_task())
        return value

    coro = deliver()
    waiting = asyncio.ensure_future(consumer.wait_first(coro, asyncio.Event().wait()))
    for _ in range(3):
        await asyncio.sleep(0)
    assert not waiting.done()
    gate.set_result("late")
    outcome = await waiting
    assert outcome.done == [coro]  # the caller's coroutine, not the wrapper
    assert outcome.results == ["late"]
    assert tasks[0] is waiting  # started inline, in the caller's task
    assert tasks[1] is not waiting  # resumed in a task of its own


async def test_a_suspended_delivery_gives_way_when_the_flow_stops(
    consumer: EagerConsumer,
) -> None:
    gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    unwound: list[str] = []

    async def deliver() -> None:
        try:
            await gate  # a full stream buffer that never drains
        except asyncio.CancelledError:
            unwound.append("cancelled")
            raise

    coro, stop = deliver(), asyncio.Event()
    waiting = asyncio.ensure_future(consumer.wait_first(coro, stop.wait()))
    await asyncio.sleep(0)
    stop.set()
    outcome = await asyncio.wait_for(waiting, 5)
    assert coro not in outcome.done
    assert len(outcome.done) == 1  # the flow stop won
    await asyncio.sleep(0)
    assert gate.cancelled()
    assert unwound == ["cancelled"]  # the cancellation reached the delivery itself


async def test_what_a_future_raises_is_thrown_into_the_delivery(consumer: EagerConsumer) -> None:
    gate: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def deliver() -> str:
        await asyncio.sleep(0)  # a bare yield first
        try:
            return await gate
        except KeyError:
            return "handled"

    coro = deliver()
    waiting = asyncio.ensure_future(consumer.wait_first(coro, asyncio.Event().wait()))
    for _ in range(3):
        await asyncio.sleep(0)
    gate.set_exception(KeyError("full"))
    outcome = await waiting
    assert outcome.results == ["handled"]


async def test_a_failing_delivery_raises_to_the_fetcher(consumer: EagerConsumer) -> None:
    async def fail_at_once() -> None:
        raise ValueError("bad record")

    flow_stopped = asyncio.Event().wait()
    with pytest.raises(ValueError, match="bad record"):
        await consumer.wait_first(fail_at_once(), flow_stopped)
    assert closed(flow_stopped)

    async def fail_later() -> None:
        await asyncio.sleep(0)
        raise ValueError("bad later")

    with pytest.raises(ValueError, match="bad later"):
        await consumer.wait_first(fail_later(), asyncio.Event().wait())
