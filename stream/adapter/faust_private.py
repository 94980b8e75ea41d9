"""Every private name of Faust, mode and aiokafka that engage relies on, in one place.

The worker goes below Faust's public API where Faust's own path costs too much or is wrong for
these topics: the direct drain reads and acknowledges records with Faust's offset bookkeeping
(`stream.adapter.drain`), the changelog restore does Faust's recovery bookkeeping a fetch at a
time (`stream.adapter.restore`), a table write names its partition through the context
variable Faust reads it from (`stream.adapter.tables`), the commit rule for plain append-only
topics replaces Faust's (`stream.core.commit.next_commit`), and a freshly started aiokafka consumer
refreshes its metadata. Those names are private: a Faust, mode or aiokafka release may rename
or remove any of them without notice. So they are all here, behind small public functions and
three base classes, and nowhere else in the repository (`tests/adapter/test_faust_private.py` lists
them and fails, naming the missing one, when an installed release no longer has one).

The three base classes override a private hook and call a public method of the subclass:
`FetchLoopHook` (the consumer's fetcher loop), `ProducerSettingsHook` (the producer's extra
settings) and `TransportHook` (the app's transport). List them before Faust's class in the
bases. `install_commit_rule` is the one monkey-patch of the repository.

Nothing from Faust, mode or aiokafka is imported when this module is imported (only inside the
functions that need it): the changelog rebuild (`stream.serving`) and the command-line tools
use the aiokafka helper without loading Faust.

On a Faust (or mode, aiokafka) upgrade: run `tests/adapter/test_faust_private.py` (every name still
exists), then the drain, restore, tables and shell tests against Kafka, and read the new
release's `Consumer._drain_messages`, `Consumer._new_offset`, `Consumer._add_gap`,
`Recovery._slurp_changelogs` and `Producer._settings_extra` against the copies and
replacements here: a change of their logic is not caught by a name check.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Mapping, MutableMapping, Sequence
from contextvars import ContextVar, Token
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar

from stream.core.commit import next_commit

if TYPE_CHECKING:
    from stream.core.engine import Record

# --- the consumer's offsets (faust.transport.consumer.Consumer) --------------------------------


def committed_offsets(consumer: Any) -> Mapping[Any, int | None]:
    """The offset committed per topic-partition (the next one to read after a restart or a
    rebalance): where the worker resumes. Empty for an object that is not a Faust consumer."""
    return getattr(consumer, "_committed_offset", {})  # type: ignore[no-any-return]


def resume_offset(consumer: Any, tp: Any) -> int | None:
    """Where `tp` resumes: its committed offset or, nothing committed yet, its first offset
    (`start_offsets`, learnt by the direct drain: with `auto_offset_reset=earliest` a group
    without a commit starts there). None while neither is known.

    Without the first offset, a partition never committed had no anchor: records fetched
    before a rebalance and dropped by it were skipped when the consumer kept its position,
    the next records looked like the start, and the commit passed the dropped ones (events
    lost, `make chaos` b)."""
    committed = getattr(consumer, "_committed_offset", {}).get(tp)
    if committed is None:
        return getattr(consumer, "start_offsets", {}).get(tp)  # type: ignore[no-any-return]
    return committed  # type: ignore[no-any-return]


def read_offsets(consumer: Any) -> MutableMapping[Any, int | None]:
    """The last offset read per topic-partition: Faust's fetcher drops records at or below it
    (a record fetched twice), and a seek back sets it. Writable: the direct drain records what
    it hands over, as Faust's own loop does."""
    return consumer._read_offset  # type: ignore[no-any-return]


def buffered_partitions(consumer: Any) -> set[Any]:
    """The partitions whose records Faust's streams still buffer: a fetch of theirs is handed
    over even when flow control would skip the partition."""
    return consumer._buffered_partitions  # type: ignore[no-any-return]


async def next_records(consumer: Any, timeout: float) -> tuple[Mapping[Any, Any], Any]:
    """One fetch (`getmany`) as Faust's fetcher makes it: (records per topic-partition, the
    partitions active for flow control or None)."""
    return await consumer._wait_next_records(timeout)  # type: ignore[no-any-return]


def to_message(consumer: Any, tp: Any, record: Any) -> Any:
    """A fetched aiokafka record as the Faust message its callback takes."""
    return consumer._to_message(tp, record)


def ack(consumer: Any, records: Sequence[Record], tps: Mapping[tuple[str, int], Any]) -> None:
    """`Consumer.ack` for processed records, a batch at once: what Faust's commit reads. `tps`
    maps (topic, partition) to the client's own partition objects (a transaction's offsets
    must be aiokafka's type). Offsets below the committed one and repeats are ignored."""
    from mode.utils.futures import notify

    committed = consumer._committed_offset
    acked = consumer._acked
    acked_index = consumer._acked_index
    n = 0
    for rec in records:
        tp = tps[rec.topic, rec.partition]
        offset = rec.offset
        c = committed.get(tp)
        if c is None or offset >= c:
            index = acked_index[tp]
            if offset not in index:
                index.add(offset)
                acked[tp].append(offset)
                n += 1
    consumer._n_acked += n
    notify(consumer._waiting_for_ack)


