"""The paths from Faust's fetcher to the engines (`stream.adapter.drain`), in-process.

The direct drain: one fetch (a fake `getmany` answer of real aiokafka records) goes to the sink
in one call, only the records it processed are acknowledged (what Faust's commit reads), records
already read and fetches overtaken by a rebalance are dropped, other topics take Faust's path,
and a rebalance waits for the batch in progress.

The lean hand-over: the fetcher calls
`consumer.wait_first(callback(message), consumer.suspend_flow.wait())` for every message; these
tests call it the same way with hand-overs that complete at once, that wait, that fail, and that
a rebalance (the suspend flag) abandons. The worker tests run the direct drain against Kafka.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka.structs import ConsumerRecord, TopicPartition

from stream.adapter.app import create_app
from stream.adapter.drain import DirectConsumer, LeanConsumer, _resume
from stream.adapter.faust_private import install_commit_rule
from stream.core.engine import Record
from stream.settings import Settings


def consumer(**overrides: Any) -> Any:
    """A worker's consumer, never started (no I/O)."""
    settings = Settings(broker="kafka://127.0.0.1:1", redis_enabled=False, **overrides)
    return create_app(settings).app.consumer


def test_the_worker_uses_the_direct_drain_unless_told_otherwise() -> None:
    assert isinstance(consumer(), DirectConsumer)
    lean = consumer(drain="lean")
    assert isinstance(lean, LeanConsumer) and not isinstance(lean, DirectConsumer)
    assert not isinstance(consumer(drain="faust"), LeanConsumer)


def _record(topic: str, partition: int, offset: int) -> ConsumerRecord:
    return ConsumerRecord(topic, partition, offset, 1_700_000_000_000 + offset, 0,
                          f"c{offset}".encode(), b"{}", None, 2, 2, [("h", b"v")])  # fmt: skip


def _direct(fetched: dict[TopicPartition, list[ConsumerRecord]],
            keep: Any = lambda r: True) -> tuple[Any, list[list[Record]], list[Any]]:  # fmt: skip
    """A never-started direct consumer whose next fetch answers `fetched`; the sink records
    each batch and reports as processed the records `keep` accepts."""
    c = consumer()
    batches: list[list[Record]] = []
    through_faust: list[Any] = []

    async def sink(records: list[Record]) -> list[Record]:
        batches.append(records)
        done = [r for r in records if keep(r)]
        if len(done) < len(records):  # the shell seeks back to the first held-back record
            held = next(r for r in records if not keep(r))
            c._read_offset[TopicPartition(held.topic, held.partition)] = held.offset
        return done

    async def wait_next_records(timeout: float) -> Any:
        return fetched, set(fetched)

    async def callback(message: Any) -> None:
        through_faust.append(message)

    async def earliest_offsets(*tps: TopicPartition) -> dict[TopicPartition, int]:
        return {tp: 0 for tp in tps}  # every partition starts at 0

    c.earliest_offsets = earliest_offsets
    c.assignment = lambda: set()  # nothing to anchor (see test_faust_private's anchor test)
    c.direct_topics = frozenset({"in.clicks", "in.clock"})
    c.direct_sink = sink
    c._wait_next_records = wait_next_records
    c.highwater = lambda tp: 100
    c.callback = callback
    return c, batches, through_faust


def test_a_fetch_goes_to_the_sink_in_one_call_and_processed_records_are_acknowledged() -> None:
    clicks0, clicks1 = TopicPartition("in.clicks", 0), TopicPartition("in.clicks", 1)
    changelog = TopicPartition("app-customers-changelog", 0)
    fetched = {
        clicks0: [_record("in.clicks", 0, o) for o in (10, 11, 12, 13)],
        clicks1: [_record("in.clicks", 1, o) for o in (5, 6)],
        changelog: [_record("app-customers-changelog", 0, 0)],
    }
    # The shell holds back offset 12 of partition 0 (as after a hole): 13 is processed.
    c, batches, through_faust = _direct(fetched, keep=lambda r: (r.partition, r.offset) != (0, 12))
    c._committed_offset[clicks0] = 10
    c._read_offset[clicks1] = 6  # offset 5 was read before: dropped, as Faust drops it
    install_commit_rule()

    asyncio.run(c.fetch_once())

    assert len(batches) == 1  # one call for the whole fetch
    # interleaved by record time (`in_time_order`): partition 1's offset 6 is the oldest
    assert [(r.partition, r.offset) for r in batches[0]] == [(1, 6), (0, 10), (0, 11), (0, 12),
                                                             (0, 13)]  # fmt: skip
    first = batches[0][1]
    assert (first.topic, first.key, first.value, first.headers) == (
        "in.clicks",
        b"c10",
        b"{}",
        (("h", b"v"),),
    )
    assert first.timestamp_ms == 1_700_000_000_010
    assert [m.offset for m in through_faust] == [0]  # the changelog took Faust's path
    # Acknowledged under the client's own partition objects, only what was processed:
    assert all(isinstance(tp, TopicPartition) for tp in c._acked)
    assert sorted(c._acked[clicks0]) == [10, 11, 13] and c._acked[clicks1] == [6]
    # so the commit stops before the held-back offset (stream.core.commit.next_commit).
    assert c._new_offset(clicks0) == 12
    # The seek back stands: the held-back record will be read again, not dropped as read.
    assert c._read_offset[clicks0] == 12 and c._read_offset[clicks1] == 6
    assert c.direct_idle.is_set()


def test_a_fetch_overtaken_by_a_rebalance_is_dropped() -> None:
    clicks0 = TopicPartition("in.clicks", 0)
    c, batches, _ = _direct({clicks0: [_record("in.clicks", 0, 0)]})
    c.flow_active = False  # a rebalance stopped the flow while the fetch was in flight
    asyncio.run(c.fetch_once())
    assert batches == [] and not c._acked[clicks0]


