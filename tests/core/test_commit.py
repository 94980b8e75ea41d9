"""The commit protocol (`stream.core.commit`) through the broker-less worker
(`stream.core.testing`): crashes between any two steps, redelivery, rebalances, skipped
offsets, and acknowledgements folded into the next batch's write. In-process, in seconds."""

from __future__ import annotations

import functools
from collections import Counter

import pytest

from stream.core.commit import STEPS, Checkpoint, Hooks, Table, drive, next_commit
from stream.core.engine import Record
from stream.core.state import decode
from stream.core.testing import Crash, SimBroker, SimWorker, decisions
from tests.core.test_engine import PARTITIONS, WALL, config, replay_log

ALL = range(PARTITIONS)


@functools.cache
def _history(seed: int, events: int) -> list[Record]:
    return replay_log(seed, events=events).records  # built once: the factory numbers orders


def loaded(seed: int, events: int = 80) -> SimBroker:
    """A broker holding a replay's input: persona history plus the replay declarations."""
    broker = SimBroker()
    for record in _history(seed, events):
        broker.append(record.topic, record.partition, record.key, record.value)
    return broker


def at_rest(broker: SimBroker) -> tuple[dict[str, set[bytes]], dict[int, dict[bytes, bytes]]]:
    """(decisions by nudge_id, customer tables as their changelogs rebuild them)."""
    tables = {p: broker.table(Table.CUSTOMERS, p) for p in ALL}
    return decisions(broker), tables


def reference(
    seed: int, mode: str = "replay", **kw: int
) -> tuple[dict[str, set[bytes]], dict[int, dict[bytes, bytes]]]:
    broker = loaded(seed)
    SimWorker(broker, config(mode), partitions=ALL, wall_ms=WALL, **kw).run()
    return at_rest(broker)


def test_the_steps_run_in_their_order_for_every_batch() -> None:
    seen: list[str] = []
    broker = loaded(1, events=20)
    worker = SimWorker(broker, config(), partitions=ALL, wall_ms=WALL)
    worker.checkpoint.hooks.step = seen.append
    assert worker.poll()
    assert tuple(seen) == STEPS


@pytest.mark.parametrize("mode", ["replay", "follow"])
@pytest.mark.parametrize("batch", [1, 2, 5])
@pytest.mark.parametrize("step", STEPS)
def test_a_crash_after_any_step_loses_no_event_and_repeats_no_decision_under_another_id(
    step: str, batch: int, mode: str
) -> None:
    """kill -9 right after `step` of batch `batch` (offsets committed every other batch, so
    the restart re-reads records already folded); the new worker starts from what the broker
    holds. The end is the crash-free run's: the same decisions (re-sends carry the same
    nudge_id and bytes), the same customer states in the changelog."""
    want = reference(3, mode, commit_every=2)
    broker = loaded(3)
    first = SimWorker(broker, config(mode), partitions=ALL, wall_ms=WALL, commit_every=2,
                      crash_at=(batch, step))  # fmt: skip
    with pytest.raises(Crash):
        first.run()
    SimWorker(broker, config(mode), partitions=ALL, wall_ms=WALL, commit_every=2).run()
    got = at_rest(broker)
    assert got[0].keys() == want[0].keys()
    assert all(len(values) == 1 for values in got[0].values()), "one value per nudge_id"
    assert got[0] == want[0]
    assert got[1] == want[1]


def test_two_crashes_in_a_row_and_a_lagging_commit_give_the_same_end() -> None:
    want = reference(5, commit_every=4)
    broker = loaded(5)
    for crash_at in [(3, "queue"), (2, "flush")]:
        with pytest.raises(Crash):
            SimWorker(broker, config(), partitions=ALL, wall_ms=WALL, commit_every=4,
                      crash_at=crash_at).run()  # fmt: skip
    SimWorker(broker, config(), partitions=ALL, wall_ms=WALL, commit_every=4).run()
    assert at_rest(broker) == want


