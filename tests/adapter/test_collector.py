"""The worker's schedule of full collections (`stream.adapter.collector`)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from stream.adapter.collector import IDLE_AFTER_S, NEVER, CycleCollector


@pytest.fixture
def thresholds() -> Iterator[None]:
    """The test process's collector thresholds, restored after the test."""
    saved = gc.get_threshold()
    try:
        yield
    finally:
        gc.set_threshold(*saved)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def schedule(interval_s: float) -> tuple[CycleCollector, Clock, list[int], list[tuple[float, int]]]:
    clock, collected, observed = Clock(), [], []

    def collect(generation: int) -> int:
        collected.append(generation)
        return 3

    collector = CycleCollector(
        interval_s=interval_s,
        clock=clock,
        collect=collect,
        observe=lambda seconds, found: observed.append((seconds, found)),
    )
    return collector, clock, collected, observed


def test_install_turns_only_automatic_full_collections_off(thresholds: None) -> None:
    young, middle, _ = gc.get_threshold()
    collector, *_ = schedule(600)
    collector.install()
    assert gc.get_threshold() == (young, middle, NEVER)
    assert collector.scheduled


def test_interval_zero_leaves_pythons_schedule(thresholds: None) -> None:
    before = gc.get_threshold()
    collector, clock, collected, _ = schedule(0)
    collector.install()
    assert gc.get_threshold() == before
    clock.now += 10_000
    collector.idle()
    collector.busy()
    assert collected == [] and not collector.scheduled


def test_nothing_runs_before_install() -> None:
    """An app built in a test process (no `install`) never collects on its own."""
    collector, clock, collected, _ = schedule(600)
    clock.now += 10_000
    collector.idle()
    collector.busy()
    assert collected == []


def test_idle_collects_a_minute_after_the_last(thresholds: None) -> None:
    collector, clock, collected, observed = schedule(600)
    collector.install()
    clock.now += IDLE_AFTER_S - 1
    collector.idle()
    assert collected == []
    clock.now += 1
    collector.idle()
    assert collected == [2]
    assert observed[0][1] == 3 and observed[0][0] >= 0
    collector.idle()  # just ran: not again until a minute later
    assert collected == [2]
    clock.now += IDLE_AFTER_S
    collector.idle()
    assert collected == [2, 2] and collector.full_collections == 2


def test_busy_collects_only_after_the_whole_interval(thresholds: None) -> None:
    collector, clock, collected, _ = schedule(600)
    collector.install()
    clock.now += 599
    collector.busy()
    assert collected == []
    clock.now += 1
    collector.busy()
    assert collected == [2]
    clock.now += IDLE_AFTER_S  # an idle moment soon after does not collect again at once
    collector.busy()
    assert collected == [2]


def test_a_short_interval_bounds_the_idle_wait(thresholds: None) -> None:
    collector, clock, collected, _ = schedule(5)
    collector.install()
    clock.now += 5
    collector.idle()
    assert collected == [2]


def test_real_full_collection_finds_a_garbage_cycle(thresholds: None) -> None:
    """With automatic full collections off, a cycle promoted to the oldest generation stays
    until the schedule runs one: then it is found (and observed)."""
    observed: list[tuple[float, int]] = []
    clock = Clock()
    collector = CycleCollector(
        interval_s=600, clock=clock, observe=lambda s, found: observed.append((s, found))
    )
    collector.install()

    class Node:
        pass

    a, b = Node(), Node()
    a.other, b.other = b, a  # type: ignore[attr-defined]
    gc.collect(1)  # survives the young generations (still referenced)
    gc.collect(1)
    del a, b
    clock.now += IDLE_AFTER_S
    collector.idle()
    assert observed and observed[0][1] >= 2
