"""Leaner paths from Faust's consumer to the engines: a direct batch drain and a lean hand-over.

**The direct drain** (`DirectConsumer`, `ENGAGE_DRAIN=direct`, the default). Faust's fetcher
turns every fetched record into a message, hands it to the conductor, which decodes it and puts
it in the agent's stream buffer, from which the stream yields it as an event and acknowledges it
afterwards: about 100 µs per message on the development machine, more than the engine's own
work. The direct drain takes each fetch (`getmany`: up to `ENGAGE_CONSUMER_MAX_POLL_RECORDS`
records) of the worker's own topics (inputs, clock, erasures) and hands it, as plain `Record`s,
to one callback (the batch shell; before the first fetch after a rebalance, another callback
starts the engines of the partitions assigned), then acknowledges the records it processed
with Faust's own bookkeeping, so offsets are committed by Faust exactly as before. Records of
the tables' changelogs (recovery, standby replicas) go to their tables a fetch at a time
(`stream.adapter.restore`); any other topic's take Faust's path. Faust keeps
group membership, rebalances, fetching, pausing, seeking, commits, the tables and their
recovery; the agent over the same topics stays declared (it makes Faust subscribe to and
assign them) and receives nothing. A rebalance waits for the batch in progress
(`wait_empty`), and a fetch made before a rebalance is dropped, as Faust drops it (the new
assignment starts from the committed offsets); the changelog partitions such a fetch read go
back to where their restore stands (`DirectConsumer._rewind_restores`), so recovery never
waits for records the dropped fetch took past.

**The lean hand-over** (`LeanConsumer`, `ENGAGE_DRAIN=lean`, and for the other topics of the
direct drain).

Faust's fetcher hands every message to the streams with
`await self.wait_first(callback(message), self.suspend_flow.wait())`: `Service.wait_first`
wraps that hand-over, the suspend flag, and the service's stopped and crashed flags in four
tasks and runs `asyncio.wait` on them, for every message. The race exists for one case: a
hand-over blocked on a full stream buffer must be abandoned when a rebalance suspends the flow.
Almost every hand-over completes without ever waiting (the buffer has room), and then the four
tasks are pure cost (profiled: about a sixth of the worker's CPU at full load).

`LeanConsumer.wait_first` runs the hand-over's first step inline when the flow is not suspended
and the consumer neither stopped nor crashed. If the hand-over completes in that step, it
returns what `wait_first` would have returned (nothing could have set the suspend flag in
between: no other code ran). If it must wait, the rest of the hand-over continues as a task,
raced against the suspend flag through Faust's own `wait_first`, exactly as before. Every other
call of `wait_first` takes Faust's path unchanged. Faust keeps everything else: group
membership, rebalances, fetching, offsets and commits, tables and their recovery.

Faust's private names (its fetcher loop, offset bookkeeping, the stopped and crashed flags,
the producer's and the app's private hooks) are reached through `stream.adapter.faust_private`.

Imports: faust, aiokafka's errors, asyncio and the core's `Record` (an adapter module).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import (
    Awaitable,
    Callable,
    Coroutine,
    Generator,
    Iterable,
    Mapping,
    Sequence,
)
from typing import Any

import faust
from aiokafka.errors import IllegalStateError
from faust.transport.drivers.aiokafka import Consumer, Producer, Transport
from faust.types import TP, TransportT
from mode.services import WaitResults

from stream.adapter.faust_private import (
    FetchLoopHook,
    ProducerSettingsHook,
    TransportHook,
    ack,
    buffered_partitions,
    changelog_tables,
    commit_due,
    committed_offsets,
    next_records,
    read_offsets,
    restored_through,
    stopping,
    to_message,
)
from stream.adapter.restore import restore_fetch
from stream.core.engine import Record
from stream.core.interleave import in_time_order
from stream.kafka_client import DURABLE_PRODUCER

log = logging.getLogger("engage")

# The batch shell: processes records and returns those to acknowledge (with write-behind,
# records of earlier fetches too, once their state writes are queued).
DirectSink = Callable[[list[Record]], Awaitable[Sequence[Record]]]
# The batch shell again: starts the engines of the assigned partitions not started yet.
DirectPrepare = Callable[[set[int]], Awaitable[None]]
# The batch shell again, when a fetch found nothing: a batch without records (acknowledgements,
# and the writes held back, whose records it returns to acknowledge).
DirectSettle = Callable[[], Awaitable[Sequence[Record]]]


class SuspendFlow(asyncio.Event):
    """The consumer's suspend flag; `wait()` returns an awaitable `wait_first` recognises."""

    def wait(self) -> _SuspendWait:  # type: ignore[override]
        """An awaitable of the flag (the same as `asyncio.Event.wait()` when awaited)."""
        return _SuspendWait(self)


