"""The read order of a fetch's records (`stream.core.interleave.in_time_order`).

Properties: the same records, each topic-partition's in its order, interleaved by record time,
an input already in time order unchanged; and what it is for: a live event read in a fetch's
run ahead of the other topics' runs is decided within that batch, not one batch later; replay
decisions do not depend on it.
"""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from stream.core.driver import MemoryDriver
from stream.core.engine import Record
from stream.core.interleave import in_time_order
from tests.core.test_engine import CONTROL, INPUTS, NS, Log, config, history
from tests.factory import event, raw

# A fetch: per topic-partition, a run of record times (any order, repeats allowed).
runs = st.dictionaries(
    st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(0, 2)),
    st.lists(st.integers(0, 50), min_size=1, max_size=12),
    max_size=6,
)


def fetch(by_tp: dict[tuple[str, int], list[int]], order: list[int]) -> list[Record]:
    """The records of `by_tp`, one run after another in the order `order` picks (a permutation
    of the runs' indexes, as a broker's fetch returns them), offsets counting up per run."""
    items = list(by_tp.items())
    out = []
    for i in order:
        (topic, p), times = items[i]
        out.extend(Record(topic, p, off, t, None, None) for off, t in enumerate(times))
    return out


@settings(max_examples=300, deadline=None)
@given(runs, st.randoms(use_true_random=False))
def test_the_same_records_each_topic_partition_in_its_order(by_tp, rnd) -> None:
    order = list(range(len(by_tp)))
    rnd.shuffle(order)
    records = fetch(by_tp, order)
    out = in_time_order(records)
    assert sorted(out, key=id) == sorted(records, key=id)  # a permutation
    for tp in by_tp:
        assert [r.offset for r in out if (r.topic, r.partition) == tp] == list(
            range(len(by_tp[tp]))
        )


@settings(max_examples=300, deadline=None)
@given(runs, st.randoms(use_true_random=False))
def test_runs_in_time_order_come_out_interleaved_by_time(by_tp, rnd) -> None:
    by_tp = {tp: sorted(times) for tp, times in by_tp.items()}
    order = list(range(len(by_tp)))
    rnd.shuffle(order)
    records = fetch(by_tp, order)
    out = in_time_order(records)
    times = [r.timestamp_ms for r in out]
    assert times == sorted(times)
    # equal times keep their fetch order
    position = {id(r): i for i, r in enumerate(records)}
    for x, y in itertools.pairwise(out):
        if x.timestamp_ms == y.timestamp_ms:
            assert position[id(x)] < position[id(y)]


@given(runs)
def test_an_input_in_time_order_is_returned_unchanged(by_tp) -> None:
    by_tp = {tp: sorted(times) for tp, times in by_tp.items()}
    records = sorted(fetch(by_tp, list(range(len(by_tp)))), key=lambda r: r.timestamp_ms)
    out = in_time_order(records)
    assert len(out) == len(records)
    assert all(x is y for x, y in zip(out, records, strict=True))


def test_a_run_whose_times_go_backwards_keeps_its_offset_order() -> None:
    """A producer's clock skew: `a`'s second record is older than its first. It is merged as a
    run (never sorted): `b`'s record, older than `a`'s head, first, then `a` in offset order."""
    a = [Record("a", 0, 0, 30, None, None), Record("a", 0, 1, 10, None, None)]
    b = [Record("b", 0, 0, 20, None, None)]
    out = in_time_order(a + b)
    assert [(r.topic, r.offset) for r in out] == [("b", 0), ("a", 0), ("a", 1)]


# --- what it is for ------------------------------------------------------------------------


def _ms(iso: str) -> int:
    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000)


