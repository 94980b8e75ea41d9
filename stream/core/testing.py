"""A worker without a broker: the commit protocol over simulated Kafka topics, for tests.

Like Bytewax's testing module, this runs the whole worker's processing (the `Checkpoint` that
`engage worker` runs, with the same steps in the same order) against a fake source and sink at
the Kafka client boundary, in milliseconds and in-process:

* `SimBroker` holds topics as lists of records per partition, and the consumer group's
  committed offsets. Nothing else survives a crash.
* `SimWorker` is one worker process: it owns partitions, rebuilds their tables from the
  changelog topics when it starts them (Faust's recovery), fetches batches from its positions,
  and commits offsets every `commit_every` batches after a producer flush, by the worker's own
  rule (`next_commit`). Its sends reach the broker at the protocol's `flush` step; Kafka's
  acknowledgements of them arrive before its next fetch (or at once on a barrier).
* `write_every=n` holds state writes back for n batches (write-behind), as the worker does for
  its write interval: offsets are acknowledged only once their records' writes are queued.
* `crash_at=(batch, step)` raises `Crash` right after that protocol step of that batch: the
  worker is gone with everything in memory (engines, unsent writes, acknowledgements not
  folded, uncommitted offsets), and a new `SimWorker` starts from what the broker holds.

Rebalances are `SimWorker.revoke` (Faust's: the batch in progress ends, offsets committed, the
partitions forgotten) and `SimWorker.assign`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from stream.core.commit import STEPS, Checkpoint, Done, Hooks, Table, drive, next_commit
from stream.core.engine import EngineConfig, Output, Projection, Record
from stream.core.partitioning import expected_partition

#: The changelog topic of each table in a `SimBroker` (partition = the input partition).
CHANGELOGS = {Table.CUSTOMERS: "customers-changelog", Table.CONTROL: "control-changelog"}


class Crash(Exception):
    """A simulated kill -9 at a protocol step."""


@dataclass
class SimBroker:
    """Topics as lists of records per partition, and committed offsets."""

    logs: dict[tuple[str, int], list[Record]] = field(default_factory=dict)
    committed: dict[tuple[str, int], int] = field(default_factory=dict)

    def append(
        self,
        topic: str,
        partition: int,
        key: bytes | None,
        value: bytes | None,
        headers: Iterable[tuple[str, bytes]] = (),
    ) -> Record:
        """Write one record; returns it with its offset."""
        log = self.logs.setdefault((topic, partition), [])
        record = Record(topic, partition, len(log), 0, key, value, tuple(headers))
        log.append(record)
        return record

    def end(self, topic: str, partition: int) -> int:
        """The next offset of a topic-partition (its highwater mark)."""
        return len(self.logs.get((topic, partition), ()))

    def records(self, topic: str) -> list[Record]:
        """Every record of a topic, partition after partition."""
        return [r for (t, _p), log in sorted(self.logs.items()) if t == topic for r in log]

    def table(self, table: Table, partition: int) -> dict[bytes, bytes]:
        """A table partition as its changelog rebuilds it (the last value per key)."""
        out: dict[bytes, bytes] = {}
        for record in self.logs.get((CHANGELOGS[table], partition), ()):
            assert record.key is not None
            if record.value is None:
                out.pop(record.key, None)
            else:
                out[record.key] = record.value
        return out


class SimWorker:
    """One worker over a `SimBroker`; see the module docstring."""

    def __init__(
        self,
        broker: SimBroker,
        config: EngineConfig,
        *,
        partitions: Iterable[int],
        fetch: int = 25,
        commit_every: int = 1,
        wall_ms: int = 0,
        crash_at: tuple[int, str] | None = None,
        projection: Projection | None = None,
        write_every: int = 0,
    ) -> None:
        """`write_every` > 0 turns write-behind on: state writes every that many batches (the
        write interval's clock counts batches)."""
        if crash_at is not None and crash_at[1] not in STEPS:
            raise ValueError(f"no protocol step {crash_at[1]!r}: one of {STEPS}")
        self.broker = broker
        self.config = config
        self.fetch = fetch
        self.commit_every = commit_every
        self.wall_ms = wall_ms
        self.crash_at = crash_at
        self.batches = 0
        self.owned: set[int] = set()
        self.stores: dict[tuple[Table, int], dict[bytes, bytes]] = {}
        self.positions: dict[tuple[str, int], int] = {}
        self.acked: dict[tuple[str, int], list[int]] = {}
        self.queued: list[tuple[str, int | None, Output | None, bytes | None, bytes | None,
                                Done | None]] = []  # fmt: skip
        self.answers: list[Done] = []  # sends in the broker, acknowledgement not delivered yet
        self.written: list[tuple[int, Table, bytes]] = []  # (batch, table, key) of every write
        self.checkpoint = Checkpoint(
            config,
            tables=_Tables(self),
            source=_Source(self),
            sink=_Sink(self),
            projection=projection,
            hooks=Hooks(step=self._step),
            write_interval_s=write_every,
            monotonic=lambda: float(self.batches),
        )
        self.assign(partitions)

    @property
    def topics(self) -> list[str]:
        """The topics this worker reads: inputs, the clock topic, erasures."""
        names = [*self.config.inputs, self.config.control_topic]
        if self.config.erasures_topic is not None:
            names.append(self.config.erasures_topic)
        return names

    def _step(self, name: str) -> None:
        if self.crash_at == (self.batches, name):
            raise Crash(f"batch {self.batches}, after {name}")

    # --- rebalances ---------------------------------------------------------------------------

    def assign(self, partitions: Iterable[int]) -> None:
        """Take partitions: tables rebuilt from the changelogs, positions from the commits,
        engines started before the first fetch (as the direct drain does: outboxes re-sent)."""
        partitions = sorted(set(partitions))
        for p in partitions:
            self.owned.add(p)
            for table in Table:
                self.stores[(table, p)] = self.broker.table(table, p)
            for topic in self.topics:
                self.positions[(topic, p)] = self.broker.committed.get((topic, p), 0)
        drive(self.checkpoint.prepare(partitions))

    def revoke(self, partitions: Iterable[int]) -> None:
        """Give partitions up, as Faust does: commit what was processed, then forget them."""
        gone = set(partitions) & self.owned
        self.commit()
        drive(self.checkpoint.release(gone))
        self.checkpoint.forget(gone)
        self.owned -= gone
        for key in [k for k in self.stores if k[1] in gone]:
            del self.stores[key]
        for key in [k for k in self.positions if k[1] in gone]:
            del self.positions[key]
            self.acked.pop(key, None)

    def stop(self) -> None:
        """A clean stop (SIGTERM): everything processed is committed and released."""
        self.revoke(set(self.owned))

    # --- running ------------------------------------------------------------------------------

    def poll(self) -> bool:
        """One fetch and its batch (or a batch without records when there is nothing to read);
        returns False when there was nothing to read."""
        self._deliver_answers()
        batch: list[Record] = []
        for p in sorted(self.owned):
            for topic in self.topics:
                at = self.positions[(topic, p)]
                log = self.broker.logs.get((topic, p), [])
                take = log[at : at + self.fetch - len(batch)]
                batch.extend(take)
                self.positions[(topic, p)] = at + len(take)
                if len(batch) >= self.fetch:
                    break
            if len(batch) >= self.fetch:
                break
        self.batches += 1
        if not batch:
            self._ack(drive(self.checkpoint.settle(wall_ms=self.wall_ms)))
            return False
        self._ack(drive(self.checkpoint.commit(batch, wall_ms=self.wall_ms)))
        if self.batches % self.commit_every == 0:
            self.commit()
        return True

    def _ack(self, done: list[Record]) -> None:
        for record in done:
            self.acked.setdefault((record.topic, record.partition), []).append(record.offset)

    def run(self, *, limit: int = 100_000) -> None:
        """Poll until there is nothing to read and every acknowledgement is folded in."""
        for _ in range(limit):
            checkpoint = self.checkpoint
            if (
                not self.poll()
                and not self.answers
                and not checkpoint.acks.done
                and not checkpoint.unwritten
            ):
                self.commit()
                return
        raise RuntimeError("the simulated worker never went idle")

    def commit(self) -> None:
        """The consumer's offset commit: a producer flush, then every topic-partition's offset
        by the worker's rule."""
        self._flush()
        self._deliver_answers()
        committed = self.broker.committed
        for tp, offsets in self.acked.items():
            offset, keep = next_commit(offsets, committed.get(tp))
            if offset is not None:
                committed[tp] = offset
            self.acked[tp] = keep

    def _flush(self) -> None:
        """Everything queued reaches the broker, in order."""
        queued, self.queued = self.queued, []
        for topic, partition, out, key, value, done in queued:
            if out is not None:
                p = partition if partition is not None else _partition_of(out, self.config)
                self.broker.append(topic, p, out.key, out.value, out.headers or ())
            else:
                assert partition is not None
                self.broker.append(topic, partition, key, value)
            if done is not None:
                self.answers.append(done)

    def _deliver_answers(self) -> None:
        answers, self.answers = self.answers, []
        for done in answers:
            done(True)


def _partition_of(out: Output, config: EngineConfig) -> int:
    """Where the producer puts an output: its key's partition (the status topic: the key is
    the partition number)."""
    if out.key is None:
        return 0
    if out.name == "replay_status":
        return int(out.key)
    return expected_partition(out.key, config.partitions or 1)


class _Tables:
    def __init__(self, worker: SimWorker) -> None:
        self.worker = worker

    def read(self, table: Table, key: bytes, partition: int) -> bytes | None:
        """The worker's local copy (None for a partition it does not own)."""
        store = self.worker.stores.get((table, partition))
        return None if store is None else store.get(key)

    def scan(self, partitions: list[int], *, chunk: int) -> Iterator[list[tuple[bytes, bytes]]]:
        """The customers of these partitions, a chunk at a time."""
        for p in partitions:
            items = list(self.worker.stores.get((Table.CUSTOMERS, p), {}).items())
            for i in range(0, len(items), chunk):
                yield items[i : i + chunk]


class _Source:
    def __init__(self, worker: SimWorker) -> None:
        self.worker = worker

    def committed(self, topic: str, partition: int) -> int | None:
        """The group's committed offset."""
        return self.worker.broker.committed.get((topic, partition))

    def highwaters(self, partition: int) -> dict[str, int | None]:
        """Each input topic-partition's end."""
        return {t: self.worker.broker.end(t, partition) for t in self.worker.config.inputs}

    async def seek(self, topic: str, partition: int, offset: int) -> None:
        """Fetch again from `offset`."""
        self.worker.positions[(topic, partition)] = offset


class _Sink:
    def __init__(self, worker: SimWorker) -> None:
        self.worker = worker

    def write(self, table: Table, key: bytes, value: bytes | None, partition: int) -> None:
        """Store locally now; the changelog record goes with the next flush."""
        self.worker.written.append((self.worker.batches, table, key))
        store = self.worker.stores.setdefault((table, partition), {})
        if value is None:
            store.pop(key, None)
        else:
            store[key] = value
        self.worker.queued.append((CHANGELOGS[table], partition, None, key, value, None))

    def send(self, out: Output, done: Done | None) -> None:
        """Queue an output on its topic (named as the output)."""
        self.worker.queued.append((str(out.name), None, out, None, None, done))

    async def flush(self) -> None:
        """Hand everything to the broker; acknowledgements come before the next fetch."""
        self.worker._flush()

    async def barrier(self) -> None:
        """A producer flush: every send so far is in and acknowledged."""
        self.worker._flush()
        self.worker._deliver_answers()


def decisions(broker: SimBroker) -> dict[str, set[bytes]]:
    """Every decision on the broker: nudge_id -> the distinct values sent under it."""
    out: dict[str, set[bytes]] = {}
    for record in broker.records("decisions"):
        value = record.value or b""
        out.setdefault(json.loads(value)["nudge_id"], set()).add(value)
    return out