def commit_due(consumer: Any) -> bool:
    """True (and the count restarted) once `broker_commit_every` records were acknowledged
    since the last commit: the caller commits then, as Faust's stream does."""
    every = consumer._commit_every
    if every is not None and consumer._n_acked >= every:
        consumer._n_acked = 0
        return True
    return False


def _gapless_new_offset(self: Any, tp: Any) -> int | None:
    """Faust's `Consumer` method choosing the offset to commit, by `next_commit`."""
    acked = self._acked[tp]
    if not acked:
        return None
    offset, keep = next_commit(acked, resume_offset(self, tp))
    if offset is not None:
        index = self._acked_index[tp]
        index.intersection_update(keep)
    acked[:] = keep
    return offset


async def _no_gap(self: Any, tp: Any, offset_from: int, offset_to: int) -> None:
    """Faust's `Consumer` method recording a gap: our topics have none; a jump is a record
    read ahead."""


def install_commit_rule() -> None:
    """Commit by `stream.core.commit.next_commit` in every Faust consumer of this process,
    and record no gaps (idempotent). Right for plain append-only topics written without
    transactions (at_least_once): `stream.core.commit.next_commit` says why Faust's is not."""
    from faust.transport.consumer import Consumer

    Consumer._new_offset = _gapless_new_offset  # type: ignore[method-assign]
    Consumer._add_gap = _no_gap  # type: ignore[method-assign]


# --- services (mode.Service) and the app ------------------------------------------------------


def stopping(service: Any) -> bool:
    """True once a mode service (a consumer, a fetcher) was stopped or crashed."""
    return bool(service._stopped.is_set() or service._crashed.is_set())


def started_consumer(app: Any) -> Any:
    """The app's consumer, or None before the worker created it (`app.consumer` would create
    it)."""
    return app._consumer


def changelog_tables(app: Any) -> Mapping[str, Any]:
    """The app's tables by the name of their changelog topic."""
    return app.tables._changelogs  # type: ignore[no-any-return]


# --- table recovery (faust.tables.recovery.Recovery) -------------------------------------------


def _tracked(recovery: Any, tp: Any) -> tuple[MutableMapping[Any, int], dict[Any, float]] | None:
    """Recovery's restored offsets and record arrival times for changelog partition `tp`: the
    active ones (owned) or the standby ones (mirrored); None for a partition it tracks not."""
    if tp in recovery.active_tps:
        return recovery.active_offsets, recovery._active_events_received_at
    if tp in recovery.standby_tps:
        return recovery.standby_offsets, recovery._standby_events_received_at
    return None


def restored_offsets(recovery: Any, tp: Any, now: float) -> MutableMapping[Any, int] | None:
    """The offsets restored so far for changelog partition `tp` (active: owned, or standby:
    mirrored), having noted that a record of it arrived at `now` (monotonic; Recovery's stall
    warning reads it). None for a partition neither restored nor mirrored here."""
    tracked = _tracked(recovery, tp)
    if tracked is None:
        return None
    offsets, received_at = tracked
    received_at[tp] = now
    return offsets


def restored_through(recovery: Any, tp: Any) -> int | None:
    """The last offset of changelog partition `tp` that recovery restored (owned) or mirrored
    (standby) here, -1 when none yet; None for a partition it neither restores nor mirrors.
    Recovery's own seek reads on from it (`Recovery._seek_offsets`: that offset, or 0)."""
    tracked = _tracked(recovery, tp)
    if tracked is None:
        return None
    offset = tracked[0].get(tp)
    return -1 if offset is None else int(offset)


def after_restore(recovery: Any, now: float) -> None:
    """What Recovery does after applying changelog records: note the flush, end the recovery
    once every active partition is restored up to its highwater (the worker may then say
    ready), and signal the standbys ready once they have caught up."""
    recovery._last_flush_at = now
    if recovery.in_recovery and not recovery.need_recovery():
        # What `Recovery._slurp_changelogs` does after the last record of the last partition.
        recovery.flush_buffers()
        recovery._set_recovery_ended()
        recovery.signal_recovery_end.set()
    tables = recovery.tables
    standby_ready = recovery._standbys_span is None and tables.standbys_ready
    if not standby_ready and not recovery.standby_remaining_total():
        if recovery._standbys_span:
            from faust.utils.tracing import finish_span

            finish_span(recovery._standbys_span)
            recovery._standbys_span = None
        tables.on_standbys_ready()


# --- tables (faust.streams, faust.stores.rocksdb) ----------------------------------------------

_event_var: ContextVar[Any] | None = None  # faust.streams' current event, once imported


def set_current_event(event: Any) -> Token[Any]:
    """Make `event` the current event of this task, as a stream does while it handles one: a
    table reads the changelog partition of a write (and with `rocksdb://` the database) from
    it. Undo with `reset_current_event(token)`."""
    global _event_var
    var = _event_var
    if var is None:
        from faust.streams import _current_event as var

        _event_var = var
    return var.set(weakref.ref(event))


