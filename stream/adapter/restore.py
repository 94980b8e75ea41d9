"""Changelog restore a fetch at a time: what bounded a first start at about 10 MiB/s.

Faust restores a table (a worker's first start, a partition gained in a rebalance, a standby
replica keeping up) by handing every changelog record, one at a time, through the consumer's
callback to the conductor, which decodes it into an event and puts it on the changelog queue;
the `Recovery` service takes each event off the queue (`asyncio.wait_for`: a task and a timer
per record), records its offset, buffers it, and after every record recomputes how much is
left on every partition. Profiled on a first start, that path costs about 150 µs per record
on the development machine: with customers of 1.7 KiB, about 10 MiB/s, whatever the store.
Writing to the store is a small part of it.

`restore_fetch` does the same bookkeeping once per fetched partition instead of once per
record: the records of a changelog partition being restored (active or standby) go to the
table's store in one `apply_changelog_batch` (one RocksDB `WriteBatch` per partition with
`rocksdb://`), the partition's restored offset moves to the last of them, and the end of
recovery is checked once. What is applied, and in what order, is what Faust's path applies:
records at or below the offset already restored are skipped, and whatever Faust's own path
buffered for the table is applied first. The end of recovery is signalled exactly as Faust's
`Recovery` signals it (every active partition restored up to its highwater, the buffers
flushed), so the worker is ready only once its state is complete.

The direct drain (`stream.adapter.drain.DirectConsumer`) calls it for the records of every
table changelog; the other drains keep Faust's path.

Recovery's private bookkeeping (when a partition last received a record, the end of recovery,
the standbys' tracing span) is reached through `stream.adapter.faust_private`.

Imports: `stream.adapter.faust_private` only (an adapter module).
"""

from __future__ import annotations

from collections.abc import Sequence
from time import monotonic
from typing import Any

from stream.adapter.faust_private import after_restore, restored_offsets


class RestoredRecord:
    """A fetched changelog record as the stores' `apply_changelog_batch` reads an event:
    `key`, `value` and a `message` with `tp`, `partition`, `offset`, `key` and `value`.
    The tables here are raw bytes -> bytes, so the stored key and value are the record's."""

    __slots__ = ("key", "offset", "partition", "tp", "value")

    def __init__(self, tp: Any, record: Any) -> None:
        self.tp = tp
        self.partition = record.partition
        self.offset = record.offset
        self.key = record.key
        self.value = record.value

    @property
    def message(self) -> RestoredRecord:
        """The record itself: it carries what an event's message does."""
        return self


def restore_fetch(recovery: Any, tp: Any, records: Sequence[Any]) -> int:
    """Apply one fetch of changelog partition `tp` (aiokafka records, in offset order) to its
    table and advance the recovery's bookkeeping as Faust's per-record loop would. Returns the
    number of records applied (0 for a partition neither restored nor mirrored here: a record
    fetched before its partition was revoked)."""
    table = recovery.tp_to_table.get(tp)
    if table is None:
        return 0
    now = monotonic()
    offsets = restored_offsets(recovery, tp, now)
    if offsets is None:
        return 0
    seen = offsets.get(tp, None)
    batch = [RestoredRecord(tp, rec) for rec in records if seen is None or rec.offset > seen]
    if not batch:
        return 0
    buffered = recovery.buffers.get(table)
    if buffered:  # anything Faust's own path buffered is older: it goes first
        table.apply_changelog_batch(buffered)
        buffered.clear()
    table.apply_changelog_batch(batch)
    offsets[tp] = batch[-1].offset
    after_restore(recovery, now)
    return len(batch)
