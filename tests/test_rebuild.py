"""A partition's due index rebuilt a slice at a time while records are processed (the worker's
fast start) decides exactly what a rebuild before the first record decides. In-process, no Kafka.
"""

from __future__ import annotations

import itertools
from collections import Counter

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream.core.driver import MemoryDriver
from stream.core.engine import Record
from stream.core.rituals import next_due
from stream.core.state import decode, peek
from tests.factory import event
from tests.test_engine import PARTITIONS, WALL, Log, config, history, partition_of


def declared_first(seed: int, events: int) -> list[Record]:
    """A history whose replay declaration comes first, so the clock moves while it is read
    (timers fall due between records, not all at the end)."""
    log = Log()
    for evt in history(seed, events=events):
        log.event(evt)
    control = log.declare()
    return control + [r for r in log.records if r not in control]


def settle(driver: MemoryDriver) -> None:
    """Start every engine, finish every rebuild, move every clock once more, acknowledge."""
    driver.tick(range(PARTITIONS), wall_ms=WALL)
    driver.rebuild_step(10**9)
    driver.tick(range(PARTITIONS), wall_ms=WALL)
    driver.acknowledge()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10_000),
    mode=st.sampled_from(["replay", "follow"]),
    data=st.data(),
)
def test_a_lazy_rebuild_gives_the_decisions_and_states_of_an_eager_one(
    seed: int, mode: str, data: st.DataObject
) -> None:
    """Same batches, same crashes (some before the sends were acknowledged, so outboxes are
    re-sent), the rebuild sliced anyhow between batches, or not started at all before the
    next crash. In `follow` mode the clock runs ahead of other topics' events, so records
    arrive late and customers the index does not know yet are caught up when first read."""
    records = declared_first(seed, 70)
    eager, lazy = MemoryDriver(config(mode)), MemoryDriver(config(mode), lazy=True)
    sessions = [0]  # where each session of the lazy driver starts in `lazy.sent`
    i = 0
    while i < len(records):
        n = data.draw(st.integers(1, 25), label="batch")
        ack = data.draw(st.booleans(), label="ack")
        for driver in (eager, lazy):
            driver.pipe(records[i : i + n], wall_ms=WALL, ack=ack)
        i += n
        lazy.rebuild_step(data.draw(st.sampled_from([0, 0, 1, 1, 2]), label="slice"))
        if data.draw(st.integers(0, 3), label="crash") == 0:
            eager.crash()
            lazy.crash()
            sessions.append(len(lazy.sent))
    settle(eager)
    settle(lazy)
    for a, b in itertools.pairwise([*sessions, len(lazy.sent)]):  # once per session at most
        sends = Counter(o.nudge_id for o in lazy.sent[a:b] if o.name == "decisions")
        assert all(n == 1 for n in sends.values())
    assert lazy.decisions() == eager.decisions()
    assert lazy.customers == eager.customers  # byte for byte
    sent = {o.nudge_id for o in eager.sent if o.nudge_id}
    assert {o.nudge_id for o in lazy.sent if o.nudge_id} == sent
    assert lazy.decisions(), "the history triggers rituals"


def test_a_late_record_of_a_customer_not_rebuilt_yet_sees_what_fell_due_before_it() -> None:
    """After a restart the clock passes a customer's timer before the rebuild reaches the
    customer; a late event of the customer must then come after the timer's decision, as with
    a complete index (holding the clock instead would put the late event first)."""
    log = Log()
    ann, bob = "ann", "cy"  # one partition
    log.event(event("purchase", ann, days=0, event_id="a1", order_id="o-1"))
    first = list(log.records)
    log.event(event("click", bob, days=10, event_id="b1"))  # the clock passes ann's day-3 timer
    log.event(event("review", ann, days=2, event_id="a2", rating=1))  # late: before the timer
    rest = log.records[len(first) :]

    def run(lazy: bool) -> MemoryDriver:
        driver = MemoryDriver(config("follow"), lazy=lazy)
        driver.pipe(first, wall_ms=WALL)
        driver.crash()
        for record in rest:
            driver.pipe([record], wall_ms=WALL)
        if lazy:  # the rebuild had not read a single customer
            assert all(driver.engines[p].rebuilding for p in driver.scans)
            assert partition_of(ann) in driver.scans
        settle(driver)
        return driver

    eager, lazy = run(False), run(True)
    assert lazy.decisions() == eager.decisions()
    assert lazy.customers == eager.customers
    rituals = [decode(v).r.last for v in eager.customers.values() if decode(v).r.last]
    assert any("three_days_later" in last for last in rituals)


def test_an_outbox_is_re_sent_once_whoever_reaches_the_customer_first() -> None:
    """The rebuild or a record: the first to read a customer re-sends its unacknowledged
    decisions, the other does not send them again."""
    log = Log()
    log.event(event("purchase", "ann", days=0, event_id="a1", order_id="o-1"))
    log.event(event("purchase", "cy", days=0, event_id="c1", order_id="o-2"))
    first = list(log.records)
    log.event(event("click", "ann", days=0.1, event_id="a2"))
    log.event(event("click", "cy", days=0.1, event_id="c2"))
    ann_click, cy_click = log.records[len(first) :]
    driver = MemoryDriver(config("follow"), lazy=True)
    driver.pipe(first, wall_ms=WALL, ack=False)  # the welcomes are never acknowledged
    welcomes = set(driver.decisions())
    assert len(welcomes) == 2
    driver.crash()
    start = len(driver.sent)
    driver.pipe([ann_click], wall_ms=WALL, ack=False)  # a record reaches ann first
    driver.rebuild_step(10**9)  # then the rebuild: cy first
    driver.pipe([cy_click], wall_ms=WALL, ack=False)
    settle(driver)
    again = Counter(o.nudge_id for o in driver.sent[start:] if o.name == "decisions")
    assert again == Counter(welcomes)  # each once
    assert driver.counts[("resent",)] == 2


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), data=st.data())
def test_a_peek_reads_what_a_full_decode_reads(seed: int, data: st.DataObject) -> None:
    driver = MemoryDriver(config("follow"))
    records = declared_first(seed, 40)
    cut = data.draw(st.integers(0, len(records)))
    driver.pipe(records[:cut], wall_ms=WALL)
    driver.pipe(records[cut:], wall_ms=WALL, ack=False)  # some outboxes stay full
    for raw in driver.customers.values():
        state = decode(raw)
        pk = peek(raw)
        assert pk == (state.customer_id, state.partition, next_due(state.r), bool(state.outbox))
