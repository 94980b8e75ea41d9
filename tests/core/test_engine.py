"""The per-partition batch engine, driven in-process with dicts and lists (no Kafka).

Invariants of the boundary between the engine and Kafka: batch boundaries change nothing,
re-delivered records fold nothing twice, decisions survive crashes (re-sent under the same
nudge_id, counted), one bad record never stops a partition.
"""

from __future__ import annotations

import itertools
import json
import random
import zlib
from datetime import timedelta

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.events import TOPIC_SUFFIX
from stream.core.clock import FollowClock, LiveClock, PartitionTime, ReplayClock, clock_for
from stream.core.driver import MemoryDriver
from stream.core.engine import EngineConfig, PartitionEngine, Record, by_partition, time_key
from stream.core.ingest import Limits
from stream.core.rituals import next_due
from stream.core.rules import Rules
from stream.core.state import CustomerState, Peek, decode, peek, to_ms
from stream.serving.projector import next_segment_change
from tests.factory import T0, event, raw

NS = "t"
PARTITIONS = 2
CONTROL = f"{NS}.clock"
INPUTS = {f"{NS}.{suffix}": suffix for suffix in TOPIC_SUFFIX.values()}
RULES = Rules(version="engine-test")
WALL = 4_102_444_800_000  # 2100-01-01: no generated event is "from the future"
LIMITS = Limits(max_future_skew=timedelta(days=365 * 200))


def config(mode: str = "replay") -> EngineConfig:
    return EngineConfig(RULES, clock_for(mode, grace_ms=1000), INPUTS, CONTROL, LIMITS)


def partition_of(customer: str) -> int:
    return zlib.crc32(customer.encode()) % PARTITIONS


class Log:
    """Records appended to topic-partitions with their offsets, like a broker."""

    def __init__(self) -> None:
        self.records: list[Record] = []
        self.next: dict[tuple[str, int], int] = {}

    def append(self, topic: str, partition: int, key: bytes | None, value: bytes) -> Record:
        offset = self.next.get((topic, partition), 0)
        self.next[(topic, partition)] = offset + 1
        record = Record(topic, partition, offset, 0, key, value)
        self.records.append(record)
        return record

    def event(self, evt: dict) -> Record:
        topic = f"{NS}.{TOPIC_SUFFIX[evt['type']]}"
        cid = evt["customer_id"]
        return self.append(topic, partition_of(cid), cid.encode(), raw(evt))

    def declare(self, final: int | None = None) -> list[Record]:
        """A replay declaration per partition: where each input ends."""
        out = []
        for p in range(PARTITIONS):
            ends = {t: self.next.get((t, p), 0) for t in INPUTS}
            body = {"kind": "replay", "replay_id": "r1", "ends": ends, "final": final}
            out.append(self.append(CONTROL, p, None, json.dumps(body).encode()))
        return out


def history(seed: int, customers: int = 6, events: int = 120) -> list[dict]:
    """Persona-like events in time order: purchases, reviews, surveys, support, loyalty."""
    rng = random.Random(seed)
    kinds = [
        ("click", {}),
        ("purchase", {}),
        ("review", {"rating": 1}),
        ("review", {"rating": 5}),
        ("survey", {"survey": "nps", "score": 10}),
        ("survey", {"survey": "nps", "score": 2}),
        ("support_contact", {"status": "opened", "complaint": True}),
        ("support_contact", {"status": "resolved", "complaint": True}),
        ("loyalty", {"action": "tier_changed", "tier": "gold"}),
    ]
    out, day = [], 0.0
    for i in range(events):
        day += 40 if rng.random() < 0.05 else rng.random() * 2  # now and then a long gap
        kind, fields = rng.choice(kinds)
        cust = f"cust-{rng.randrange(customers)}"
        out.append(event(kind, cust, days=day, event_id=f"e-{seed}-{i}", **fields))
    return out


def replay_log(seed: int, **kw: int) -> Log:
    log = Log()
    for evt in history(seed, **kw):
        log.event(evt)
    log.declare()
    return log


def run(records: list[Record], cuts: list[int] | None = None, mode: str = "replay") -> MemoryDriver:
    driver = MemoryDriver(config(mode))
    bounds = [0, *sorted(set(cuts or [])), len(records)]
    for a, b in itertools.pairwise(bounds):
        if b > a:
            driver.pipe(records[a:b], wall_ms=WALL)
    driver.settle()  # the worker at rest: acknowledged decisions cleared from the outboxes
    return driver