class _SuspendWait:
    """`await` it to wait for the flag; created lazily so an inline hand-over costs nothing."""

    __slots__ = ("flag",)

    def __init__(self, flag: SuspendFlow) -> None:
        self.flag = flag

    def __await__(self) -> Generator[Any, None, bool]:
        return asyncio.Event.wait(self.flag).__await__()


class LeanConsumer(Consumer):
    """Faust's aiokafka consumer with the fetcher's hand-over run inline when it can be."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.suspend_flow = SuspendFlow()
        self.handed_inline = 0  # hand-overs that completed inline (for tests and profiling)

    async def wait_first(self, *coros: Any, timeout: Any = None) -> WaitResults:
        """The fetcher's `wait_first(callback(message), suspend_flow.wait())`, inline when the
        hand-over completes without waiting; anything else goes to Faust's `wait_first`."""
        if (
            len(coros) == 2
            and timeout is None
            and isinstance(coros[1], _SuspendWait)
            and asyncio.iscoroutine(coros[0])
            and not self.suspend_flow.is_set()
            and not stopping(self)
        ):
            handover: Coroutine[Any, Any, Any] = coros[0]
            try:
                yielded = handover.send(None)
            except StopIteration as done:
                self.handed_inline += 1
                return WaitResults([handover], [done.value], False)
            rest = asyncio.ensure_future(_resume(handover, yielded))
            return await super().wait_first(rest, coros[1])
        return await super().wait_first(*coros, timeout=timeout)


async def _resume(coro: Coroutine[Any, Any, Any], yielded: Any) -> Any:
    """Drive a coroutine that already ran its first step and yielded, the way a task would:
    wait for the future it yielded (or just yield for a bare `yield`), then step it again.
    A cancellation of this task cancels the awaited future and is thrown into the coroutine."""
    while True:
        try:
            if yielded is None:
                await asyncio.sleep(0)
            else:
                yielded._asyncio_future_blocking = False  # what a task does with a yield
                await yielded  # the coroutine's own await reads the result when resumed
        except asyncio.CancelledError as exc:
            try:
                yielded = coro.throw(exc)
            except StopIteration as done:
                return done.value
            continue
        except BaseException:
            pass  # the coroutine's own await raises it again when stepped below
        try:
            yielded = coro.send(None)
        except StopIteration as done:
            return done.value