def reset_current_event(token: Token[Any]) -> None:
    """Restore the current event `set_current_event` replaced."""
    token.var.reset(token)


def store_databases(store: Any) -> Mapping[int, Any] | None:
    """A `rocksdb://` table store's open databases by partition (one per partition assigned or
    standby here); None for a store that keeps none (`memory://`)."""
    return getattr(store, "_dbs", None)


# --- aiokafka ---------------------------------------------------------------------------------


async def refresh_metadata(consumer: Any) -> None:
    """Fetch the cluster's metadata again for a started aiokafka consumer, so that
    `partitions_for_topic` knows a topic created after the consumer started."""
    await consumer._client.force_metadata_update()


# --- base classes overriding a private hook ---------------------------------------------------


class FetchLoopHook:
    """Base of a Faust consumer whose fetcher loop calls `fetch_once()` repeatedly instead of
    Faust's own per-message hand-over, when `fetches_directly()` says so (else Faust's loop
    runs). List it before Faust's consumer class in the bases."""

    def fetches_directly(self) -> bool:
        """Whether the fetcher loop is this class's (`fetch_once`) rather than Faust's."""
        return False

    async def fetch_once(self) -> None:
        """One fetch and its hand-over (the subclass's)."""
        raise NotImplementedError

    def fetch_max_wait_ms(self) -> int | None:
        """How long the broker may hold a fetch request that finds no new record (None:
        Faust's fixed 1,500 ms)."""
        return None

    def fetch_min_bytes(self) -> int | None:
        """How much new data the broker gathers before it answers a fetch, unless the wait
        passes first (None: aiokafka's 1 byte, an answer per record or so when traffic is
        live)."""
        return None

    def _new_consumer_thread(self) -> Any:
        """Faust's consumer thread, whose aiokafka consumer waits `fetch_max_wait_ms()` at
        most for a fetch (Faust builds it with `fetch_max_wait_ms=1500`, no setting) and asks
        for `fetch_min_bytes()` of data (Faust leaves aiokafka's 1 byte).

        aiokafka fetches only the partitions with no record buffered, one request at a time
        per broker: a request made while the busy partitions still had records buffered
        covers only drained ones and, with no new record, is held the whole wait, while the
        busy partitions, consumed meanwhile, wait for it to return. Catching up a backlog
        (a restart, a replay) stalled up to that long, many times.

        With 1 byte, a live worker's fetches each bring the few records produced since the
        last one: the consumer thread parses an answer for every partition many times a
        second, under the same interpreter lock as the engines. Gathering some data per
        fetch, within a short wait, costs a few milliseconds of latency and saves about a
        tenth of the worker's CPU per live event (docs/operations-throughput.md)."""
        thread = super()._new_consumer_thread()  # type: ignore[misc]
        wait, least = self.fetch_max_wait_ms(), self.fetch_min_bytes()
        if wait is not None or least is not None:
            create = thread._create_consumer

            def create_fetching(loop: Any) -> Any:
                client = create(loop)
                # read when the client starts its fetcher
                if wait is not None:
                    client._fetch_max_wait_ms = wait
                if least is not None:
                    client._fetch_min_bytes = least
                return client

            thread._create_consumer = create_fetching
        return thread

    async def _drain_messages(self, fetcher: Any) -> None:  # pragma: no cover (Kafka tests)
        """Faust's fetcher loop (`Consumer._drain_messages`) calling `fetch_once`."""
        me: Any = self
        if not self.fetches_directly():
            await super()._drain_messages(fetcher)  # type: ignore[misc]
            return
        from faust.transport.consumer import CONSUMER_FETCHING

        consumer_should_stop = me._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                me.diag.set_flag(CONSUMER_FETCHING)
                try:
                    await self.fetch_once()
                finally:
                    me.diag.unset_flag(CONSUMER_FETCHING)
                await me.sleep(0)
        except me.consumer_stopped_errors:
            if me.transport.app.should_stop:
                return
            raise
        except asyncio.CancelledError:
            if me.transport.app.should_stop:
                return
            raise


class ProducerSettingsHook:
    """Base of a Faust producer whose aiokafka settings include `extra_producer_settings` on
    top of Faust's own extras (Faust adds idempotence only inside transactions). List it
    before Faust's producer class in the bases."""

    extra_producer_settings: ClassVar[Mapping[str, Any]] = MappingProxyType({})

    def _settings_extra(self) -> Mapping[str, Any]:
        return {**super()._settings_extra(), **self.extra_producer_settings}  # type: ignore[misc]


class TransportHook:
    """Base of a Faust app that picks its own transport (`new_transport`), or Faust's when
    that returns None. List it before `faust.App` in the bases."""

    def new_transport(self) -> Any | None:
        """The app's transport, or None for Faust's choice by the broker URL."""
        return None

    def _new_transport(self) -> Any:
        transport = self.new_transport()
        if transport is None:
            return super()._new_transport()  # type: ignore[misc]
        return transport