def summary(driver: MemoryDriver) -> tuple[dict[bytes, bytes], dict[str, bytes]]:
    """(states, decisions) at rest: acknowledged decisions cleared from the outboxes."""
    driver.settle()
    return dict(driver.customers), driver.decisions()


# --- clock policies ---------------------------------------------------------------------------


def test_clock_policies_are_chosen_once_by_mode() -> None:
    assert isinstance(clock_for("live", grace_ms=5), LiveClock)
    assert isinstance(clock_for("follow"), FollowClock)
    assert isinstance(clock_for("replay"), ReplayClock)
    with pytest.raises(ValueError):
        clock_for("sometimes")


def test_the_partition_clock_record_round_trips() -> None:
    log = replay_log(3)
    driver = run(log.records)
    for p in range(PARTITIONS):
        stored = json.loads(driver.control[time_key(p)])
        assert PartitionTime.from_json(stored).to_json() == stored
        assert stored["replay_done"] is True


# --- batching ---------------------------------------------------------------------------------


def test_a_replay_decides_and_reports_completion_per_partition() -> None:
    driver = run(replay_log(1).records)
    assert driver.decisions(), "the history triggers rituals"
    statuses = [o for o in driver.sent if o.name == "replay_status"]
    assert sorted(json.loads(o.value or b"")["partition"] for o in statuses) == [0, 1]
    assert all(not decode(v).outbox for v in driver.customers.values())  # all acknowledged


def test_a_replay_status_lost_in_a_crash_is_said_again_after_the_restart() -> None:
    """kill -9 after the clock record saying "done" reached the changelog but before the
    status itself was sent: the restarted worker must say it again, or `engage replay` hangs."""
    driver = run(replay_log(1).records)
    assert all(json.loads(driver.control[time_key(p)])["replay_done"] for p in range(PARTITIONS))
    driver.sent.clear()  # the statuses died in the producer's buffer
    driver.crash()
    driver.tick(range(PARTITIONS), wall_ms=WALL)  # the replay-mode re-check after the restart
    statuses = [json.loads(o.value or b"") for o in driver.sent if o.name == "replay_status"]
    assert sorted(s["partition"] for s in statuses) == list(range(PARTITIONS))
    assert {s["replay_id"] for s in statuses} == {"r1"}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), data=st.data())
def test_any_batching_gives_the_same_states_and_decisions(seed: int, data: st.DataObject) -> None:
    records = replay_log(seed, events=60).records
    cuts = data.draw(st.lists(st.integers(0, len(records)), max_size=12))
    whole = summary(run(records))
    assert summary(run(records, cuts)) == whole


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), data=st.data())
def test_redelivering_a_suffix_changes_nothing(seed: int, data: st.DataObject) -> None:
    """Whatever the consumer's commit lag, records already folded are skipped."""
    log = replay_log(seed, events=60)
    records = log.records
    driver = run(records, data.draw(st.lists(st.integers(0, len(records)), max_size=5)))
    before = summary(driver)
    sent = len(driver.sent)
    start = data.draw(st.integers(0, len(records)))
    restart = data.draw(st.booleans())
    if restart:
        driver.crash()  # a new worker: engines rebuilt from the tables
    driver.pipe(records[start:], wall_ms=WALL)
    assert summary(driver) == before
    assert [o for o in driver.sent[sent:] if o.name in {"decisions", "nudges"}] == []


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), data=st.data())
def test_any_interleaving_of_topics_and_any_crashes_give_the_same_decisions(
    seed: int, data: st.DataObject
) -> None:
    """Like a consumer fetching topic-partitions in any order, restarting anywhere."""
    records = replay_log(seed, events=50).records
    whole = summary(run(records))
    queues: dict[tuple[str, int], list[Record]] = {}
    for r in records:
        queues.setdefault((r.topic, r.partition), []).append(r)
    order: list[Record] = []
    while queues:
        key = data.draw(st.sampled_from(sorted(queues)))
        n = data.draw(st.integers(1, 20))
        order.extend(queues[key][:n])
        queues[key] = queues[key][n:]
        if not queues[key]:
            del queues[key]
    driver = MemoryDriver(config())
    i = 0
    while i < len(order):
        n = data.draw(st.integers(1, 40))
        driver.pipe(order[i : i + n], wall_ms=WALL)
        i += n
        if data.draw(st.booleans()):
            driver.crash()
    driver.tick(range(PARTITIONS), wall_ms=WALL)
    driver.settle()
    assert driver.decisions() == whole[1]
    # The same states, but for what the fold takes in read order by design (the decayed
    # activity's rounding, the reactivation gap, the recent-id window's order).
    read_order = {"eng_acc", "reactivated_at", "recent_ids"}
    got = {k: msgspec.structs.asdict(decode(v)) for k, v in driver.customers.items()}
    want = {k: msgspec.structs.asdict(decode(v)) for k, v in whole[0].items()}
    assert got.keys() == want.keys()
    for k in got:
        assert {f for f in got[k] if got[k][f] != want[k][f]} <= read_order