def test_a_rebalance_mid_stream_hands_partitions_over_without_loss_or_new_ids() -> None:
    want = reference(7)
    broker = loaded(7)
    one = SimWorker(broker, config(), partitions=ALL, wall_ms=WALL, fetch=10)
    for _ in range(4):
        one.poll()
    one.revoke([1])
    two = SimWorker(broker, config(), partitions=[1], wall_ms=WALL, fetch=10)
    for _ in range(3):
        one.poll()
        two.poll()
    two.revoke([1])  # and back again
    one.assign([1])
    one.run()
    assert at_rest(broker) == want


def test_records_past_an_offset_the_fetcher_skipped_are_held_back_and_read_again() -> None:
    want = reference(9)
    broker = loaded(9)
    worker = SimWorker(broker, config(), partitions=ALL, wall_ms=WALL, fetch=4)
    known = worker.checkpoint.positions.expected  # the topic-partitions with a known position
    while not (ahead := [tp for tp in known if broker.end(*tp) > worker.positions[tp] + 3]):
        assert worker.poll()
    skipped = ahead[0]
    worker.positions[skipped] += 3  # the fetcher dropped three records of one partition
    worker.run()
    assert at_rest(broker) == want
    assert worker.positions[skipped] == broker.end(*skipped)


def test_acknowledged_decisions_leave_the_outbox_in_the_next_batch_write_not_their_own() -> None:
    broker = loaded(11)
    worker = SimWorker(broker, config(), partitions=ALL, wall_ms=WALL, fetch=10)
    worker.run()
    assert decisions(broker), "the history decides"
    per_batch = Counter((batch, table, key) for batch, table, key in worker.written)
    assert max(per_batch.values()) == 1, "a customer is written at most once per batch"
    tables = {p: broker.table(Table.CUSTOMERS, p) for p in ALL}
    assert all(not decode(raw).outbox for t in tables.values() for raw in t.values())


@pytest.mark.parametrize("polls", [3, 6, 9])
def test_a_clean_stop_releases_acknowledged_decisions_and_a_restart_sends_none_again(
    polls: int,
) -> None:
    broker = loaded(13)
    first = SimWorker(broker, config("follow"), partitions=ALL, wall_ms=WALL, fetch=15)
    for _ in range(polls):
        first.poll()
    first.stop()
    sent = len(broker.records("decisions"))
    assert sent, "decided before the stop"
    tables = {p: broker.table(Table.CUSTOMERS, p) for p in ALL}
    assert all(not decode(raw).outbox for t in tables.values() for raw in t.values())
    second = SimWorker(broker, config("follow"), partitions=ALL, wall_ms=WALL, fetch=15)
    assert len(broker.records("decisions")) == sent  # nothing re-sent at the start
    second.run()
    got = decisions(broker)
    assert all(len(values) == 1 for values in got.values())
    assert sum(len(v) for v in got.values()) == len(broker.records("decisions"))  # none twice


def test_a_decision_whose_send_failed_stays_in_the_outbox() -> None:
    broker = loaded(11, events=30)
    worker = SimWorker(broker, config("follow"), partitions=ALL, wall_ms=WALL, fetch=20,
                       commit_every=9)  # fmt: skip
    worker.poll()  # decides (the clock follows the events)
    answers, worker.answers = worker.answers, []
    assert answers
    for done in answers:
        done(False)  # Kafka refused every send of the batch
    worker.run()
    tables = {p: broker.table(Table.CUSTOMERS, p) for p in ALL}
    outboxes = [s.nudge_id for t in tables.values() for raw in t.values()
                for s in decode(raw).outbox]  # fmt: skip
    assert outboxes, "kept for the next owner to re-send"
    assert set(outboxes) <= set(decisions(broker))


def test_an_unknown_step_is_refused() -> None:
    with pytest.raises(ValueError, match="no protocol step"):
        SimWorker(SimBroker(), config(), partitions=ALL, crash_at=(1, "write"))


def test_the_commit_rule_never_passes_an_offset_not_acknowledged() -> None:
    assert next_commit([5, 6, 8], 5) == (7, [8])
    assert next_commit([6, 7], 5) == (None, [6, 7])
    assert next_commit([3, 3, 4], None) == (5, [])
    assert next_commit([], 2) == (None, [])


