"""Customers that fall due at once wake at most `EngineConfig.wake_batch` per batch.

A restart after a long stop (or a replay's jump to its final instant) can find most of a
partition's customers due at once; waking them all in one batch held a worker's event loop for
seconds. The rest wait for the next batches (`PartitionEngine.behind`), and this must not
change a single decision: the logic runs every item due by the clock in ritual-time order
whenever it wakes, a record or an erasure for a customer left due wakes it first, and a replay
says it is done only once every customer due is woken.
"""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from stream.core.clock import clock_for
from stream.core.driver import MemoryDriver
from stream.core.due import DueIndex
from stream.core.engine import EngineConfig, Record
from stream.core.vocabulary import OutputName
from tests.core.test_engine import (
    CONTROL,
    INPUTS,
    LIMITS,
    NS,
    RULES,
    WALL,
    Log,
    history,
    partition_of,
)
from tests.factory import event

ERASURES = f"{NS}.erasures"


def _config(mode: str, wake_batch: int) -> EngineConfig:
    cfg = EngineConfig(RULES, clock_for(mode, grace_ms=1000), INPUTS, CONTROL, LIMITS,
                       erasures_topic=ERASURES)  # fmt: skip
    return dataclasses.replace(cfg, wake_batch=wake_batch)


def _at_rest(driver: MemoryDriver) -> int:
    """Batches without records until no customer due waits; returns how many it took."""
    rounds = 0
    while driver.checkpoint.behind:
        driver.settle(wall_ms=WALL)
        driver.acknowledge()
        rounds += 1
        assert rounds < 10_000
    driver.settle(wall_ms=WALL)  # the last acknowledgements leave the outboxes
    return rounds


def _run(records: list[Record], *, size: int, wake_batch: int, mode: str) -> MemoryDriver:
    driver = MemoryDriver(_config(mode, wake_batch))
    for i in range(0, len(records), size):
        driver.pipe(records[i : i + size], wall_ms=WALL, catch_up=False)
    _at_rest(driver)
    return driver


# --- the due index --------------------------------------------------------------------------


def test_pop_due_takes_the_earliest_up_to_the_limit_and_leaves_the_rest_due() -> None:
    index = DueIndex()
    for i, due in enumerate([50, 10, 30, 20, 99]):
        index.register(f"c{i}", due)
    assert index.pop_due(60, 2) == ["c1", "c3"]
    assert index.next_wake() == 30
    assert index.pop_due(60) == ["c2", "c0"]
    assert index.pop_due(60, 5) == []
    assert len(index) == 1


def test_take_wakes_one_customer_only_when_it_is_due() -> None:
    index = DueIndex()
    index.register("a", 10)
    index.register("b", 90)
    assert not index.take("b", 50)
    assert index.take("a", 50)
    assert not index.take("a", 50)  # taken once
    index.register("a", 70)  # woken and registered again: the old heap entry is skipped
    assert index.pop_due(80) == ["a"]
    assert index.pop_due(100) == ["b"]


# --- the same decisions ---------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.integers(5, 80), st.integers(1, 3))
def test_a_replay_decides_the_same_whatever_the_wake_batch(
    seed: int, size: int, wake_batch: int
) -> None:
    """A replay of many customers whose final instant is 60 days after its last event (every
    timer falls due at once): one customer or a few per batch, the same decisions byte for
    byte and the same states as waking them all at once."""
    log = Log()
    events = history(seed, customers=30, events=150)
    for evt in events:
        log.event(evt)
    last = max(int(_ms(e["occurred_at"])) for e in events)
    log.declare(final=last + 60 * 86_400_000)
    all_at_once = _run(log.records, size=size, wake_batch=1_000_000, mode="replay")
    few = _run(log.records, size=size, wake_batch=wake_batch, mode="replay")
    assert few.decisions() == all_at_once.decisions()
    assert few.customers == all_at_once.customers
    assert all_at_once.decisions()  # the history decides something