def test_a_customer_woken_early_is_woken_again_at_its_moved_timer() -> None:
    """The inactivity timer moves later with every event; the early wake-up re-registers."""
    log = Log()
    log.event(event("click", "idle", days=0))
    log.event(event("click", "idle", days=20))  # moves "we noticed" from day 30 to day 50
    log.declare(final=to_ms(T0 + timedelta(days=60)))
    driver = run(log.records)
    rituals = [json.loads(v)["ritual"] for v in driver.decisions().values()]
    assert rituals == ["we_noticed"]


def test_a_crash_before_acknowledgement_resends_under_the_same_nudge_id() -> None:
    log = Log()
    cid = "rita"
    log.event(event("purchase", cid, days=0, order_id="o-1"))
    log.declare()
    driver = MemoryDriver(config())
    driver.pipe(log.records, wall_ms=WALL, ack=False)
    first = driver.decisions()
    assert first  # the welcome at least
    assert decode(driver.customers[cid.encode()]).outbox  # not acknowledged yet
    driver.crash()
    driver.tick([partition_of(cid)], wall_ms=WALL)  # the partition is taken over
    resent = [o for o in driver.sent if o.name == "decisions"]
    assert len(resent) == 2 * len(first)
    assert {o.nudge_id for o in resent} == set(first)
    assert driver.counts[("resent",)] == len(first)
    assert decode(driver.customers[cid.encode()]).outbox  # acknowledged: cleared next batch
    driver.settle()
    assert not decode(driver.customers[cid.encode()]).outbox
    driver.crash()
    driver.tick([partition_of(cid)], wall_ms=WALL)
    assert len([o for o in driver.sent if o.name == "decisions"]) == 2 * len(first)


class SegmentWakes:
    """The worker's projection, as far as the due index sees it: segment change wake-ups."""

    def enqueue(self, customer_id: str, state: bytes | None, clock_ms: int) -> None:
        pass

    def next_change(self, state: CustomerState | Peek, clock_ms: int) -> int | None:
        return next_segment_change(state, clock_ms)


def stored_unacknowledged(seed: int) -> MemoryDriver:
    """A driver whose stored customers have pending timers, queued events and outboxes."""
    records = replay_log(seed, events=80).records
    driver = MemoryDriver(config(), projection=SegmentWakes())
    driver.pipe(records[: len(records) // 2], wall_ms=WALL)
    driver.pipe(records[len(records) // 2 :], wall_ms=WALL, ack=False)
    return driver


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000))
def test_a_peek_holds_what_the_due_index_needs_of_a_state(seed: int) -> None:
    driver = stored_unacknowledged(seed)
    assert any(decode(v).outbox for v in driver.customers.values())
    assert any(next_due(decode(v).r) is not None for v in driver.customers.values())
    for value in driver.customers.values():
        state, pk = decode(value), peek(value)
        assert (pk.customer_id, pk.partition) == (state.customer_id, state.partition)
        assert pk.due == next_due(state.r)
        assert bool(pk.outbox) == bool(state.outbox)
        for days in (0, 3, 20, 45, 100, 400):
            clock = state.last_seen + days * 86_400_000
            assert next_segment_change(pk, clock) == next_segment_change(state, clock)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), data=st.data())
def test_recovering_in_any_chunks_gives_the_index_and_resends_of_a_whole_recovery(
    seed: int, data: st.DataObject
) -> None:
    """A restart reads a large table a chunk at a time, every partition mixed in with
    `memory://`: the due index and the re-sent decisions are those of reading it whole."""
    driver = stored_unacknowledged(seed)
    stored = [*driver.customers.items(), (b"garbage", b"{not a state")]
    stored = data.draw(st.permutations(stored))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stored)), max_size=6)))
    for p in range(PARTITIONS):
        time = PartitionTime.from_json(json.loads(driver.control[time_key(p)]))
        whole = PartitionEngine(p, config(), driver.customers, time=time, projection=SegmentWakes())
        slices, bad = by_partition(stored)
        assert bad == {"malformed": 1}
        at_once = [whole.recover(slices.get(p, [])), whole.recovered()]
        chunked = PartitionEngine(
            p, config(), driver.customers, time=time, projection=SegmentWakes()
        )
        results = []
        for a, b in itertools.pairwise([0, *cuts, len(stored)]):
            for q, part in by_partition(stored[a:b])[0].items():
                if q == p:
                    results.append(chunked.recover(part))
        results.append(chunked.recovered())
        assert chunked.index._wake == whole.index._wake
        expected = {}  # what registering each whole decoded state would give
        for value in driver.customers.values():
            state = decode(value)
            if state.partition == p:
                wakes = [next_due(state.r), next_segment_change(state, time.clock)]
                if any(w is not None for w in wakes):
                    expected[state.customer_id] = min(w for w in wakes if w is not None)
        assert whole.index._wake == expected
        sends = sorted((o.name, o.nudge_id or "") for r in at_once for o in r.outputs)
        assert sorted((o.name, o.nudge_id or "") for r in results for o in r.outputs) == sends
        assert sum(r.counts[("resent",)] for r in results) == sum(
            len(decode(v).outbox) for v in driver.customers.values() if decode(v).partition == p
        )


