"""The worker's timers and background tasks: they send or read, never change state.

Wall-clock ticks (live mode) and replay re-checks (replay mode) only send to the clock topic,
whose owner handles them as input; the segment gauges only read the table. State changes stay
in the batch shell, in input order.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import faust

from stream.adapter.shell import BatchShell
from stream.adapter.tables import PartitionedTable
from stream.core.clock import wall_now
from stream.core.rules import Rules
from stream.core.state import UnsupportedStateFormat, segments, to_ms
from stream.settings import Settings
from stream.telemetry.kpis import Kpis, Snapshot, add_to_snapshot

log = logging.getLogger("engage")

TICK = json.dumps({"kind": "tick"}).encode()


def add_timers(
    app: faust.App,
    settings: Settings,
    *,
    shell: BatchShell,
    clock_topic: Any,
    customers: PartitionedTable,
    kpis: Kpis,
    rules: Rules,
) -> None:
    """Register the mode's clock timer and the segment gauges."""

    if settings.mode == "live":

        @app.timer(settings.tick_interval_s)
        async def tick() -> None:
            """Wall-clock timers only send: one tick per partition, handled by its owner."""
            for p in range(settings.partitions):
                await clock_topic.send(value=TICK, partition=p)

    if settings.mode == "replay":

        @app.timer(settings.tick_interval_s * 4)
        async def recheck_replay() -> None:
            """After a restart nothing may be left to read: a tick to each owned partition
            whose replay is declared and unfinished re-checks its completion."""
            try:
                assigned = {
                    tp.partition
                    for tp in app.consumer.assignment()
                    if tp.topic == settings.clock_topic
                }
            except Exception:  # consumer not started yet
                return
            for p in sorted(assigned):
                engine = shell.engines.get(p)  # None: not started since the restart
                if engine is None or (
                    engine.time.replay is not None and not engine.time.replay_done
                ):
                    await clock_topic.send(value=TICK, partition=p)

    refresh = SegmentRefresh(settings, shell=shell, customers=customers, kpis=kpis, rules=rules)
    app.timer(settings.kpi_interval_s)(refresh.run)


#: Stored customers decoded between two turns of the stream.
REFRESH_CHUNK = 100
#: While a refresh runs it takes at most this share of the event loop: after a chunk that
#: took t it waits t * (1 / share - 1), so the stream's batches keep their turn.
REFRESH_SHARE = 0.25
#: After a refresh whose chunks took T in all, the next waits at least this many times T.
REFRESH_PAUSE = 9


class SegmentRefresh:
    """Segment gauges from this worker's own partitions: reads only, never writes.

    A full read of the table is the one cost here that grows with the customers. Read whole
    (each state decoded, with only a turn of the event loop between chunks of 500), the
    17,000 customers of the latency benchmark held the stream for about half a second every
    10 s: the worst event-to-decision latencies once the cycle collector's pauses were gone
    (p99 120 and 146 ms at 9,300 events/s, against 85 and 78 ms with the refresh off). Now
    only the fields counted are decoded (`state.segments`, about 6 µs a customer with the
    counting, against 31), `REFRESH_CHUNK` customers at a time, each chunk followed by a wait
    three times as long as it took (`REFRESH_SHARE`). After a read whose chunks took T, the
    next waits at least 9 T (`REFRESH_PAUSE`), so the gauges never take more than a tenth of
    the worker's time (with millions of customers they refresh less often than every
    `ENGAGE_KPI_INTERVAL_S`). `clock` and `sleep` are injectable for tests."""

    def __init__(
        self,
        settings: Settings,
        *,
        shell: BatchShell,
        customers: PartitionedTable,
        kpis: Kpis,
        rules: Rules,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.settings = settings
        self.shell = shell
        self.customers = customers
        self.kpis = kpis
        self.rules = rules
        self.clock = clock
        self.sleep = sleep
        self.next_refresh = 0.0  # monotonic time before which the table is not read again

    async def run(self) -> None:
        """One refresh, unless the last one was too recent (the timer's body)."""
        if self.clock() < self.next_refresh:
            return
        shell = self.shell
        live = self.settings.mode == "live"
        clock = to_ms(wall_now()) if live else shell.latest_clock()
        if clock == 0:
            return  # replay before its declaration: no "now" to read segments at
        snap = Snapshot()
        busy = 0.0  # seconds the chunks took, waits left out
        try:
            chunks = self.customers.scan(sorted(shell.engines), chunk=REFRESH_CHUNK)
            while True:
                started = self.clock()
                chunk = next(chunks, None)
                if chunk is None:
                    break
                for _key, raw in chunk:
                    try:
                        state = segments(raw)  # the fields counted, not the whole state
                    except UnsupportedStateFormat:
                        continue  # a newer release's customer: counted at partition start
                    add_to_snapshot(snap, state, clock, self.rules.profile)
                took = self.clock() - started
                busy += took
                await self.sleep(took * (1 / REFRESH_SHARE - 1))  # the stream's turn
        except Exception:  # a timer that raises stops the whole Faust app: log, keep going
            log.exception("segment refresh failed")
            return
        finally:
            self.next_refresh = self.clock() + REFRESH_PAUSE * busy
        self.kpis.publish(snap)
