"""Driving a simulation into a sink: flat out into a file, or paced into Kafka.

File mode has no wall clock at all (that is what makes it reproducible). Kafka mode paces the
simulated clock against the wall clock at `speed`, caps the message rate, never lets simulated
time run ahead of the wall clock (the processor dead-letters events more than 5 minutes in the
future), and feeds delivered nudges back into the simulation between events.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from functools import partial

from stream.tools.emitter.faults import FaultMixer
from stream.tools.emitter.reactions import Nudge
from stream.tools.emitter.report import ProgressBar, Stats
from stream.tools.emitter.simulation import Simulation
from stream.tools.emitter.sink import FileSink, KafkaSink, NudgeListener
from stream.tools.emitter.wire import Message, message

#: Allowed burst of the `--rate` cap, in seconds' worth of messages: sleeping for every
#: single sub-millisecond slot would cost more than it saves.
_BURST_S = 0.1


def run_file(
    sim: Simulation, sink: FileSink, mixer: FaultMixer, stats: Stats, bar: ProgressBar
) -> None:
    """Write every event (and the bad messages mixed in) as fast as possible."""
    personas = {c.customer_id: c.persona.name for c in sim.customers}
    for item in sim:
        good = message(item.at_ms, item.type, item.customer_id, item.event)
        for bad in mixer.before(good, item.event):
            sink.write(bad)
            stats.bad_message(bad.reason or "", len(bad.value))
        sink.write(good)
        stats.event(item, personas[item.customer_id], len(good.value))
        bar.update(item.at_ms, stats)
    bar.update(sim.end_ms, stats, force=True)


class _Pacer:
    """Wall-clock pacing of simulated time, and the `--rate` cap."""

    def __init__(self, sim_start_ms: int, speed: float, rate: float | None) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._wall0 = loop.time()
        self._sim0 = sim_start_ms
        self._speed = speed
        self._interval = 1.0 / rate if rate else 0.0
        self._next_slot = self._wall0

    def delay_for(self, sim_ms: int) -> float:
        """Seconds to wait before simulated instant `sim_ms` may be emitted."""
        now = self._loop.time()
        target = self._wall0 + (sim_ms - self._sim0) / 1000 / self._speed
        # Never ahead of the wall clock: once simulated time catches up, it runs in real time.
        ahead = sim_ms / 1000 - time.time()
        if ahead > 0:
            target = max(target, now + ahead)
        return target - now

    async def slot(self) -> None:
        """Wait for the rate cap's next free slot (no-op without a cap)."""
        if not self._interval:
            return
        now = self._loop.time()
        self._next_slot = max(self._next_slot, now - _BURST_S) + self._interval
        if self._next_slot > now:
            await asyncio.sleep(self._next_slot - now)


async def run_kafka(
    sim: Simulation,
    sink: KafkaSink,
    mixer: FaultMixer,
    listener: NudgeListener | None,
    stats: Stats,
    bar: ProgressBar,
    *,
    speed: float,
    rate: float | None,
) -> None:
    """Produce the simulation in simulated-time order, reacting to nudges as they arrive."""
    personas = {c.customer_id: c.persona.name for c in sim.customers}
    pacer = _Pacer(sim.start_ms, speed, rate)
    queue = listener.queue if listener is not None else None
    sent = 0

    def take(nudge: Nudge) -> None:
        # The nudge's decided_at is simulated time; `deliver` never plans before sim.now_ms.
        stats.nudge(nudge, sim.deliver(nudge))

    async def send(msg: Message, on_ack: Callable[[], None]) -> None:
        await pacer.slot()
        stats.handed += 1
        await sink.send(msg, on_ack)

    while True:
        if queue is not None:
            while not queue.empty():
                take(queue.get_nowait())
        next_ms = sim.peek_ms()
        if next_ms is None:
            break
        delay = pacer.delay_for(next_ms)
        if delay > 0:
            if queue is None:
                await asyncio.sleep(delay)
            else:
                # Wake early for a nudge: its reaction may come before next_ms.
                with contextlib.suppress(TimeoutError):
                    take(await asyncio.wait_for(queue.get(), delay))
            bar.update(sim.now_ms, stats)
            continue
        item = sim.step()
        if item is None:
            break
        good = message(item.at_ms, item.type, item.customer_id, item.event)
        for bad in mixer.before(good, item.event):
            await send(bad, partial(stats.bad_message, bad.reason or "", len(bad.value)))
        # Counted when Kafka acknowledges it, not when handed to the producer.
        await send(good, partial(stats.event, item, personas[item.customer_id], len(good.value)))
        bar.update(item.at_ms, stats)
        sent += 1
        if sent % 256 == 0:
            await asyncio.sleep(0)  # let the nudge listener and the producer's I/O run
    if listener is not None:
        stats.nudges_invalid = listener.invalid
    try:
        await sink.drain()
    finally:
        stats.settle(sink)
    bar.update(sim.end_ms, stats, force=True)
