"""The commit protocol: one object owns the order of every batch's steps.

A `Checkpoint` runs the partition engines of one worker (or of the in-process driver) and is
the one place that says in which order a batch's effects happen. `Checkpoint.commit` takes the
records of one fetch and goes through these steps, named for the crash tests (`Hooks.step`):

1. ``split``: offset continuity. Records past an offset the consumer skipped are held back
   (`Positions`); they are neither processed nor acknowledged, and the source seeks back to the
   first missing offset at the end of the batch.
2. ``start``: partitions new to this worker get their engines: clock record read, due index
   rebuilt from the table, every unacknowledged decision of their outboxes re-sent.
3. ``process``: each partition's slice through its engine, with the decisions Kafka has
   acknowledged since the last batch (`Acknowledgements`) folded in: they leave their outboxes
   in this batch's state write, never in a write of their own. A partition with
   acknowledgements and no record in the batch settles them (`PartitionEngine.settle`).
4. ``queue``: when the batch writes (below), per partition processed since its last write, in
   this order, the erasures' tombstones, each changed customer once, the clock record; then the
   batch's outputs (decisions, nudges, dead letters, receipts) are queued on the `Sink`; every
   decision send carries the callback that acknowledges it.
5. ``flush``: the sink hands everything queued to the Kafka client, in queue order.
6. ``say``: replay statuses, only once every earlier send is acknowledged (a barrier).
7. ``count``: the batch's metric counts, once per label set (`Hooks.count`).
8. ``acknowledge``: the records whose state writes are queued are returned (this batch's and
   those held back since the last write, or none when the batch did not write); the caller
   acknowledges their offsets and the consumer's commit (which flushes the producer first) may
   pass them. A batch that raised before this step is never acknowledged: it is read again,
   its decisions re-sent under the same nudge_ids.

Write-behind (`write_interval_s` > 0, the worker's `ENGAGE_STATE_WRITE_INTERVAL_MS`): a batch
writes only once the interval since the last write is up, or when it must: an erasure waits
(its tombstone goes with its receipt), a replay status is to be said, a partition holds half
as many unwritten customers as its engine caches, the worker idles (`settle`), partitions are
handed over (`release`). A customer changed by many events in between is encoded and written
once; its decisions are still sent by the batch that took them (the outbox in the state is
what makes them safe, and the state with its outbox is written before any offset past them is
acknowledged). Until then the engine keeps the state in its cache and the table lags it.

The guarantees are those of the steps' order: no offset is committed before the state writes
and sends of its record are in the producer; a decision leaves its outbox only after Kafka
acknowledged all of its sends; a replay status is said only after every decision before it.
Where writes and sends go is the `Sink` (the worker's at-least-once sink, the in-process
driver's dicts, the broker-less test worker's lists): the protocol is the same.
`tests/core/test_commit.py` crashes it after every step (`stream.core.testing`).

This module does no I/O of its own: the tables, the source and the sink are ports (the Faust
adapter's, or the in-process driver's dicts and lists); `drive` runs a commit whose ports never
wait, without an event loop.
"""

from __future__ import annotations

