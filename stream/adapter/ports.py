"""The commit protocol's ports on Faust: the tables, the consumer, and the at-least-once sink.

`stream.core.commit.Checkpoint` orders a batch's steps; these classes carry them out with
Faust's objects:

* `FaustTables`: reads of the two `PartitionedTable`s (`customers`, `control`).
* `FaustSource`: the consumer's committed offsets, highwater marks and seeks.
* `AtLeastOnceSink` (the one processing guarantee, `at_least_once`): each write is stored in
  the table and its changelog record, like every output, queued on the `Sender`, which hands
  them to the producer in queue order (`flush`); Faust flushes the producer before each offset
  commit. (Kafka transactions, `exactly_once`, were removed: they lost events in the kill -9
  experiments, see docs/reliability.md; a transactional guarantee would be another sink.)

Imports: faust types and the adapter's table and sender (an adapter module).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from faust.types import TP

from stream.adapter.faust_private import resume_offset
from stream.adapter.sender import Sender
from stream.adapter.tables import PartitionedTable
from stream.core.commit import Done, Table
from stream.core.engine import Output

log = logging.getLogger("engage")


class FaustTables:
    """The worker's tables, as the protocol reads them."""

    def __init__(self, *, customers: PartitionedTable, control: PartitionedTable) -> None:
        self.tables = {Table.CUSTOMERS: customers, Table.CONTROL: control}
        self.customers = customers

    def read(self, table: Table, key: bytes, partition: int) -> bytes | None:
        """A stored value (with `rocksdb://`, from the partition's own database)."""
        return self.tables[table].read(key, partition)

    def scan(self, partitions: list[int], *, chunk: int) -> Any:
        """The stored customers of `partitions`, a chunk at a time."""
        return self.customers.scan(partitions, chunk=chunk)


class FaustSource:
    """The app's consumer, as the protocol sees it."""

    def __init__(self, app: Any, inputs: Iterable[str]) -> None:
        self.app = app
        self.inputs = list(inputs)

    def committed(self, topic: str, partition: int) -> int | None:
        """Where a topic-partition resumes: its committed offset or, nothing committed yet,
        its first offset (`faust_private.resume_offset`); None while neither is known."""
        return resume_offset(self.app.consumer, TP(topic, partition))

    def highwaters(self, partition: int) -> dict[str, int | None]:
        """Per input topic, the end offset as last fetched, or None (not assigned yet, or no
        fetch answered)."""
        consumer = self.app.consumer
        out: dict[str, int | None] = {}
        for topic in self.inputs:
            try:
                out[topic] = consumer.highwater(TP(topic, partition))
            except Exception:
                out[topic] = None
        return out

    async def seek(self, topic: str, partition: int, offset: int) -> None:
        """Read a topic-partition again from `offset`."""
        await self.app.consumer.seek(TP(topic, partition), offset)


def _answered(done: Done) -> Any:
    """A producer callback (called with the send's future) that tells `done` how it went."""

    def callback(fut: Any) -> None:
        try:
            ok = not fut.cancelled() and fut.exception() is None
        except Exception:
            ok = False
        done(ok)

    return callback


class AtLeastOnceSink:
    """Writes and sends queued on the `Sender`, handed to the producer in order by `flush`."""

    def __init__(
        self,
        *,
        app: Any,
        sender: Sender,
        tables: FaustTables,
        topic_names: Mapping[str, str],
    ) -> None:
        self.app = app
        self.sender = sender
        self.tables = tables.tables
        self.topic_names = topic_names

    def write(self, table: Table, key: bytes, value: bytes | None, partition: int) -> None:
        """Store locally, and queue the changelog record (its offset recorded once sent)."""
        t = self.tables[table]
        t.store(key, value, partition)
        self.sender.queue(t.changelog_name, key=key, value=value, partition=partition,
                          callback=t.persisted if t.persists_offsets else None)  # fmt: skip

    def send(self, out: Output, done: Done | None) -> None:
        """Queue an output on its topic."""
        self.sender.queue(self.topic_names[out.name], key=out.key, value=out.value,
                          headers=out.headers,
                          callback=_answered(done) if done is not None else None)  # fmt: skip

    async def flush(self) -> None:
        """Hand what is queued to the producer, in order."""
        await self.sender.send()

    def flush_later(self) -> None:
        """Writes made between batches (a projector callback): sent by a task."""
        self.sender.send_later()

    async def barrier(self) -> None:
        """Every send so far is acknowledged by Kafka."""
        await self.sender.send()
        await self.app.producer.flush()