def _live_fetch() -> tuple[list[Record], dict[str, int], int]:
    """A live fetch of partition 0 as a broker returns it: the clicks' run (another customer's
    page views every 100 ms), then the purchases' run (a first purchase in the middle of the
    clicks' times). Returns (records, end offsets, wall clock)."""
    wall = _ms("2026-03-02T12:00:10Z")
    log = Log()
    clicks, purchases = f"{NS}.clicks", f"{NS}.purchases"
    records = []
    for i in range(10):
        occurred = datetime.fromtimestamp((wall - 990 + 100 * i) / 1000, UTC)
        evt = event("click", "browser", occurred_at=occurred.isoformat())
        rec = log.append(clicks, 0, b"browser", raw(evt))
        at = _ms(evt["occurred_at"])
        records.append(Record(rec.topic, 0, rec.offset, at, rec.key, rec.value))
    occurred = datetime.fromtimestamp((wall - 550) / 1000, UTC)
    evt = event("purchase", "buyer", occurred_at=occurred.isoformat(), tz="UTC")
    rec = log.append(purchases, 0, b"buyer", raw(evt))
    at = _ms(evt["occurred_at"])
    records.append(Record(rec.topic, 0, rec.offset, at, rec.key, rec.value))
    ends = {t: log.next.get((t, 0), 0) for t in INPUTS}
    return records, ends, wall


def _welcomed(driver: MemoryDriver) -> bool:
    return any(
        json.loads(v)["ritual"] == "post_purchase_welcome" for v in driver.decisions().values()
    )


def test_a_live_event_ahead_of_the_clock_is_decided_within_its_batch() -> None:
    """Read run after run, the purchase is read last: every input is then read to its end,
    the clock falls back to the wall clock minus the grace (1 s), behind the purchase, and the
    welcome waits for the next fetch. Interleaved by time, the clicks read after the purchase
    move the clock past it in the same batch."""
    records, ends, wall = _live_fetch()
    as_fetched = MemoryDriver(config("live"))
    as_fetched.pipe(records, highwaters=ends, wall_ms=wall)
    assert not _welcomed(as_fetched)  # waits for the next fetch

    interleaved = MemoryDriver(config("live"))
    interleaved.pipe(in_time_order(records), highwaters=ends, wall_ms=wall)
    assert _welcomed(interleaved)
    assert in_time_order(records)[-1].topic == f"{NS}.clicks"


def _by_run(records: list[Record]) -> list[Record]:
    """A broker's fetch order: each topic-partition's records as one run."""
    runs: dict[tuple[str, int], list[Record]] = {}
    for r in records:
        runs.setdefault((r.topic, r.partition), []).append(r)
    return [r for run in runs.values() for r in run]


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 60))
def test_replay_decisions_do_not_depend_on_the_read_order(seed: int, size: int) -> None:
    """The same replay read topic-partition by topic-partition (fetches of `size`) or
    interleaved by event time: the same decisions, byte for byte, and the same profiles."""
    log = Log()
    for evt in history(seed):
        rec = log.event(evt)
        log.records[-1] = Record(
            rec.topic, rec.partition, rec.offset, _ms(evt["occurred_at"]), rec.key, rec.value
        )
    log.declare()
    inputs = [r for r in log.records if r.topic != CONTROL]
    controls = [r for r in log.records if r.topic == CONTROL]
    outcomes = []
    for arrange in (_by_run, in_time_order):
        driver = MemoryDriver(config("replay"))
        driver.pipe(controls, wall_ms=0)
        for i in range(0, len(inputs), size):
            driver.pipe(arrange(inputs[i : i + size]), wall_ms=0)
        driver.settle()
        outcomes.append((dict(driver.customers), driver.decisions()))
    assert outcomes[0][1] == outcomes[1][1]
    # The profiles agree but for what the fold takes in read order: the window of the latest
    # event ids read (kept against redeliveries) and, when an older event is read after a newer one,
    # the instant a reactivation is dated from (read in time order, its true instant), the
    # last bits of the engagement score's floating-point sum, and the queue of events ahead
    # of the clock (a set, taken in time order whatever order it was queued in).
    states = [{k: _without_read_order(v) for k, v in o[0].items()} for o in outcomes]
    assert states[0] == states[1]
    assert len(states[0]) == len({evt["customer_id"] for evt in history(seed)})


def _without_read_order(raw_state: bytes) -> dict:
    state = json.loads(raw_state)
    state.pop("recent_ids", None)  # the latest ids read, a window in read order by design
    state.pop("reactivated_at", None)
    state["eng_acc"] = round(state.get("eng_acc", 0.0), 9)  # a float sum: rounding
    rituals = state.get("r", {})
    rituals["pending"] = sorted(rituals.get("pending", []), key=json.dumps)
    return state