def test_a_replay_is_done_only_once_every_customer_due_is_woken() -> None:
    """With one wake per batch the final jump leaves customers due: the replay's status comes
    after the last of their decisions, never before."""
    log = Log()
    events = history(7, customers=30, events=150)
    for evt in events:
        log.event(evt)
    last = max(int(_ms(e["occurred_at"])) for e in events)
    log.declare(final=last + 60 * 86_400_000)
    driver = MemoryDriver(_config("replay", 1))
    driver.pipe(log.records, wall_ms=WALL, catch_up=False)
    assert driver.checkpoint.behind  # more fell due at the final instant than one batch wakes
    statuses_before = [o for o in driver.sent if o.name == OutputName.REPLAY_STATUS]
    assert statuses_before == []
    rounds = _at_rest(driver)
    assert rounds > 1
    status_at = {
        int(json.loads(o.value or b"{}")["partition"]): i
        for i, o in enumerate(driver.sent)
        if o.name == OutputName.REPLAY_STATUS
    }
    assert set(status_at) == set(driver.engines)
    for i, o in enumerate(driver.sent):
        if o.name == OutputName.DECISIONS and o.key is not None:
            assert i < status_at[partition_of(o.key.decode())]


def _ms(iso: str) -> int:
    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000)


def _follow_log(extra: list[dict]) -> tuple[Log, list[Record], list[Record]]:
    """Ten customers buy on day 0; another customer's click on day 40 moves the clock past
    every check-in and "we noticed" (30 days of silence); then `extra` (records for the
    customers left due)."""
    log = Log()
    first = [log.event(event("purchase", f"c{i}", days=0, tz="UTC")) for i in range(10)]
    first.append(log.event(event("click", "mover", days=40)))
    rest = []
    for evt in extra:
        if evt.get("type") == "erase":
            request = {"customer_id": evt["customer_id"], "request_id": f"r-{evt['customer_id']}",
                       "requested_at": "2026-03-10T00:00:00Z"}  # fmt: skip
            key = evt["customer_id"].encode()
            p = log.event(event("click", evt["customer_id"], days=0)).partition
            log.records.pop()  # only to learn the partition of the key
            rest.append(log.append(ERASURES, p, key, json.dumps(request).encode()))
        else:
            rest.append(log.event(evt))
    return log, first, rest


def _two_runs(extra: list[dict]) -> tuple[MemoryDriver, MemoryDriver]:
    _log, first, rest = _follow_log(extra)
    out = []
    for wake_batch in (1_000_000, 1):
        driver = MemoryDriver(_config("follow", wake_batch))
        driver.pipe(first, wall_ms=WALL, catch_up=False)
        if wake_batch == 1:
            assert driver.checkpoint.behind  # customers left due
        driver.pipe(rest, wall_ms=WALL, catch_up=False)
        _at_rest(driver)
        out.append(driver)
    return out[0], out[1]


def test_a_late_event_for_a_customer_left_due_comes_after_its_due_items() -> None:
    """Each customer left due clicks, late (day 20, behind the day-40 clock): it is woken
    first, so its "we noticed" (due on day 30) is decided exactly as when every customer woke
    at once; a late event never changes a decision already taken. (Folded before the wake,
    the day-20 click would move the silence timer and cancel it.)"""
    late = [event("click", f"c{i}", days=20) for i in range(10)]
    all_at_once, one_by_one = _two_runs(late)
    assert one_by_one.decisions() == all_at_once.decisions()
    assert one_by_one.customers == all_at_once.customers
    rituals = [json.loads(v)["ritual"] for v in all_at_once.decisions().values()]
    assert rituals.count("we_noticed") >= 3  # (the holdout keeps some customers out)


def test_an_erasure_of_a_customer_left_due_comes_after_its_due_items() -> None:
    erasures = [{"type": "erase", "customer_id": f"c{i}"} for i in range(5)]
    all_at_once, one_by_one = _two_runs(erasures)
    assert one_by_one.decisions() == all_at_once.decisions()
    assert one_by_one.customers == all_at_once.customers
    assert all(f"c{i}".encode() not in one_by_one.customers for i in range(5))


def test_the_in_process_driver_catches_up_before_it_returns() -> None:
    """Backtests and replays in-process (`MemoryDriver.pipe`) read the decisions when a pipe
    returns: by default it runs batches without records until no customer due is left, so a
    replay is done after its last pipe whatever the wake batch."""
    log = Log()
    events = history(3, customers=30, events=150)
    for evt in events:
        log.event(evt)
    last = max(int(_ms(e["occurred_at"])) for e in events)
    log.declare(final=last + 60 * 86_400_000)
    one = MemoryDriver(_config("replay", 1))
    one.pipe(log.records, wall_ms=WALL)
    assert not one.checkpoint.behind
    assert all(e.time.replay_done for e in one.engines.values())
    everyone = MemoryDriver(_config("replay", 1_000_000))
    everyone.pipe(log.records, wall_ms=WALL)
    assert one.decisions() == everyone.decisions()
