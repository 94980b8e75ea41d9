"""The segment refresh (`stream.adapter.timers.SegmentRefresh`): paced reads of the table."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from stream.adapter.timers import REFRESH_CHUNK, REFRESH_PAUSE, REFRESH_SHARE, SegmentRefresh
from stream.core.rules import load_rules
from stream.core.state import encode, new_state
from stream.settings import Settings
from stream.telemetry.kpis import Snapshot

#: Seconds the fake clock moves while one chunk is read and counted.
CHUNK_S = 0.004


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Table:
    """`scan` of a table of `n` customers; reading a chunk moves the fake clock."""

    def __init__(self, n: int, clock: FakeClock) -> None:
        self.rows = [(f"c{i}".encode(), encode(new_state(f"c{i}"))) for i in range(n)]
        self.clock = clock
        self.chunks: list[int] = []

    def scan(self, partitions: list[int], *, chunk: int) -> Iterator[list[tuple[bytes, bytes]]]:
        for i in range(0, len(self.rows), chunk):
            self.clock.now += CHUNK_S
            self.chunks.append(len(self.rows[i : i + chunk]))
            yield self.rows[i : i + chunk]


class Shell:
    def __init__(self) -> None:
        self.engines = {0: None, 1: None}

    def latest_clock(self) -> int:
        return 0


class Kpis:
    def __init__(self) -> None:
        self.published: list[Snapshot] = []

    def publish(self, snap: Snapshot) -> None:
        self.published.append(snap)


def refresh(n: int) -> tuple[SegmentRefresh, Table, Kpis, FakeClock, list[float]]:
    clock, waits, kpis = FakeClock(), [], Kpis()

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        clock.now += seconds

    table = Table(n, clock)
    r = SegmentRefresh(
        Settings(), shell=Shell(), customers=table, kpis=kpis,  # type: ignore[arg-type]
        rules=load_rules(), clock=clock, sleep=sleep,
    )  # fmt: skip
    return r, table, kpis, clock, waits


def test_reads_in_small_chunks_and_gives_the_stream_three_times_each_chunk() -> None:
    r, table, kpis, _, waits = refresh(REFRESH_CHUNK * 3 + 7)
    asyncio.run(r.run())
    assert table.chunks == [REFRESH_CHUNK] * 3 + [7]
    # after each chunk, a wait three times as long as it took: the refresh holds the event
    # loop at most a quarter of its time while it runs
    ratio = 1 / REFRESH_SHARE - 1
    assert waits == pytest.approx([CHUNK_S * ratio] * 4)
    assert [s.customers for s in kpis.published] == [REFRESH_CHUNK * 3 + 7]


def test_the_next_refresh_waits_nine_times_the_reading_not_the_waits() -> None:
    r, table, kpis, clock, _ = refresh(REFRESH_CHUNK * 2)
    asyncio.run(r.run())
    busy = 2 * CHUNK_S
    assert r.next_refresh == pytest.approx(clock.now + REFRESH_PAUSE * busy)
    clock.now = r.next_refresh - 0.001
    asyncio.run(r.run())  # too soon: nothing read, nothing published
    assert len(table.chunks) == 2 and len(kpis.published) == 1
    clock.now = r.next_refresh
    asyncio.run(r.run())
    assert len(table.chunks) == 4 and len(kpis.published) == 2


def test_a_failing_read_publishes_nothing_and_keeps_the_timer_alive() -> None:
    r, _, kpis, _, _ = refresh(10)

    def broken(partitions: list[int], *, chunk: int) -> Any:
        raise OSError("database closed")

    r.customers.scan = broken  # type: ignore[method-assign]
    asyncio.run(r.run())  # must not raise: a raising timer stops the whole Faust app
    assert kpis.published == []