def test_drive_refuses_a_port_that_waits() -> None:
    import asyncio

    async def waits() -> None:
        await asyncio.get_event_loop_policy().new_event_loop().create_future()

    with pytest.raises(RuntimeError, match="waited"):
        drive(waits())


def test_hooks_default_to_doing_nothing() -> None:
    hooks = Hooks()
    hooks.step("split")
    assert isinstance(Checkpoint.__doc__, str)


# --- write-behind ------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["replay", "follow"])
@pytest.mark.parametrize("batch", [2, 3, 4])
@pytest.mark.parametrize("step", STEPS)
def test_write_behind_a_crash_after_any_step_gives_the_crash_free_end(
    step: str, batch: int, mode: str
) -> None:
    """State writes every third batch: a crash loses up to three batches of changes, whose
    records were never acknowledged; the restart reads them again and ends where a worker
    writing every batch ends (same decisions, bytes and tables)."""
    want = reference(3, mode, commit_every=2)
    broker = loaded(3)
    first = SimWorker(broker, config(mode), partitions=ALL, wall_ms=WALL, commit_every=2,
                      write_every=3, crash_at=(batch, step))  # fmt: skip
    with pytest.raises(Crash):
        first.run()
    SimWorker(broker, config(mode), partitions=ALL, wall_ms=WALL, commit_every=2,
              write_every=3).run()  # fmt: skip
    got = at_rest(broker)
    assert all(len(values) == 1 for values in got[0].values()), "one value per nudge_id"
    assert got == want


def test_write_behind_acknowledges_offsets_only_once_their_states_are_written() -> None:
    broker = loaded(3)
    worker = SimWorker(broker, config("follow"), partitions=ALL, wall_ms=WALL, fetch=10,
                       write_every=3)  # fmt: skip
    for _ in range(2):
        assert worker.poll()
    assert worker.written == [], "changes held back"
    assert broker.committed == {}, "no offset passes a record whose state is not written"
    assert len(worker.checkpoint.held) == 20
    assert worker.poll()  # the third batch writes all three batches' changes
    assert worker.checkpoint.held == []
    per_key = Counter((table, key) for _batch, table, key in worker.written)
    assert per_key and max(per_key.values()) == 1, "each customer once per write"
    assert sum(broker.committed.values()) == 30


def test_write_behind_writes_each_busy_customer_once_per_interval() -> None:
    every = SimWorker(loaded(5), config("follow"), partitions=ALL, wall_ms=WALL, fetch=5)
    behind = SimWorker(loaded(5), config("follow"), partitions=ALL, wall_ms=WALL, fetch=5,
                       write_every=8)  # fmt: skip
    every.run()
    behind.run()
    customers = [w for w in behind.written if w[1] is Table.CUSTOMERS]
    assert len(customers) < len([w for w in every.written if w[1] is Table.CUSTOMERS]) / 2
    assert at_rest(behind.broker) == at_rest(every.broker)


def test_write_behind_hands_partitions_over_and_stops_cleanly() -> None:
    want = reference(7)
    broker = loaded(7)
    one = SimWorker(broker, config(), partitions=ALL, wall_ms=WALL, fetch=10, write_every=4)
    for _ in range(3):
        one.poll()
    one.revoke([1])  # its changes held since the last write go in `release`
    assert not [r for r in one.checkpoint.held if r.partition == 1]
    two = SimWorker(broker, config(), partitions=[1], wall_ms=WALL, fetch=10, write_every=4)
    for _ in range(3):
        one.poll()
        two.poll()
    two.stop()
    one.assign([1])
    one.run()
    assert at_rest(broker) == want


def test_write_behind_keeps_unwritten_states_past_the_cache_bound() -> None:
    """An engine caching two states keeps every unwritten one (the store lags them), and a
    partition with half its bound unwritten writes at once."""
    from dataclasses import replace

    small = replace(config("follow"), cached_states=4)
    want = reference(5, "follow")
    broker = loaded(5)
    worker = SimWorker(broker, small, partitions=ALL, wall_ms=WALL, fetch=6, write_every=50)
    worker.poll()
    assert worker.written, "two unwritten customers on a partition force its write"
    for engine in worker.checkpoint.engines.values():
        assert engine.pending < 2
    worker.run()
    assert at_rest(broker) == want