class DirectConsumer(FetchLoopHook, LeanConsumer):
    """`LeanConsumer` whose fetches of `direct_topics` go to `direct_sink` in one call."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.direct_topics: frozenset[str] = frozenset()
        self.direct_sink: DirectSink | None = None  # set by the app before the worker starts
        self.direct_prepare: DirectPrepare | None = None  # likewise
        self.direct_settle: DirectSettle | None = None  # likewise
        #: True while the engines have customers due left for the next batch: fetch without
        #: waiting, so an idle worker wakes them batch after batch (set by the app).
        self.direct_behind: Callable[[], bool] = lambda: False
        self.direct_idle = asyncio.Event()  # no batch in the sink (a rebalance waits for it)
        # The client's own partition objects, for acknowledgements of records fetched earlier.
        self.direct_tps: dict[tuple[str, int], Any] = {}
        self.direct_idle.set()
        self.restored = 0  # changelog records restored a fetch at a time (tests, profiling)
        self.rewound = 0  # changelog partitions sought back after a dropped fetch (tests)
        #: The first offset of each direct topic-partition handed over in this generation
        #: without a committed offset: where it resumes (`faust_private.resume_offset`).
        self.start_offsets: dict[Any, int] = {}
        self._starts_generation: int | None = None
        self._anchored_generation: int | None = None  # the last generation `_anchor` did
        self.committing: asyncio.Future[None] | None = None  # the commit running as a task

    async def wait_empty(self) -> None:
        """Faust's wait for the messages being processed, plus the direct batch in progress
        (a rebalance must not commit nor reassign before its records are processed)."""
        while not self.direct_idle.is_set() and not self.should_stop:
            try:
                await asyncio.wait_for(self.direct_idle.wait(), timeout=1.0)
            except TimeoutError:
                log.info("rebalance waits for the batch in progress")
        await super().wait_empty()

    def fetch_max_wait_ms(self) -> int | None:
        """The app's `fetch_max_wait_ms` (`ENGAGE_CONSUMER_FETCH_MAX_WAIT_MS`)."""
        return getattr(self.app, "fetch_max_wait_ms", None)  # None for an app not LeanApp

    def fetch_min_bytes(self) -> int | None:
        """The app's `fetch_min_bytes` (`ENGAGE_CONSUMER_FETCH_MIN_BYTES`)."""
        return getattr(self.app, "fetch_min_bytes", None)  # None for an app not LeanApp

    def fetches_directly(self) -> bool:
        """The fetcher loop is `fetch_once` once the app has set the sink and its topics."""
        return self.direct_sink is not None and bool(self.direct_topics)

    async def fetch_once(self) -> None:
        """One `getmany`: direct topics' records to the sink, the rest through the callback.
        Once a rebalance has ended (recovery done, seeks made), the partitions assigned are
        prepared first (`direct_prepare`), like a batch (a rebalance waits for it)."""
        if self.flow_active and not self.app.rebalancing:
            await self._anchor()
        if self.direct_prepare is not None and self.flow_active and not self.app.rebalancing:
            direct = self.direct_topics
            assigned = {tp.partition for tp in self.assignment() if tp.topic in direct}
            if assigned:
                self.direct_idle.clear()
                try:
                    await self.direct_prepare(assigned)
                finally:
                    self.direct_idle.set()
        records, active = await next_records(self, 0.0 if self.direct_behind() else 1.0)
        if self.should_stop:
            return
        if not records:
            if self.direct_settle is not None and self.flow_active and not self.app.rebalancing:
                self.direct_idle.clear()
                try:
                    done = await self.direct_settle()
                finally:
                    self.direct_idle.set()
                if done:
                    ack(self, done, self.direct_tps)
            return
        generation = self.app.consumer_generation_id
        direct = self.direct_topics
        changelogs = changelog_tables(self.app)  # topic name -> table
        read_offset = read_offsets(self)
        monitor = self.app.monitor
        batch: list[Record] = []
        tps: dict[tuple[str, int], Any] = {}  # the client's own partition objects, for acks
        for tp, recs in records.items():
            if not self.flow_active or self.app.consumer_generation_id != generation:
                # A rebalance began: Faust seeks the inputs back to the committed offsets.
                await self._rewind_restores(records, changelogs)
                return
            if active is not None and tp not in active and tp not in buffered_partitions(self):
                await self._rewind_restores({tp: recs}, changelogs)
                continue
            if not recs:
                continue
            monitor.track_tp_end_offset(tp, self.highwater(tp))
            if tp.topic in changelogs:
                self._restore(tp, recs)
                continue
            if tp.topic in direct:
                tps[tp.topic, tp.partition] = self.direct_tps[tp.topic, tp.partition] = tp
                r_offset = read_offset.get(tp)
                for rec in recs:
                    if r_offset is None or rec.offset >= r_offset:
                        batch.append(
                            Record(tp.topic, tp.partition, rec.offset, rec.timestamp,
                                   rec.key, rec.value, tuple(rec.headers or ()))
                        )  # fmt: skip
                continue
            await self._through_callback(tp, recs)
        if not batch:
            return
        if not await self._learn_starts(tps.values(), generation):
            return
        assert self.direct_sink is not None
        batch = in_time_order(batch)  # the clock moves past an event within its own batch
        for rec in batch:  # before the sink: a seek back inside it must win
            read_offset[tps[rec.topic, rec.partition]] = rec.offset
        self.direct_idle.clear()
        try:
            done = await self.direct_sink(batch)
        finally:
            self.direct_idle.set()
        ack(self, done, self.direct_tps)  # what Faust's commit reads
        if commit_due(self):
            self.commit_in_background()

    def commit_in_background(self) -> None:
        """Faust's commit (a producer flush, then the offsets acknowledged so far) as a task,
        while the next fetch is processed. Inline, it held the fetch loop for the whole round
        trip (the producer's last requests acknowledged, then the offset commit), and every
        event fetched meanwhile waited for it (p99 latency at 6,400 events/s, alternating
        runs: 200 and 228 ms inline, 186 and 121 ms as a task).

        It stays safe: the offsets are chosen before the flush, so every write and send of the
        records they cover is in the producer when it flushes; sends queued by later batches
        join the producer meanwhile and are covered by the next commit. Faust lets one commit
        run at a time (a rebalance's or the interval's waits for this one); a commit due while
        one is running is skipped (the next one covers its offsets). An error crashes the
        consumer, as it would have inline."""
        if self.committing is not None and not self.committing.done():
            return
        self.committing = asyncio.ensure_future(self._commit_or_crash())

    async def _commit_or_crash(self) -> None:
        try:
            await self.commit()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await self.crash(exc)

    async def _anchor(self) -> None:
        """Once per generation, after the rebalance: each assigned direct topic-partition
        with nothing committed is read from its first offset (Faust seeks only those with a
        committed offset). The consumer otherwise keeps its position over a fetch that the
        rebalance dropped: later records reveal the hole (`_learn_starts`), but when the
        dropped records were a partition's last, nothing came after them and they were never
        processed (`make chaos` b: input left unprocessed). Records read again are skipped by
        the customers' folded offsets."""
        generation = self.app.consumer_generation_id
        if self._anchored_generation == generation or not self.direct_topics:
            return
        direct, committed = self.direct_topics, committed_offsets(self)
        tps = [tp for tp in self.assignment() if tp.topic in direct and committed.get(tp) is None]
        if tps and not await self._learn_starts(tps, generation):
            return  # another rebalance began: the next generation anchors
        for tp in tps:
            start = self.start_offsets.get(tp)
            if start is not None:
                await self.seek(tp, start)
        self._anchored_generation = generation

    async def _learn_starts(self, tps: Iterable[Any], generation: int) -> bool:
        """The first offsets of these topic-partitions that have no committed offset, asked
        of the broker once per generation (`start_offsets`), so a batch's continuity and the
        commit rule have an anchor; False when a rebalance began meanwhile (drop the batch).

        A partition with nothing committed resumes at its first offset, and the consumer may
        hand over later records first: it kept its position over a fetch that a rebalance
        dropped. Anchored, those records are held back and read again from the first offset
        (`stream.core.commit.Positions`), and no commit passes an offset not processed."""
        if self._starts_generation != generation:
            self.start_offsets.clear()
            self._starts_generation = generation
        committed = committed_offsets(self)
        missing = [
            tp for tp in tps if committed.get(tp) is None and tp not in self.start_offsets
        ]
        if missing:
            try:
                self.start_offsets.update(await self.earliest_offsets(*missing))
            except Exception as exc:  # the batch goes on without them, asked again next time
                log.warning("first offsets of %d partitions unknown: %s", len(missing),
                            type(exc).__name__)  # fmt: skip
        return self.flow_active and self.app.consumer_generation_id == generation

    def _restore(self, tp: TP, recs: Sequence[Any]) -> None:
        """A fetch of a table changelog (recovery, standbys) to its table in one batch
        (`stream.adapter.restore`), instead of one record at a time through Faust's path."""
        read_offset = read_offsets(self)
        r_offset = read_offset.get(tp)
        fresh = [rec for rec in recs if r_offset is None or rec.offset >= r_offset]
        if fresh:
            read_offset[tp] = fresh[-1].offset
            self.restored += restore_fetch(self.app.tables.recovery, tp, fresh)

    async def _rewind_restores(
        self, records: Mapping[Any, Sequence[Any]], changelogs: Mapping[str, Any]
    ) -> None:
        """The changelog partitions of a fetch dropped unread go back to where their restore
        stands, where recovery's own seek puts them (`faust_private.restored_through`).

        A fetch in flight when a rebalance begins can return after recovery has sought the
        changelog partitions it restores, with those very records, and is dropped (the flow
        is suspended until recovery resumes it): the client's position is then past records
        nobody applied, recovery waits for them forever ("No event received for active tp
        ... since recovery start") and the worker is never ready again. Seen when a second
        worker joins (`make chaos` c, one run in five of the two-worker HTTP test). A record
        read twice is skipped by the restored offset; a partition no longer assigned is left
        to the next assignment's recovery."""
        recovery = self.app.tables.recovery
        for tp, recs in records.items():
            if not recs or tp.topic not in changelogs:
                continue
            restored = restored_through(recovery, tp)
            if restored is None or restored >= recs[-1].offset:
                continue  # not restored here, or the dropped records are applied already
            position = max(restored, 0)  # the last record restored is read again, as Faust does
            try:
                await self.seek(tp, position)
            except IllegalStateError:
                continue  # revoked meanwhile
            self.rewound += 1
            log.info("changelog %s-%d read again from offset %d: its fetch was dropped",
                     tp.topic, tp.partition, position)  # fmt: skip

    async def _through_callback(self, tp: TP, recs: Sequence[Any]) -> None:
        """Faust's per-message path (the topics neither direct nor a table changelog)."""
        read_offset = read_offsets(self)
        callback = self.callback
        for rec in recs:
            if not self.flow_active:
                return
            r_offset = read_offset.get(tp)
            if r_offset is None or rec.offset >= r_offset:
                await self.wait_first(callback(to_message(self, tp, rec)), self.suspend_flow.wait())
                read_offset[tp] = rec.offset


