"""An in-process driver for the partition engines: dicts for tables, lists for topics.

The analogue of Kafka Streams' TopologyTestDriver. Tests, the backtest and the core-only
benchmark pipe records through the same commit protocol as the worker (`stream.core.commit`:
one `Checkpoint`, its steps in the same order), with ports that are plain dicts and lists and
never wait. Sends are acknowledged when the caller says so (`acknowledge`, or `pipe(ack=True)`);
like in the worker, an acknowledged decision leaves its outbox in the next batch's write
(`settle` runs a batch without records). `crash()` forgets everything in memory, including the
acknowledgements not folded into a batch yet, like a `kill -9`.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from stream.core.commit import Checkpoint, Done, Hooks, Table, drive
from stream.core.engine import (
    BatchResult,
    EngineConfig,
    Output,
    PartitionEngine,
    Projection,
    Record,
)


@dataclass
class MemoryDriver:
    """The commit protocol over an in-memory customers table, control table and topics."""

    config: EngineConfig
    projection: Projection | None = None
    customers: dict[bytes, bytes] = field(default_factory=dict)
    control: dict[bytes, bytes] = field(default_factory=dict)
    sent: list[Output] = field(default_factory=list)
    counts: Counter[tuple[str, ...]] = field(default_factory=Counter)
    # Write-behind with an interval that never ends: states are written only when the protocol
    # must (`settle`, an erasure, a replay status, a partition's bound of unwritten customers).
    write_behind: bool = False

    def __post_init__(self) -> None:
        self._unacked: list[Done] = []
        self._highwaters: Mapping[str, int | None] = {}
        self.checkpoint = self._checkpoint()

    def _checkpoint(self) -> Checkpoint:
        return Checkpoint(
            self.config,
            tables=_Tables(self),
            source=_Source(self),
            sink=_Sink(self),
            projection=self.projection,
            hooks=Hooks(count=self._count),
            write_interval_s=float("inf") if self.write_behind else 0.0,
        )

    @property
    def engines(self) -> dict[int, PartitionEngine]:
        """The partition engines started so far (since the last crash)."""
        return self.checkpoint.engines

    def engine(self, partition: int) -> PartitionEngine:
        """The partition's engine; a new one resumes from the tables (like an assignment)."""
        if partition not in self.engines:
            self.checkpoint.projection = self.projection  # set after construction by tests
            drive(self.checkpoint.prepare([partition]))
        return self.engines[partition]

    def pipe(
        self,
        records: Iterable[Record],
        *,
        highwaters: Mapping[str, int | None] | None = None,
        wall_ms: int = 0,
        ack: bool = True,
        catch_up: bool = True,
    ) -> list[BatchResult]:
        """One batch through the commit protocol; returns each partition's result.

        `ack=False` leaves the batch's sends unacknowledged (their outbox entries stay, and a
        crash loses the acknowledgements). With `catch_up`, batches without records follow
        while customers due are left for them (more fell due at once than
        `EngineConfig.wake_batch`), so every customer due is woken when it returns, as a
        worker does batch after batch (their decisions are in `sent`, not in the results)."""
        self._highwaters = highwaters or {}
        batch = list(records)
        self.checkpoint.projection = self.projection  # set after construction by tests
        drive(self.checkpoint.commit(batch, wall_ms=wall_ms))
        if ack:
            self.acknowledge()
        partitions = {r.partition for r in batch}
        results = [r for r in self.checkpoint.processed if r.partition in partitions]
        while catch_up and self.checkpoint.behind:
            drive(self.checkpoint.commit([], wall_ms=wall_ms))
            if ack:
                self.acknowledge()
        return results

    def tick(self, partitions: Iterable[int], *, wall_ms: int = 0) -> list[BatchResult]:
        """A clock tick on each partition (a timer's re-check), as one batch."""
        tick = json.dumps({"kind": "tick"}).encode()
        control = self.config.control_topic
        ticks = [Record(control, p, 0, 0, None, tick) for p in partitions]
        return self.pipe(ticks, wall_ms=wall_ms)

    def acknowledge(self) -> None:
        """Kafka acknowledged every send so far (cleared from the outboxes by the next batch)."""
        pending, self._unacked = self._unacked, []
        for done in pending:
            done(True)

    def settle(self, *, wall_ms: int = 0) -> None:
        """A batch without records: acknowledged decisions leave their outboxes, changes
        held back by write-behind are written, and customers left due by earlier batches
        wake (at `wall_ms`, the batch's wall clock)."""
        drive(self.checkpoint.settle(wall_ms=wall_ms))

    def projected(self, customer_ids: list[str]) -> None:
        """The projection confirmed these customers' writes (the shell's `projected`): each
        engine drops the erasures among them and its clock record is written again."""
        self.checkpoint.projected(customer_ids)

    def crash(self) -> None:
        """Forget all in-memory state: engines, due indexes, positions, and acknowledgements
        not yet folded into a batch (the tables and the topics stay)."""
        self._unacked.clear()
        self.checkpoint = self._checkpoint()

    def decisions(self) -> dict[str, bytes]:
        """Every decision sent, once per nudge_id (the first copy)."""
        out: dict[str, bytes] = {}
        for o in self.sent:
            if o.name == "decisions" and o.nudge_id is not None:
                out.setdefault(o.nudge_id, o.value or b"")
        return out

    def _count(self, result: BatchResult) -> None:
        self.counts.update(result.counts)


class _Tables:
    """The driver's dicts as the protocol's `Tables`."""

    def __init__(self, driver: MemoryDriver) -> None:
        self.driver = driver

    def read(self, table: Table, key: bytes, partition: int) -> bytes | None:
        """A stored value (one dict for every partition)."""
        store = self.driver.customers if table is Table.CUSTOMERS else self.driver.control
        return store.get(key)

    def scan(self, partitions: list[int], *, chunk: int) -> Iterator[list[tuple[bytes, bytes]]]:
        """Every stored customer, `chunk` at a time (the engines skip other partitions')."""
        items = list(self.driver.customers.items())
        for i in range(0, len(items), chunk):
            yield items[i : i + chunk]


class _Source:
    """No consumer: nothing committed, highwaters as the caller gave them, no seeks."""

    def __init__(self, driver: MemoryDriver) -> None:
        self.driver = driver

    def committed(self, topic: str, partition: int) -> int | None:
        """Nothing is committed in memory: an engine starts from its clock record."""
        return None

    def highwaters(self, partition: int) -> dict[str, int | None]:
        """The end offsets the caller gave `pipe` (none given: no topic is waited for)."""
        return dict(self.driver._highwaters)

    async def seek(self, topic: str, partition: int, offset: int) -> None:
        """Records are handed over by the caller: a hole is the caller's to fill."""


class _Sink:
    """Writes to the dicts, sends to the driver's list; acknowledgements wait for the caller."""

    def __init__(self, driver: MemoryDriver) -> None:
        self.driver = driver

    def write(self, table: Table, key: bytes, value: bytes | None, partition: int) -> None:
        """Store or delete at once."""
        store = self.driver.customers if table is Table.CUSTOMERS else self.driver.control
        if value is None:
            store.pop(key, None)
        else:
            store[key] = value

    def send(self, out: Output, done: Done | None) -> None:
        """Append to the topics' list; `done` is called by `MemoryDriver.acknowledge`."""
        self.driver.sent.append(out)
        if done is not None:
            self.driver._unacked.append(done)

    async def flush(self) -> None:
        """Nothing is buffered."""

    async def barrier(self) -> None:
        """Every send is in the list already."""