def test_lost_writes_are_redone_from_the_redelivered_records() -> None:
    """A kill -9 after processing but before the changelog got the batch: the consumer
    re-reads from its committed offset and the states come out as without the crash."""
    records = replay_log(7).records
    clean = summary(run(records))
    driver = MemoryDriver(config())
    half = len(records) // 2
    driver.pipe(records[:half], wall_ms=WALL)
    snapshot = (dict(driver.customers), dict(driver.control), len(driver.sent))
    driver.pipe(records[half : half + 20], wall_ms=WALL, ack=False)
    driver.customers, driver.control = dict(snapshot[0]), dict(snapshot[1])  # writes lost
    driver.crash()
    driver.pipe(records[half - 10 :], wall_ms=WALL)  # committed offset lags behind
    assert summary(driver)[0] == clean[0]
    assert summary(driver)[1] == clean[1]


def test_an_erased_customer_stays_erased_when_its_records_are_read_again() -> None:
    """A crash after an erasure, before the input offsets were committed: the consumer re-reads
    the customer's events, which must not bring it back; a later event does."""
    erasures = f"{NS}.erasures"
    cfg = EngineConfig(RULES, clock_for("follow", grace_ms=1000), INPUTS, CONTROL, LIMITS,
                       erasures_topic=erasures)  # fmt: skip
    log = Log()
    gone = [log.event(event(kind, "gone", days=d)) for d, kind in ((0, "purchase"), (1, "click"))]
    p = gone[0].partition
    request = {"customer_id": "gone", "request_id": "r-1",
               "requested_at": "2026-01-01T00:00:00Z"}  # fmt: skip
    erase = log.append(erasures, p, b"gone", json.dumps(request).encode())
    driver = MemoryDriver(cfg)
    driver.pipe([*gone, erase], wall_ms=WALL)
    assert b"gone" not in driver.customers
    record = json.loads(driver.control[time_key(p)])
    assert "gone" not in json.dumps(record)  # only a digest of the id is kept
    driver.crash()
    driver.pipe(gone, wall_ms=WALL)  # re-read from a committed offset behind the erasure
    assert b"gone" not in driver.customers
    assert driver.counts[("redelivered", gone[0].topic)] == 1
    back = log.event(event("click", "gone", days=3))  # the customer comes back later
    driver.pipe([back], wall_ms=WALL)
    back_state = decode(driver.customers[b"gone"])
    assert back_state.counts == {"click": 1} and back_state.orders == 0  # only the new event

    # An engine started where the committed offsets passed the erased records drops the guard.
    def stored() -> PartitionTime:
        return PartitionTime.from_json(json.loads(driver.control[time_key(p)]))

    guard = stored().erased
    assert list(guard.values()) == [{"purchases": 0, "clicks": 0}]
    past = {topic: log.next.get((topic, p), 0) for topic in INPUTS}
    assert PartitionEngine(p, cfg, {}, time=stored(), positions=past).time.erased == {}
    behind = {topic: 0 for topic in INPUTS}
    assert PartitionEngine(p, cfg, {}, time=stored(), positions=behind).time.erased == guard


def test_the_same_event_id_twice_is_folded_once() -> None:
    log = Log()
    evt = event("purchase", "dup", days=0)
    log.event(evt)
    log.event(evt)  # a producer retry: same id, new offset
    log.declare()
    driver = run(log.records)
    state = decode(driver.customers[b"dup"])
    assert state.orders == 1
    assert driver.counts[("duplicate", "purchase")] == 1
    assert state.offsets["purchases"] == 1


