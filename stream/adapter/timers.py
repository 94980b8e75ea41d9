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
from typing import Any

import faust

from stream.adapter.shell import BatchShell
from stream.adapter.tables import PartitionedTable
from stream.core.clock import wall_now
from stream.core.rules import Rules
from stream.core.state import UnsupportedStateFormat, decode, to_ms
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


class SegmentRefresh:
    """Segment gauges from this worker's own partitions: reads only, never writes.

    A full read of the table is the one cost here that grows with the customers (a few seconds
    for a million): it is read a chunk at a time with the stream served between chunks, and
    after a read that took T the next waits at least 9 T, so the gauges never take more than a
    tenth of the worker's time (with a million customers they refresh every minute or so
    instead of every `ENGAGE_KPI_INTERVAL_S`)."""

    def __init__(
        self,
        settings: Settings,
        *,
        shell: BatchShell,
        customers: PartitionedTable,
        kpis: Kpis,
        rules: Rules,
    ) -> None:
        self.settings = settings
        self.shell = shell
        self.customers = customers
        self.kpis = kpis
        self.rules = rules
        self.next_refresh = 0.0  # monotonic time before which the table is not read again

    async def run(self) -> None:
        """One refresh, unless the last one was too recent (the timer's body)."""
        if time.monotonic() < self.next_refresh:
            return
        shell = self.shell
        live = self.settings.mode == "live"
        clock = to_ms(wall_now()) if live else shell.latest_clock()
        if clock == 0:
            return  # replay before its declaration: no "now" to read segments at
        snap = Snapshot()
        started = time.monotonic()
        try:
            for chunk in self.customers.scan(sorted(shell.engines), chunk=500):
                for _key, raw in chunk:
                    try:
                        state = decode(raw)
                    except UnsupportedStateFormat:
                        continue  # a newer release's customer: counted at partition start
                    add_to_snapshot(snap, state, clock, self.rules.profile)
                await asyncio.sleep(0)  # a large table must not stall the stream
        except Exception:  # a timer that raises stops the whole Faust app: log, keep going
            log.exception("segment refresh failed")
            return
        finally:
            took = time.monotonic() - started
            self.next_refresh = time.monotonic() + 9 * took
        self.kpis.publish(snap)
