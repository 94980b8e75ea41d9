"""The lean hand-over from Faust's fetcher to the streams (`stream.adapter.drain`), in-process.

The fetcher calls `consumer.wait_first(callback(message), consumer.suspend_flow.wait())` for
every message; these tests call it the same way with hand-overs that complete at once, that
wait, that fail, and that a rebalance (the suspend flag) abandons. The worker tests
(test_pipeline, test_chaos, test_ritual_engine, test_http) run it against Kafka.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from stream.adapter.app import create_app
from stream.adapter.drain import LeanConsumer, _resume
from stream.settings import Settings


def consumer(**overrides: Any) -> Any:
    """A worker's consumer, never started (no I/O)."""
    settings = Settings(broker="kafka://127.0.0.1:1", redis_enabled=False, **overrides)
    return create_app(settings).app.consumer


def test_the_worker_uses_the_lean_consumer_unless_disabled() -> None:
    assert isinstance(consumer(), LeanConsumer)
    assert not isinstance(consumer(drain="faust"), LeanConsumer)


def test_a_handover_that_never_waits_runs_inline() -> None:
    async def main() -> None:
        c = consumer()
        seen: list[int] = []

        async def handover(n: int) -> int:
            seen.append(n)
            return n * 2

        tasks_before = len(asyncio.all_tasks())
        result = await c.wait_first(handover(21), c.suspend_flow.wait())
        assert result.results == [42] and not result.stopped
        assert seen == [21] and c.handed_inline == 1
        assert len(asyncio.all_tasks()) == tasks_before  # no task was left behind

    asyncio.run(main())


def test_a_handover_that_waits_completes_as_a_task() -> None:
    async def main() -> None:
        c = consumer()
        room = asyncio.Event()

        async def handover() -> str:
            await room.wait()  # a full stream buffer
            return "delivered"

        asyncio.get_running_loop().call_later(0.01, room.set)
        result = await asyncio.wait_for(c.wait_first(handover(), c.suspend_flow.wait()), 5)
        assert result.results == ["delivered"] and c.handed_inline == 0

    asyncio.run(main())


def test_a_suspended_flow_abandons_a_waiting_handover() -> None:
    async def main() -> None:
        c = consumer()
        cancelled = asyncio.Event()

        async def handover() -> None:
            try:
                await asyncio.Event().wait()  # blocked for good on a full buffer
            except asyncio.CancelledError:
                cancelled.set()
                raise

        asyncio.get_running_loop().call_later(0.01, c.suspend_flow.set)  # a rebalance
        await asyncio.wait_for(c.wait_first(handover(), c.suspend_flow.wait()), 5)
        await asyncio.wait_for(cancelled.wait(), 5)

    asyncio.run(main())


def test_while_suspended_the_handover_takes_fausts_path() -> None:
    async def main() -> None:
        c = consumer()
        c.suspend_flow.set()

        async def handover() -> int:
            return 1

        result = await c.wait_first(handover(), c.suspend_flow.wait())
        assert c.handed_inline == 0
        assert result.done  # the suspend flag (and maybe the hand-over) won, as in Faust

    asyncio.run(main())


def test_errors_of_a_handover_reach_the_fetcher_either_way() -> None:
    async def main() -> None:
        c = consumer()

        async def at_once() -> None:
            raise ValueError("at once")

        async def later() -> None:
            await asyncio.sleep(0)
            raise ValueError("later")

        with pytest.raises(ValueError, match="at once"):
            await c.wait_first(at_once(), c.suspend_flow.wait())
        with pytest.raises(ValueError, match="later"):
            await c.wait_first(later(), c.suspend_flow.wait())

    asyncio.run(main())


def test_resume_steps_a_coroutine_like_a_task() -> None:
    async def main() -> None:
        async def work() -> int:
            await asyncio.sleep(0)
            done = asyncio.ensure_future(asyncio.sleep(0.001, result=3))
            finished, _ = await asyncio.wait([done])
            return finished.pop().result() + 4

        coro = work()
        yielded = coro.send(None)
        assert await asyncio.ensure_future(_resume(coro, yielded)) == 7

    asyncio.run(main())
