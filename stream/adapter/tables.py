"""A Faust table written with an explicit changelog partition, from anywhere in the worker.

Faust finds the changelog partition of a table write (and, with `rocksdb://`, the database of
a read or write) through `current_event()`, which is set only in the task iterating a stream, one
message at a time. The commit protocol writes each changed customer once per batch from the
direct drain's fetch loop, and reads the table when it starts a partition: no current event
is set there. So every access here names its partition, the input partition the customer
lives on, and `_on_partition` presents Faust with a stand-in event on it (made the current event by
`stream.adapter.faust_private.set_current_event`). `use_partitioner=True` would instead
re-hash the key with the producer's partitioner, which is wrong for producers whose
partitioner differs from the Java client's.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import faust

from stream.adapter.faust_private import reset_current_event, set_current_event, store_databases


class _Message:
    __slots__ = ("partition", "topic")

    def __init__(self, topic: str, partition: int) -> None:
        self.topic = topic
        self.partition = partition


class _PartitionEvent:
    """Just enough of a Faust event for a table to know the partition."""

    __slots__ = ("__weakref__", "message")

    def __init__(self, topic: str, partition: int) -> None:
        self.message = _Message(topic, partition)


class PartitionedTable(faust.Table):  # type: ignore[misc]
    """A bytes -> bytes table whose reads and writes name their partition."""

    source_topic: str = ""  # an input topic co-partitioned with the changelog

    def __init__(self, *args: Any, source_topic: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.source_topic = source_topic
        self._events: dict[int, _PartitionEvent] = {}

    @contextmanager
    def _on_partition(self, partition: int) -> Iterator[None]:
        event = self._events.get(partition)
        if event is None:
            event = self._events[partition] = _PartitionEvent(self.source_topic, partition)
        token = set_current_event(event)
        try:
            yield
        finally:
            reset_current_event(token)

    def partition_for_key(self, key: Any) -> int | None:
        """The partition named by the access in progress (co-partitioning of the changelog
        with the inputs is checked by `ensure_topics` before the worker starts)."""
        from faust.streams import current_event

        event = current_event()
        if event is None:
            raise TypeError("PartitionedTable: write with put(key, value, partition)")
        return int(event.message.partition)

    def store(self, key: bytes, value: bytes | None, partition: int) -> None:
        """Write `key` (None: delete it) to the local store only: the caller sends the
        changelog record itself (`stream.adapter.sender`), then calls `persisted` with it."""
        with self._on_partition(partition):
            if value is not None:
                self.data[key] = value
            elif key in self.data:
                del self.data[key]

    @property
    def changelog_name(self) -> str:
        """The changelog topic's name."""
        return str(self.changelog_topic.get_topic_name())

    @property
    def persists_offsets(self) -> bool:
        """True with `rocksdb://` (one database per partition, which keeps the offset of the
        last changelog record it holds); `memory://` keeps none, so `persisted` is not needed."""
        return store_databases(self.data) is not None

    def persisted(self, fut: Any) -> None:
        """A changelog record sent by `store`'s caller is in Kafka: with `rocksdb://` the
        store records its offset, so a restart reads the changelog only from there (what
        Faust's own changelog callback does outside transactions)."""
        if fut.cancelled() or fut.exception() is not None:
            return
        meta = fut.result()
        self.data.set_persisted_offset(meta.topic_partition, meta.offset)

    def read(self, key: bytes, partition: int) -> bytes | None:
        """The value of `key` on `partition`, or None."""
        with self._on_partition(partition):
            return self.data.get(key)  # type: ignore[no-any-return]

    def scan(
        self, partitions: Iterable[int], *, chunk: int = 2000
    ) -> Iterator[list[tuple[bytes, bytes]]]:
        """The stored (key, value) pairs of `partitions`, `chunk` at a time (`scan_store`)."""
        return scan_store(self.data, partitions, chunk=chunk)


def scan_store(
    store: Any, partitions: Iterable[int], *, chunk: int = 2000
) -> Iterator[list[tuple[bytes, bytes]]]:
    """The stored (key, value) pairs of a Faust table store, `chunk` at a time, for reads that
    must neither hold the event loop nor copy a whole table: each chunk is read as the table is
    when it is read, so the caller may await between chunks while the table is written.

    `rocksdb://` keeps one database per partition: each of `partitions` is read in key order,
    with a fresh iterator per chunk (none is held across an await, so a revoked partition's
    database can close), and a partition revoked meanwhile ends its part of the scan. A scan
    does not fill RocksDB's block cache (it would push out what point reads need).
    `memory://` keeps one dict for all partitions: its keys are listed once (references only)
    and each value is read with its chunk; entries of every partition come (the caller sorts
    them by the partition each state records)."""
    dbs = store_databases(store)
    if dbs is None:  # memory://
        data = store.data
        keys = list(data)
        for i in range(0, len(keys), chunk):
            out = []
            for key in keys[i : i + chunk]:
                value = data.get(key)
                if value is not None:
                    out.append((key, value))
            yield out
        return
    import rocksdict  # only with rocksdb://: the `rocksdb` extra

    options = rocksdict.ReadOptions()
    options.fill_cache(False)
    for partition in partitions:
        after: bytes | None = None
        while True:
            db = dbs.get(partition)
            out, more = _rocksdb_chunk(db, store.offset_key, after, chunk, options)
            del db  # no database held across the caller's awaits
            if out:
                after = out[-1][0]
                yield out
            if not more:
                break


def _rocksdb_chunk(
    db: Any, skip: bytes, after: bytes | None, chunk: int, options: Any
) -> tuple[list[tuple[bytes, bytes]], bool]:
    """Up to `chunk` entries of a partition's database after key `after`, and whether more
    may follow; (nothing, False) once the database is gone (revoked)."""
    if db is None:
        return [], False
    out: list[tuple[bytes, bytes]] = []
    for key, value in db.items(from_key=after, read_opt=options):
        if key in (after, skip):
            continue
        out.append((key, value))
        if len(out) >= chunk:
            return out, True
    return out, False


class PartitionStore:
    """One partition's view of a `PartitionedTable`: the engine's `CustomerStore`."""

    __slots__ = ("partition", "table")

    def __init__(self, table: PartitionedTable, partition: int) -> None:
        self.table = table
        self.partition = partition

    def get(self, key: bytes) -> bytes | None:
        """The encoded state of a customer of this partition, or None."""
        return self.table.read(key, self.partition)
