"""An in-process driver for the partition engines: dicts for tables, lists for topics.

The analogue of Kafka Streams' TopologyTestDriver. Tests (and the core-only benchmark) pipe
records through `PartitionEngine`s exactly as the Faust adapter does (one engine per partition,
states written once per batch, clock records into the control table, sends acknowledged after
the batch), and can simulate a crash: `crash()` forgets everything in memory and optionally the
acknowledgements in flight, like a `kill -9` before the producer answered.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from stream.core.clock import PartitionTime
from stream.core.engine import (
    BatchResult,
    EngineConfig,
    Output,
    PartitionEngine,
    Projection,
    Record,
    by_partition,
    time_key,
)
from stream.core.state import decode


@dataclass
class MemoryDriver:
    """Engines per partition over an in-memory customers table, control table and topics."""

    config: EngineConfig
    projection: Projection | None = None
    customers: dict[bytes, bytes] = field(default_factory=dict)
    control: dict[bytes, bytes] = field(default_factory=dict)
    sent: list[Output] = field(default_factory=list)
    counts: Counter[tuple[str, ...]] = field(default_factory=Counter)
    engines: dict[int, PartitionEngine] = field(default_factory=dict)
    unacked: list[Output] = field(default_factory=list)

    def engine(self, partition: int) -> PartitionEngine:
        """The partition's engine; a new one resumes from the tables (like an assignment)."""
        engine = self.engines.get(partition)
        if engine is None:
            raw = self.control.get(time_key(partition))
            time = PartitionTime.from_json(json.loads(raw)) if raw is not None else None
            engine = PartitionEngine(
                partition, self.config, self.customers, time=time, projection=self.projection
            )
            self.engines[partition] = engine
            stored, _unreadable = by_partition(list(self.customers.items()))
            self._apply(engine.recover(stored.get(partition, [])))
            self._apply(engine.recovered())
        return engine

    def pipe(
        self,
        records: Iterable[Record],
        *,
        highwaters: Mapping[str, int | None] | None = None,
        wall_ms: int = 0,
        ack: bool = True,
    ) -> list[BatchResult]:
        """One batch: each partition's slice to its engine, in arrival order per partition.

        `ack=False` leaves the batch's sends unacknowledged (their outbox entries stay).
        """
        slices: dict[int, list[Record]] = {}
        for record in records:
            slices.setdefault(record.partition, []).append(record)
        results = []
        for partition, batch in slices.items():
            engine = self.engine(partition)
            result = engine.process(batch, highwaters=highwaters, wall_ms=wall_ms)
            self._apply(result)
            results.append(result)
        if ack:
            self.acknowledge()
        return results

    def tick(self, partitions: Iterable[int], *, wall_ms: int = 0) -> list[BatchResult]:
        """An empty batch per partition (a timer's clock re-check)."""
        results = []
        for p in partitions:
            result = self.engine(p).process([], wall_ms=wall_ms)
            self._apply(result)
            results.append(result)
        self.acknowledge()
        return results

    def acknowledge(self) -> None:
        """The broker acknowledged every send so far: clear the outboxes."""
        pending: dict[tuple[int, bytes], set[str]] = {}
        for out in self.unacked:
            if out.customer is not None and out.nudge_id is not None:
                raw = self.customers.get(out.customer)
                partition = decode(raw).partition if raw is not None else -1
                pending.setdefault((partition, out.customer), set()).add(out.nudge_id)
        self.unacked.clear()
        for (partition, customer), ids in pending.items():
            engine = self.engines.get(partition)
            if engine is None:
                continue
            raw = engine.acknowledge(customer, ids)
            if raw is not None:
                self.customers[customer] = raw

    def projected(self, customer_ids: list[str]) -> None:
        """The projection confirmed these customers' writes (the shell's `projected`): each
        engine drops the erasures among them and its clock record is written again."""
        for partition, engine in self.engines.items():
            raw = engine.projected(customer_ids)
            if raw is not None:
                self.control[time_key(partition)] = raw

    def crash(self, *, lose_unacked: bool = True) -> None:
        """Forget all in-memory state (engines, due indexes, sends not yet acknowledged)."""
        self.engines.clear()
        if lose_unacked:
            self.unacked.clear()

    def _apply(self, result: BatchResult) -> None:
        for key in result.erased:
            self.customers.pop(key, None)
        self.customers.update(result.states)
        if result.time is not None:
            self.control[time_key(result.partition)] = result.time
        self.sent.extend(result.outputs)
        self.unacked.extend(result.outputs)
        self.counts.update(result.counts)

    def decisions(self) -> dict[str, bytes]:
        """Every decision sent, once per nudge_id (the first copy)."""
        out: dict[str, bytes] = {}
        for o in self.sent:
            if o.name == "decisions" and o.nudge_id is not None:
                out.setdefault(o.nudge_id, o.value or b"")
        return out