class DurableProducer(ProducerSettingsHook, Producer):
    """Faust's aiokafka producer, always idempotent with acks=all (`DURABLE_PRODUCER`): Faust
    asks for idempotence only inside Kafka transactions, but the worker's changelog and
    decision writes are retried too, after a lost acknowledgement or a leader
    moving to another broker, and must not land twice."""

    extra_producer_settings = DURABLE_PRODUCER


class DurableTransport(Transport):
    """The aiokafka transport with `DurableProducer` and Faust's own consumer."""

    Producer = DurableProducer


class LeanTransport(DurableTransport):
    """The aiokafka transport with `LeanConsumer` (`LeanApp.new_transport` picks it)."""

    Consumer = LeanConsumer


class DirectTransport(DurableTransport):
    """The aiokafka transport with `DirectConsumer`."""

    Consumer = DirectConsumer


class LeanApp(TransportHook, faust.App):
    """`faust.App` whose consumer is `DirectConsumer` (`drain="direct"`) or `LeanConsumer`
    (`drain="lean"`) for Kafka brokers; `drain="faust"` keeps Faust's. Every Kafka transport
    produces with `DurableProducer`."""

    drain = "direct"
    fetch_max_wait_ms: int | None = None  # the consumer's; None: Faust's 1,500 ms
    fetch_min_bytes: int | None = None  # the consumer's; None: aiokafka's 1 byte

    def new_transport(self) -> TransportT | None:
        """One of the transports above for a Kafka broker; None (Faust's choice) otherwise."""
        url = self.conf.broker_consumer[0]
        if url.scheme in {"kafka", "aiokafka"}:
            if self.drain == "direct":
                return DirectTransport(self.conf.broker_consumer, self)
            if self.drain == "lean":
                return LeanTransport(self.conf.broker_consumer, self)
            return DurableTransport(self.conf.broker_consumer, self)
        return None
