"""A leaner hand-over from Faust's consumer to its streams: the per-message tasks go away.

Faust's fetcher hands every message to the streams with
`await self.wait_first(callback(message), self.suspend_flow.wait())`: `Service.wait_first`
wraps that hand-over, the suspend flag, and the service's stopped and crashed flags in four
tasks and runs `asyncio.wait` on them, for every message. The race exists for one case: a
hand-over blocked on a full stream buffer must be abandoned when a rebalance suspends the flow.
Almost every hand-over completes without ever waiting (the buffer has room), and then the four
tasks are pure cost (profiled: about a sixth of the worker's CPU at full load).

`LeanConsumer.wait_first` runs the hand-over's first step inline when the flow is not suspended
and the consumer neither stopped nor crashed. If the hand-over completes in that step, it
returns what `wait_first` would have returned (nothing could have set the suspend flag in
between: no other code ran). If it must wait, the rest of the hand-over continues as a task,
raced against the suspend flag through Faust's own `wait_first`, exactly as before. Every other
call of `wait_first` takes Faust's path unchanged. Faust keeps everything else: group
membership, rebalances, fetching, offsets and commits, tables and their recovery.

Imports: faust and asyncio only (an adapter module).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Generator
from typing import Any

import faust
from faust.transport.drivers.aiokafka import Consumer, Transport
from faust.types import TransportT
from mode.services import WaitResults


class SuspendFlow(asyncio.Event):
    """The consumer's suspend flag; `wait()` returns an awaitable `wait_first` recognises."""

    def wait(self) -> _SuspendWait:  # type: ignore[override]
        """An awaitable of the flag (the same as `asyncio.Event.wait()` when awaited)."""
        return _SuspendWait(self)


class _SuspendWait:
    """`await` it to wait for the flag; created lazily so an inline hand-over costs nothing."""

    __slots__ = ("flag",)

    def __init__(self, flag: SuspendFlow) -> None:
        self.flag = flag

    def __await__(self) -> Generator[Any, None, bool]:
        return asyncio.Event.wait(self.flag).__await__()


class LeanConsumer(Consumer):
    """Faust's aiokafka consumer with the fetcher's hand-over run inline when it can be."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.suspend_flow = SuspendFlow()
        self.handed_inline = 0  # hand-overs that completed inline (for tests and profiling)

    async def wait_first(self, *coros: Any, timeout: Any = None) -> WaitResults:
        """The fetcher's `wait_first(callback(message), suspend_flow.wait())`, inline when the
        hand-over completes without waiting; anything else goes to Faust's `wait_first`."""
        if (
            len(coros) == 2
            and timeout is None
            and isinstance(coros[1], _SuspendWait)
            and asyncio.iscoroutine(coros[0])
            and not self.suspend_flow.is_set()
            and not self._stopped.is_set()
            and not self._crashed.is_set()
        ):
            handover: Coroutine[Any, Any, Any] = coros[0]
            try:
                yielded = handover.send(None)
            except StopIteration as done:
                self.handed_inline += 1
                return WaitResults([handover], [done.value], False)
            rest = asyncio.ensure_future(_resume(handover, yielded))
            return await super().wait_first(rest, coros[1])
        return await super().wait_first(*coros, timeout=timeout)


async def _resume(coro: Coroutine[Any, Any, Any], yielded: Any) -> Any:
    """Drive a coroutine that already ran its first step and yielded, the way a task would:
    wait for the future it yielded (or just yield for a bare `yield`), then step it again.
    A cancellation of this task cancels the awaited future and is thrown into the coroutine."""
    while True:
        try:
            if yielded is None:
                await asyncio.sleep(0)
            else:
                yielded._asyncio_future_blocking = False  # what a task does with a yield
                await yielded  # the coroutine's own await reads the result when resumed
        except asyncio.CancelledError as exc:
            try:
                yielded = coro.throw(exc)
            except StopIteration as done:
                return done.value
            continue
        except BaseException:
            pass  # the coroutine's own await raises it again when stepped below
        try:
            yielded = coro.send(None)
        except StopIteration as done:
            return done.value


class LeanTransport(Transport):
    """The aiokafka transport with `LeanConsumer` (`faust.App._new_transport` picks it)."""

    Consumer = LeanConsumer


class LeanApp(faust.App):
    """`faust.App` whose consumer is `LeanConsumer` for Kafka brokers (`lean_drain=True`)."""

    lean_drain = True

    def _new_transport(self) -> TransportT:
        url = self.conf.broker_consumer[0]
        if self.lean_drain and url.scheme in {"kafka", "aiokafka"}:
            return LeanTransport(self.conf.broker_consumer, self)
        return super()._new_transport()