def test_changelog_partitions_of_a_dropped_fetch_go_back_to_where_their_restore_stands() -> None:
    # Recovery sought the changelogs it restores (partition 0 from nothing, 1 from offset 7)
    # before the fetch returned with their records: dropped, they must be read again, or
    # recovery waits for them forever and the worker is never ready (a second worker joining).
    log0, log1, log2, log3 = (TopicPartition("app-customers-changelog", p) for p in range(4))
    fetched = {
        log0: [_record("app-customers-changelog", 0, o) for o in (0, 1, 2)],
        log1: [_record("app-customers-changelog", 1, o) for o in (8, 9)],
        log2: [_record("app-customers-changelog", 2, 4)],  # applied already (restored to 4)
        log3: [_record("app-customers-changelog", 3, 0)],  # neither restored nor mirrored here
        TopicPartition("in.clicks", 0): [_record("in.clicks", 0, 5)],
    }
    c, batches, through_faust = _direct(fetched)
    c.app.tables._changelogs["app-customers-changelog"] = object()
    recovery = c.app.tables.recovery
    recovery.active_tps.update({log0, log1})
    recovery.standby_tps.add(log2)
    recovery.active_offsets.update({log0: None, log1: 7})
    recovery.standby_offsets[log2] = 4
    sought: list[tuple[TopicPartition, int]] = []

    async def seek(tp: TopicPartition, offset: int) -> None:
        sought.append((tp, offset))

    c.seek = seek
    c.flow_active = False  # a rebalance suspended the flow while the fetch was in flight
    asyncio.run(c.fetch_once())
    assert sorted(sought) == [(log0, 0), (log1, 7)]
    assert batches == [] and through_faust == [] and c.restored == 0 and c.rewound == 2


def test_a_rebalance_waits_for_the_batch_in_progress() -> None:
    async def main() -> None:
        c = consumer()
        committed: list[str] = []

        async def commit_and_end_transactions() -> None:
            committed.append("commit")

        c.commit_and_end_transactions = commit_and_end_transactions
        c.direct_idle.clear()  # a batch is in the sink
        waiting = asyncio.ensure_future(c.wait_empty())
        for _ in range(20):
            await asyncio.sleep(0)
        assert not waiting.done() and committed == []
        c.direct_idle.set()  # the batch is processed
        await asyncio.wait_for(waiting, 5)
        assert committed == ["commit"]

    asyncio.run(main())


def test_a_handover_that_never_waits_runs_inline() -> None:
    async def main() -> None:
        c = consumer()
        seen: list[int] = []

        async def handover(n: int) -> int:
            seen.append(n)
            return n * 2

        tasks_before = len(asyncio.all_tasks())
        result = await c.wait_first(handover(21), c.suspend_flow.wait())
        assert result.results == [42] and not result.stopped
        assert seen == [21] and c.handed_inline == 1
        assert len(asyncio.all_tasks()) == tasks_before  # no task was left behind

    asyncio.run(main())


def test_a_handover_that_waits_completes_as_a_task() -> None:
    async def main() -> None:
        c = consumer()
        room = asyncio.Event()

        async def handover() -> str:
            await room.wait()  # a full stream buffer
            return "delivered"

        asyncio.get_running_loop().call_later(0.01, room.set)
        result = await asyncio.wait_for(c.wait_first(handover(), c.suspend_flow.wait()), 5)
        assert result.results == ["delivered"] and c.handed_inline == 0

    asyncio.run(main())


def test_a_suspended_flow_abandons_a_waiting_handover() -> None:
    async def main() -> None:
        c = consumer()
        cancelled = asyncio.Event()

        async def handover() -> None:
            try:
                await asyncio.Event().wait()  # blocked for good on a full buffer
            except asyncio.CancelledError:
                cancelled.set()
                raise

        asyncio.get_running_loop().call_later(0.01, c.suspend_flow.set)  # a rebalance
        await asyncio.wait_for(c.wait_first(handover(), c.suspend_flow.wait()), 5)
        await asyncio.wait_for(cancelled.wait(), 5)

    asyncio.run(main())


def test_while_suspended_the_handover_takes_fausts_path() -> None:
    async def main() -> None:
        c = consumer()
        c.suspend_flow.set()

        async def handover() -> int:
            return 1

        result = await c.wait_first(handover(), c.suspend_flow.wait())
        assert c.handed_inline == 0
        assert result.done  # the suspend flag (and maybe the hand-over) won, as in Faust

    asyncio.run(main())


def test_errors_of_a_handover_reach_the_fetcher_either_way() -> None:
    async def main() -> None:
        c = consumer()

        async def at_once() -> None:
            raise ValueError("at once")

        async def later() -> None:
            await asyncio.sleep(0)
            raise ValueError("later")

        with pytest.raises(ValueError, match="at once"):
            await c.wait_first(at_once(), c.suspend_flow.wait())
        with pytest.raises(ValueError, match="later"):
            await c.wait_first(later(), c.suspend_flow.wait())

    asyncio.run(main())


def test_resume_steps_a_coroutine_like_a_task() -> None:
    async def main() -> None:
        async def work() -> int:
            await asyncio.sleep(0)
            done = asyncio.ensure_future(asyncio.sleep(0.001, result=3))
            finished, _ = await asyncio.wait([done])
            return finished.pop().result() + 4

        coro = work()
        yielded = coro.send(None)
        assert await asyncio.ensure_future(_resume(coro, yielded)) == 7

    asyncio.run(main())