def test_a_failing_record_goes_to_the_dlq_and_the_partition_goes_on(monkeypatch) -> None:
    log = Log()
    log.event(event("click", "ok-1", days=0))
    bad = log.event(event("click", "boom", days=0.1))
    log.event(event("click", "ok-2", days=0.2))
    import stream.core.engine as engine_module

    real = engine_module.fold

    def fold(state, evt, rules):
        if evt.customer_id == "boom":
            raise ZeroDivisionError("secret payload text")
        return real(state, evt, rules)

    monkeypatch.setattr(engine_module, "fold", fold)
    driver = run(log.records, mode="follow")
    dlq = [o for o in driver.sent if o.name == "dlq"]
    assert len(dlq) == 1
    headers = dict(dlq[0].headers or [])
    assert headers["engage.reason"] == b"processing_error"
    assert b"ZeroDivisionError" in headers["engage.message"]
    assert b"secret" not in headers["engage.message"]
    assert headers["engage.original_offset"] == str(bad.offset).encode()
    assert set(driver.customers) == {b"ok-1", b"ok-2"}


def test_bad_messages_are_dead_lettered_with_their_reason() -> None:
    log = Log()
    log.append(f"{NS}.clicks", 0, b"k", b"{not json")
    driver = run(log.records, mode="follow")
    (out,) = driver.sent
    assert dict(out.headers or [])["engage.reason"] == b"malformed_json"
    assert driver.counts[("dlq", "malformed_json")] == 1


def test_live_clock_with_highwaters_decides_timers_once_caught_up() -> None:
    log = Log()
    start = WALL - 10 * 86_400_000
    stamp = msgspec.json.decode(json.dumps(start // 1000))
    from datetime import UTC, datetime

    when = datetime.fromtimestamp(stamp, UTC).isoformat()
    log.event(event("purchase", "liv", occurred_at=when, order_id="o-9"))
    driver = MemoryDriver(config("live"))
    highwaters = {t: log.next.get((t, partition_of("liv")), 0) for t in INPUTS}
    driver.pipe(log.records, highwaters=highwaters, wall_ms=WALL)
    rituals = {json.loads(v)["ritual"] for v in driver.decisions().values()}
    assert "post_purchase_welcome" in rituals
    assert "three_days_later" in rituals  # due 3 days after, long past the wall clock


def test_state_stays_bounded_for_a_busy_customer() -> None:
    """20 events each, half of them complaints, surveys and reviews: still a few KiB (the
    persona traffic's typical size is measured by `make bench`)."""
    driver = run(replay_log(11, customers=3, events=60).records)
    sizes = [len(v) for v in driver.customers.values()]
    assert max(sizes) < 2560, sizes


def test_engine_needs_no_store_writes_to_read_its_own_batch() -> None:
    log = Log()
    for i in range(3):
        log.event(event("click", "same", days=i * 0.01))
    engine = PartitionEngine(partition_of("same"), config("follow"), {})
    result = engine.process(log.records, wall_ms=WALL)
    assert list(result.states) == [b"same"]  # one write for three events
    assert decode(result.states[b"same"]).counts["click"] == 3


def test_write_behind_writes_an_erasure_with_its_receipt_and_a_later_change_at_rest() -> None:
    """Held-back changes are written when an erasure comes (its tombstone and guard go with
    its receipt), and otherwise only when the protocol must (`settle`: the worker at rest)."""
    erasures = f"{NS}.erasures"
    cfg = EngineConfig(RULES, clock_for("follow", grace_ms=1000), INPUTS, CONTROL, LIMITS,
                       erasures_topic=erasures)  # fmt: skip
    log = Log()
    first = log.event(event("purchase", "gone", days=0))
    p = first.partition
    driver = MemoryDriver(cfg, write_behind=True)
    driver.pipe([first], wall_ms=WALL)
    assert driver.customers == {} and driver.control == {}, "held back"
    driver.settle()
    assert b"gone" in driver.customers and time_key(p) in driver.control
    driver.pipe([log.event(event("click", "gone", days=1))], wall_ms=WALL)
    assert "click" not in decode(driver.customers[b"gone"]).counts, "the click is held back"
    request = {"customer_id": "gone", "request_id": "r-1",
               "requested_at": "2026-01-01T00:00:00Z"}  # fmt: skip
    erase = log.append(erasures, p, b"gone", json.dumps(request).encode())
    driver.pipe([erase], wall_ms=WALL)
    assert b"gone" not in driver.customers
    assert PartitionTime.from_json(json.loads(driver.control[time_key(p)])).erased
    assert [o.name for o in driver.sent][-1] == "erasure_receipts"