import json
import logging
import time as _time
import types
from collections import Counter
from collections.abc import (
    Awaitable,
    Callable,
    Collection,
    Coroutine,
    Generator,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol, TypeVar

from stream.core.clock import PartitionTime, Progress, Replay
from stream.core.engine import (
    REPLAY_STATUS,
    BatchResult,
    EngineConfig,
    Output,
    PartitionEngine,
    Projection,
    Record,
    by_partition,
    time_key,
)

log = logging.getLogger("engage")

T = TypeVar("T")

#: The protocol's steps, in order (`Hooks.step` is called after each).
STEPS = ("split", "start", "process", "queue", "flush", "say", "count", "acknowledge")


class Table(StrEnum):
    """The worker's two changelog-backed tables."""

    CUSTOMERS = "customers"  # customer key -> encoded state
    CONTROL = "control"  # partition clock records


class Tables(Protocol):
    """Read access to the local tables (the sink writes them)."""

    def read(self, table: Table, key: bytes, partition: int) -> bytes | None:
        """The stored value of `key` on `partition`, or None."""
        ...

    def scan(self, partitions: list[int], *, chunk: int) -> Iterator[list[tuple[bytes, bytes]]]:
        """The stored customers of `partitions`, `chunk` pairs at a time."""
        ...


class Source(Protocol):
    """What the protocol needs of the consumer."""

    def committed(self, topic: str, partition: int) -> int | None:
        """The committed offset (the next to read) of a topic-partition, or None."""
        ...

    def highwaters(self, partition: int) -> dict[str, int | None]:
        """Per input topic, the end offset of the partition as last fetched (None: unknown,
        which holds a clock that follows them); a topic left out is not waited for."""
        ...

    async def seek(self, topic: str, partition: int, offset: int) -> None:
        """Read a topic-partition again from `offset`."""
        ...


#: Called once a send is done: True when Kafka acknowledged it.
Done = Callable[[bool], None]


class Sink(Protocol):
    """Where a batch's writes and sends go (a processing guarantee is a sink)."""

    def write(self, table: Table, key: bytes, value: bytes | None, partition: int) -> None:
        """Store `key` (None: delete it) and queue its changelog record on `partition`."""
        ...

    def send(self, out: Output, done: Done | None) -> None:
        """Queue an output (`done` is called once Kafka answered it)."""
        ...

    def flush(self) -> Awaitable[None]:
        """Hand everything queued to the Kafka client, in queue order."""
        ...

    def barrier(self) -> Awaitable[None]:
        """Wait until every send so far is acknowledged (a producer flush)."""
        ...


@dataclass
class Hooks:
    """What the protocol reports to its owner (metrics, tests); every hook is optional."""

    count: Callable[[BatchResult], None] = lambda result: None
    unreadable: Callable[[Counter[str]], None] = lambda counts: None
    started: Callable[[list[int]], None] = lambda partitions: None
    step: Callable[[str], None] = lambda name: None


class Positions:
    """Offset continuity of the input topics, in one place: the next offset to process per
    topic-partition (what the engines' progress and each customer's folded offsets build on).

    Faust's fetcher can hand over a record ahead of the committed offset after a restart or a
    rebalance and then drop the ones in between. Folding it would record its offset in the
    customer's state and make the skipped ones look like re-reads forever (an event lost), so
    such records are held back (not acknowledged, so no commit passes them) and the source seeks
    back to the first missing one."""

    def __init__(self, inputs: Collection[str]) -> None:
        self.inputs = inputs
        self.expected: dict[tuple[str, int], int] = {}

    def split(
        self, records: Iterable[Record], source: Source
    ) -> tuple[list[Record], dict[tuple[str, int], int]]:
        """(the records to process, the offset to read again from per topic-partition)."""
        holes: dict[tuple[str, int], int] = {}
        done: list[Record] = []
        expected, inputs = self.expected, self.inputs
        for record in records:
            if record.topic not in inputs:
                done.append(record)
                continue
            tp = (record.topic, record.partition)
            at = expected.get(tp)
            if at is None:
                at = source.committed(record.topic, record.partition)
            if tp in holes or (at is not None and record.offset > at):
                if at is not None:
                    holes.setdefault(tp, at)
                continue
            if at is None or record.offset == at:
                expected[tp] = record.offset + 1
            done.append(record)
        return done, holes

    def forget(self, partitions: Collection[int]) -> None:
        """Revoked partitions: their next owner starts from the committed offsets."""
        for tp in [tp for tp in self.expected if tp[1] in partitions]:
            del self.expected[tp]


def next_commit(acked: Sequence[int], committed: int | None) -> tuple[int | None, list[int]]:
    """(the offset to commit or None, the acknowledged offsets to keep): step 8's rule.

    Faust commits, per topic-partition, the end of the first run of consecutive acknowledged
    offsets, and treats a jump in the offsets it reads as a "gap" (offsets of a compacted topic
    or transaction markers that will never be delivered), merged into the acknowledged list.
    After a kill -9 and restart, or a rebalance, its fetcher can hand over a record ahead of the
    committed offset before the ones in between, read and acknowledged a moment later: Faust
    then holds each of them twice, its run detection stops at every duplicate (the committed
    offset crawls by one per commit interval), and a commit may pass offsets the gap covers
    before they were processed (an event lost at the next crash). The worker's acknowledged
    topics (inputs, clock, erasures) are append-only and written without transactions: they
    have no gaps. So the offset committed is the end of the run of acknowledged offsets that
    starts exactly at the committed offset: never past an offset not acknowledged, duplicates
    ignored. `stream.adapter.faust_private.install_commit_rule` makes Faust's consumer use it
    (at_least_once; transactions keep Faust's rule, their markers are real gaps).

    `acked` are acknowledged offsets in any order, possibly repeated; `committed` the offset
    committed so far (the next one to read), None before any commit of this assignment.
    """
    pending = sorted({o for o in acked if committed is None or o >= committed})
    if not pending:
        return None, []
    start = pending[0] if committed is None else committed
    if pending[0] != start:
        return None, pending  # the next offset to commit is not acknowledged yet
    end = start
    for offset in pending:
        if offset != end:
            break
        end += 1
    return end, [o for o in pending if o >= end]


def must_write(
    results: Iterable[BatchResult], engines: Iterable[PartitionEngine], *, bound: int
) -> bool:
    """Write-behind's reasons to write before its interval is up: a batch result ends with a
    replay status (said after its states), an engine holds an erasure (its tombstone goes with
    its receipt) or `bound` unwritten customers. `engines` are those processed since their
    last write. Shared by the `Checkpoint` and the raw benchmark loop."""
    for result in results:
        if result.outputs and result.outputs[-1].name == REPLAY_STATUS:
            return True
    return any(engine.erasing or engine.pending >= bound for engine in engines)


class Acknowledgements:
    """Decisions whose sends Kafka acknowledged, per partition, until the next batch clears
    them from their outboxes. A decision has one or two sends (decisions, nudges): it counts
    as acknowledged once all of them are; a failed send keeps it in the outbox (re-sent by
    the partition's next owner, same nudge_id)."""

    def __init__(self) -> None:
        self.inflight: Counter[tuple[int, bytes, str]] = Counter()
        self.failed: set[tuple[int, bytes, str]] = set()
        self.done: dict[int, dict[bytes, set[str]]] = {}

    def expect(self, ident: tuple[int, bytes, str]) -> Done:
        """One more send of a decision; the callback to give the sink."""
        self.inflight[ident] += 1
        return lambda ok: self._answered(ident, ok)

    def _answered(self, ident: tuple[int, bytes, str], ok: bool) -> None:
        if not ok:
            self.failed.add(ident)
        left = self.inflight[ident] - 1
        if left > 0:
            self.inflight[ident] = left
            return
        del self.inflight[ident]
        if ident in self.failed:
            self.failed.discard(ident)
            return
        p, customer, nudge_id = ident
        self.done.setdefault(p, {}).setdefault(customer, set()).add(nudge_id)

    def take(self, partition: int) -> dict[bytes, set[str]]:
        """The acknowledged decisions of a partition, handed to its next batch."""
        return self.done.pop(partition, None) or {}

    def pending(self) -> list[int]:
        """Partitions with acknowledgements not cleared yet."""
        return list(self.done)

    def forget(self, partitions: Collection[int]) -> None:
        """Revoked partitions: their next owner re-sends what their outboxes hold."""
        for p in partitions:
            self.done.pop(p, None)
        for ident in [i for i in self.inflight if i[0] in partitions]:
            del self.inflight[ident]
            self.failed.discard(ident)


@dataclass
class Checkpoint:
    """The partition engines of one worker and the order of every batch's effects."""

    config: EngineConfig
    tables: Tables
    source: Source
    sink: Sink
    projection: Projection | None = None
    hooks: Hooks = field(default_factory=Hooks)
    scan_chunk: int = 2000  # stored customers read per step of a due-index rebuild
    engines: dict[int, PartitionEngine] = field(default_factory=dict)
    # Write-behind: the longest a change waits for its state write (0: every batch writes).
    write_interval_s: float = 0.0
    monotonic: Callable[[], float] = _time.monotonic  # the write interval's clock

    def __post_init__(self) -> None:
        self.positions = Positions(self.config.inputs)
        self.acks = Acknowledgements()
        self.starting: set[int] = set()  # partitions whose engines `start` is building
        self.processed: list[BatchResult] = []  # the last batch's results (step 3)
        self.written: list[BatchResult] = []  # the last batch's state writes (step 4), if any
        self.held: list[Record] = []  # processed, their state writes not queued yet
        self.unwritten: set[int] = set()  # partitions processed since their last write
        self.last_write = self.monotonic()

    # --- a batch ------------------------------------------------------------------------------

    async def commit(
        self, records: list[Record], *, wall_ms: int, write: bool = False
    ) -> list[Record]:
        """Run one batch through the steps (see the module docstring); returns the records
        whose offsets the caller acknowledges: those whose state writes are now queued (this
        batch's and the ones held back since the last write). `wall_ms` is read once per batch;
        `write` writes whatever the write interval says."""
        step = self.hooks.step
        done, holes = self.positions.split(records, self.source)  # 1
        step("split")
        slices: dict[int, list[Record]] = {}
        for record in done:
            part = slices.get(record.partition)
            if part is None:
                part = slices[record.partition] = []
            part.append(record)
        later: list[Output] = []
        new = [p for p in slices if p not in self.engines]
        if new:
            later.extend(await self.start(new))  # 2
        step("start")
        results = self.processed = self._process(slices, wall_ms=wall_ms)  # 3
        step("process")
        write = write or self._write_due(results)
        self.written = self._write_all() if write else []  # 4
        for result in results:
            later.extend(self._queue(result))
        step("queue")
        await self.sink.flush()  # 5
        step("flush")
        await self._say(later)  # 6
        step("say")
        for result in results:  # 7
            self.hooks.count(result)
        step("count")
        for (topic, p), offset in holes.items():
            log.warning("the consumer skipped offsets of %s[%s] from %s: reading them again",
                        topic, p, offset)  # fmt: skip
            await self.source.seek(topic, p, offset)
        step("acknowledge")
        if not write:
            self.held.extend(done)
            return []
        if self.held:
            done, self.held = [*self.held, *done], []
        return done  # 8

    async def settle(self, *, wall_ms: int) -> list[Record]:
        """A batch without records (the consumer found nothing to read): everything changed
        since the last write is written, and the decisions acknowledged since the last batch
        leave their outboxes, so an idle worker's changelog holds its latest states and no
        decision Kafka already has; what was written between batches is sent. Returns the
        records to acknowledge (those held back for the write)."""
        if self.acks.done or self.unwritten or self.behind:
            return await self.commit([], wall_ms=wall_ms, write=True)
        self.written = []
        await self.sink.flush()
        return []

    def _write_due(self, results: list[BatchResult]) -> bool:
        """Whether this batch writes the changes held since the last write: always without
        write-behind; else once the interval is up, when an erasure waits (its tombstone goes
        with its receipt), when a replay status is to be said (after its states), or when a
        partition holds half as many unwritten customers as its engine caches."""
        if self.write_interval_s <= 0:
            return True
        engines = [self.engines[p] for p in self.unwritten if p in self.engines]
        if must_write(results, engines, bound=self.config.cached_states // 2):
            return True
        return self.monotonic() - self.last_write >= self.write_interval_s

    def _write_all(self) -> list[BatchResult]:
        """Step 4's first part: every partition's changes since its last write, queued."""
        self.last_write = self.monotonic()
        written = []
        engines, partitions, self.unwritten = self.engines, sorted(self.unwritten), set()
        for p in partitions:
            engine = engines.get(p)
            if engine is None:
                continue
            result = engine.write()
            if result.states or result.erased or result.time is not None:
                self._write(result)
                written.append(result)
        return written

    def _process(self, slices: Mapping[int, list[Record]], *, wall_ms: int) -> list[BatchResult]:
        engines, acks, source = self.engines, self.acks, self.source
        uses_highwaters = self.config.clock.uses_highwaters
        results = []
        self.unwritten.update(slices)
        for p, part in slices.items():
            highwaters = source.highwaters(p) if uses_highwaters else None
            results.append(
                engines[p].process(
                    part,
                    highwaters=highwaters,
                    wall_ms=wall_ms,
                    acknowledged=acks.take(p),
                    write=False,
                )
            )
        for p, engine in engines.items():  # customers left due by earlier batches
            if engine.behind and p not in slices and p not in self.starting:
                highwaters = source.highwaters(p) if uses_highwaters else None
                results.append(
                    engine.process(
                        [], highwaters=highwaters, wall_ms=wall_ms,
                        acknowledged=acks.take(p), write=False,
                    )
                )  # fmt: skip
                self.unwritten.add(p)
        for p in acks.pending():
            if p not in slices:
                engine = engines.get(p)
                acknowledged = acks.take(p)
                if engine is not None:
                    results.append(engine.settle(acknowledged, write=False))
                    self.unwritten.add(p)
        return results

    def _write(self, result: BatchResult) -> None:
        """One partition's state write: tombstones, changed customers, the clock record."""
        p, write = result.partition, self.sink.write
        for key in result.erased:
            write(Table.CUSTOMERS, key, None, p)
        for key, raw in result.states.items():
            write(Table.CUSTOMERS, key, raw, p)
        if result.time is not None:
            write(Table.CONTROL, time_key(p), result.time, p)

    def _queue(self, result: BatchResult) -> list[Output]:
        """Step 4 for one partition's result: its outputs queued (a result of `start` may
        carry no write; a batch's writes are `_write_all`'s). Returns the replay statuses
        (step 6)."""
        p = result.partition
        self._write(result)
        later: list[Output] = []
        send, expect = self.sink.send, self.acks.expect
        for out in result.outputs:
            if out.name == REPLAY_STATUS:
                later.append(out)
            elif out.customer is not None and out.nudge_id is not None:
                send(out, expect((p, out.customer, out.nudge_id)))
            else:
                send(out, None)
        return later

    async def _say(self, statuses: list[Output]) -> None:
        """Replay statuses, once every decision queued before them is acknowledged."""
        if statuses:
            await self.sink.barrier()
            for out in statuses:
                self.sink.send(out, None)
            await self.sink.flush()

    # --- partitions ---------------------------------------------------------------------------

    async def prepare(self, partitions: Iterable[int]) -> None:
        """Start the engines of assigned partitions not started yet, before their first
        batch (a due-index rebuild of a large table is part of starting, not of a batch)."""
        new = sorted(p for p in set(partitions) if p not in self.engines)
        if new:
            await self._say(await self.start(new))

    @property
    def behind(self) -> bool:
        """True when an engine has customers due that wait for the next batch (more fell due
        at once than a batch wakes): the caller runs a batch soon, even without records."""
        return any(e.behind for e in self.engines.values())

    def started(self, partitions: Iterable[int]) -> bool:
        """True when every one of these partitions has its engine."""
        return all(p in self.engines and p not in self.starting for p in partitions)

    async def start(self, partitions: list[int]) -> list[Output]:
        """New partitions: resume their clocks, rebuild their due indexes from the table and
        re-send their outboxes (flushed). Returns the replay statuses to say again.

        The table is read a chunk at a time, each stored customer peeked at rather than
        decoded, and the event loop runs between chunks. A partition revoked meanwhile is
        dropped from the rest of the read."""
        self.starting.update(partitions)
        try:
            statuses = await self._start(partitions)
        finally:
            self.starting.difference_update(partitions)
        self.hooks.started(partitions)
        return statuses

    async def _start(self, partitions: list[int]) -> list[Output]:
        began = _time.perf_counter()
        engines: dict[int, PartitionEngine] = {}
        for p in partitions:
            committed = {t: self.source.committed(t, p) for t in self.config.inputs}
            engines[p] = self.engines[p] = PartitionEngine(
                p,
                self.config,
                _PartitionReader(self.tables, p),
                time=self._stored_time(p, committed),
                positions=committed,
                projection=self.projection,
            )
        read = 0
        for chunk in self.tables.scan(partitions, chunk=self.scan_chunk):
            live = {p: e for p, e in engines.items() if self.engines.get(p) is e}
            if len(live) < len(engines):
                engines = live
                if not engines:
                    return []
            read += len(chunk)
            slices, unreadable = by_partition(chunk)
            for p, stored in slices.items():  # memory:// holds every partition in one store
                engine = engines.get(p)
                if engine is not None:
                    result = engine.recover(stored)
                    self._queue(result)
                    self.hooks.count(result)
            await self.sink.flush()  # the re-sent decisions
            if unreadable:
                self.hooks.unreadable(unreadable)
            await _pass()  # the event loop runs between chunks
        statuses: list[Output] = []
        for p, engine in engines.items():
            if self.engines.get(p) is engine:
                result = engine.recovered()
                statuses.extend(self._queue(result))
                self.hooks.count(result)
        await self.sink.flush()
        log.info("engine started on partitions %s: %d stored customers read in %.1f s",
                 sorted(engines), read, _time.perf_counter() - began)  # fmt: skip
        return statuses

    def _stored_time(self, p: int, committed: Mapping[str, int | None]) -> PartitionTime | None:
        """The partition's clock record, or None (a partition never processed)."""
        raw = self.tables.read(Table.CONTROL, time_key(p), p)
        legacy = self.tables.read(Table.CONTROL, f"replay:{p}".encode(), p)
        try:
            if raw is not None:
                return PartitionTime.from_json(json.loads(raw))
            if legacy is not None:  # a replay declared before this version: keep it
                body = json.loads(legacy)
                pt = PartitionTime(progress={})
                pt.replay = Replay(body["replay_id"], dict(body["ends"]), body.get("final"))
                pt.progress = {t: Progress(next_offset=o) for t, o in committed.items()}
                return pt
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring an unreadable clock record of partition %s", p)
        return None

    async def release(self, partitions: Iterable[int]) -> None:
        """Before partitions go (a rebalance, a clean stop): wait for Kafka's answers to every
        send, write every change held since the last write with the acknowledged decisions
        cleared from their outboxes, and wait until that write is in Kafka, so the next owner
        does not send them again. (A crash skips this: the next owner reads the records held
        since the last write again and re-sends what the outboxes hold, same nudge_ids.)"""
        await self.sink.barrier()
        results = []
        gone = set(partitions)
        self.unwritten -= gone
        for p in sorted(gone):
            engine, acknowledged = self.engines.get(p), self.acks.take(p)
            if engine is not None:
                if acknowledged:
                    engine.settle(acknowledged, write=False)
                results.append(engine.write())
        for result in results:
            self._write(result)
        if any(r.states or r.erased or r.time is not None for r in results):
            await self.sink.barrier()

    def forget(self, partitions: Iterable[int]) -> None:
        """Revoked partitions: whoever gets them rebuilds their engines from the tables."""
        gone = set(partitions)
        for p in gone:
            self.engines.pop(p, None)
        self.positions.forget(gone)
        self.acks.forget(gone)
        self.unwritten -= gone
        # Held records of theirs are not acknowledged: the next owner reads them again, and
        # skips those whose effects `release` wrote (each customer's folded offsets).
        self.held = [r for r in self.held if r.partition not in gone]

    def projected(self, customer_ids: list[str]) -> None:
        """The Redis projector confirmed these customers' writes: partitions keeping an erasure
        until its Redis deletion is confirmed drop it and write their clock record, with every
        change held since their last write (sent with the next flush). Records held back stay
        so until the next batch's write acknowledges them."""
        for engine in list(self.engines.values()):
            if engine.projected(customer_ids):
                self._write(engine.write())


class _PartitionReader:
    """One partition's customers, as the engine reads them (its `CustomerStore`)."""

    __slots__ = ("partition", "tables")

    def __init__(self, tables: Tables, partition: int) -> None:
        self.tables = tables
        self.partition = partition

    def get(self, key: bytes) -> bytes | None:
        """The encoded state of a customer of this partition, or None."""
        return self.tables.read(Table.CUSTOMERS, key, self.partition)


@types.coroutine
def _pass() -> Generator[None, None, None]:
    """Let the event loop run other tasks once (what `asyncio.sleep(0)` does)."""
    yield


def drive(coro: Coroutine[Any, Any, T]) -> T:
    """Run a commit whose ports never wait (the in-process driver's), without an event loop:
    a bare yield (`_pass`) is resumed at once; waiting on a future is an error."""
    while True:
        try:
            yielded = coro.send(None)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
        if yielded is not None:
            coro.close()
            raise RuntimeError("a port of the in-process driver waited on a future")
