"""The per-partition batch engine: the core's one entry point for a stream of Kafka records.

A `PartitionEngine` owns one partition number. It takes a batch of that partition's records
(the six input topics and the co-partitioned clock/control topic) plus what the shell read once
for the batch (highwater marks, the wall clock), and returns a `BatchResult`: every changed
customer state encoded once, the outputs to send (decision records, nudges, dead letters, the
replay status), the partition's clock record and the metric increments as plain counts. It does
no I/O: its collaborators are the small Protocols below, so tests drive it with a dict and lists
(`stream.core.driver.MemoryDriver`) and the Faust adapter is a thin loop around it.

Guarantees it gives the shell, whatever the batch boundaries:

* Idempotent folding. Each customer state records, per input topic, the highest offset folded
  from it. A re-read record at or below it is skipped before validation, so a consumer that
  restarts from an old committed offset folds nothing twice (the 32-id window still catches
  producer retries, which have new offsets).
* No decision lost. A decision is appended to the customer's `outbox` in the same state record
  that records it, and leaves the outbox in the partition's next batch after the commit
  protocol reports its sends acknowledged (`process(acknowledged=...)`). A partition taken
  over after a crash re-sends what its outbox still holds (`recover`), under the same
  nudge_id, counted as `resent`.
* Nothing stops the stream. An exception while handling one record sends that record to the
  dead-letter topic with reason `processing_error` naming the exception class (never the
  payload); the customer's state stays as it was before the record.
* Batch-size independence. The clock moves and due items run after every record (cheap: a heap
  peek), exactly as a per-message worker would, so one batch or many give the same states and
  decisions for the same highwater marks and wall clock. A batch wakes at most
  `EngineConfig.wake_batch` customers; those left wake in the next batches (`behind`) with the
  same decisions (see `_run_due`).
"""

from __future__ import annotations

import itertools
import json
import logging
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

import msgspec

from schemas.events import EventBase
from stream.core.clock import Clock, PartitionTime, Progress, Replay
from stream.core.cloudevents import kafka_headers
from stream.core.decision import Decision, decode_decision, encode_decision
from stream.core.due import DueIndex
from stream.core.erasure import customer_digest, encode_receipt, parse_request, plan, receipt
from stream.core.ingest import Limits, Rejection, accept
from stream.core.logic import CustomerLogic, Outcome
from stream.core.partitioning import expected_partition
from stream.core.rituals import RITUAL_LOGIC, Context
from stream.core.rules import Rules
from stream.core.state import (
    CustomerState,
    Peek,
    Sent,
    UnsupportedStateFormat,
    decode,
    encode,
    fold,
    is_duplicate,
    new_state,
    peek,
    to_ms,
)
from stream.core.vocabulary import OutputName, Status

log = logging.getLogger("engage")

#: Logical output names (`OutputName`); the shell maps them to topics.
DECISIONS, NUDGES, DLQ = OutputName.DECISIONS, OutputName.NUDGES, OutputName.DLQ
REPLAY_STATUS, ERASURE_RECEIPTS = OutputName.REPLAY_STATUS, OutputName.ERASURE_RECEIPTS


class Record(msgspec.Struct, frozen=True):
    """One Kafka record as the engine sees it (the shell converts its client's type). A
    msgspec struct: the direct drain makes one per record, five times faster than a frozen
    dataclass."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()


@dataclass(slots=True)
class Output:
    """A message to send. `customer`/`nudge_id` name the outbox entry an ack clears."""

    name: str  # DECISIONS, NUDGES, DLQ, REPLAY_STATUS or ERASURE_RECEIPTS
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] | None = None
    customer: bytes | None = None
    nudge_id: str | None = None


@dataclass(slots=True)
class BatchResult:
    """What one batch changed and what the shell must write and send, in this order:
    states (each changed customer once) and the clock record, then outputs; outputs named
    REPLAY_STATUS go only after every earlier send is acknowledged (a producer flush)."""

    partition: int
    states: dict[bytes, bytes] = field(default_factory=dict)
    erased: set[bytes] = field(default_factory=set)  # customers to delete (tombstones), first
    outputs: list[Output] = field(default_factory=list)
    time: bytes | None = None  # the partition's clock record (control table), when changed
    counts: Counter[tuple[str, ...]] = field(default_factory=Counter)
    kpis: list[tuple[EventBase, bool]] = field(default_factory=list)  # (event, new FCR)
    decided: list[Decision] = field(default_factory=list)  # decision records taken
    lags_s: list[float] = field(default_factory=list)  # wall clock - occurred_at, per event
    clock: int = 0


class CustomerStore(Protocol):
    """Read access to the customers of one partition (the shell writes `BatchResult.states`)."""

    def get(self, key: bytes) -> bytes | None:
        """The encoded state of a customer, or None."""
        ...


class Projection(Protocol):
    """Where changed profiles go besides the table (Redis); must not block."""

    def enqueue(self, customer_id: str, state: bytes | None, clock_ms: int) -> None:
        """Record the customer's latest state for a later write."""
        ...

    def next_change(self, state: CustomerState | Peek, clock_ms: int) -> int | None:
        """When the customer's segments next change by themselves (a wake-up), if ever."""
        ...


@dataclass(frozen=True)
class EngineConfig:
    """What every partition engine of a worker shares."""

    rules: Rules
    clock: Clock
    inputs: Mapping[str, str]  # input topic -> short name (the key of `CustomerState.offsets`)
    control_topic: str
    limits: Limits = field(default_factory=Limits)
    erasures_topic: str | None = None  # erasure requests, co-partitioned with the inputs
    namespace: str = ""  # the topic namespace (CloudEvents source)
    partitions: int | None = None  # checks keys hash to the partition read (wrong_partition)
    cached_states: int = 4096  # decoded customer states an engine keeps between batches
    # Customers a batch wakes at most (a restart after a long stop can find most of a
    # partition's customers due at once): the rest wake in the next batches (`behind`).
    wake_batch: int = 500
    # What each customer's events and due instants mean: the rules' rituals unless a test,
    # a benchmark or another product plugs in its own (`stream.core.logic`).
    logic: CustomerLogic = RITUAL_LOGIC


#: A stored customer as a restart reads it: (key, encoded state, `Peek` of the state).
Stored = tuple[bytes, bytes, Peek]


def by_partition(
    chunk: Iterable[tuple[bytes, bytes]],
) -> tuple[dict[int, list[Stored]], Counter[str]]:
    """Peek at a chunk of stored (key, encoded state) pairs and group them by the partition
    each state records, for `PartitionEngine.recover`; also counts the unreadable ones by
    reason: `newer_format` (a format from a newer release, refused rather than misread) or
    `malformed` (a value no release wrote). Either wakes nobody, and is counted."""
    out: dict[int, list[Stored]] = {}
    bad: Counter[str] = Counter()
    for key, raw in chunk:
        try:
            pk = peek(raw)
        except UnsupportedStateFormat:
            bad["newer_format"] += 1
            continue
        except Exception:
            bad["malformed"] += 1
            continue
        part = out.get(pk.partition)
        if part is None:
            part = out[pk.partition] = []
        part.append((key, raw, pk))
    return out, bad


def time_key(partition: int) -> bytes:
    """The control-table key of a partition's clock record."""
    return f"partition:{partition}".encode()


def dlq_headers(record: Record, rejection: Rejection) -> list[tuple[str, bytes]]:
    """Dead-letter headers, after the message's own headers (kept unchanged)."""
    return [
        *record.headers,
        ("engage.original_topic", record.topic.encode()),
        ("engage.original_partition", str(record.partition).encode()),
        ("engage.original_offset", str(record.offset).encode()),
        ("engage.original_timestamp", str(record.timestamp_ms).encode()),
        ("engage.reason", rejection.reason.encode()),
        ("engage.message", rejection.message.encode()),
    ]


class PartitionEngine:
    """Folds, clocks and decides for one partition; see the module docstring."""

    def __init__(
        self,
        partition: int,
        config: EngineConfig,
        store: CustomerStore,
        *,
        time: PartitionTime | None = None,
        positions: Mapping[str, int | None] | None = None,
        projection: Projection | None = None,
    ) -> None:
        """`time` is the clock record persisted by the last batch, if any; otherwise the
        progress starts at `positions` (the consumer's committed offsets per input topic)."""
        self.partition = partition
        self.config = config
        self.rules = config.rules
        self.logic = config.logic
        self.policy = config.clock
        self.store = store
        self.projection = projection
        if time is None:
            time = PartitionTime()
            for topic in config.inputs:
                time.progress[topic] = Progress(next_offset=(positions or {}).get(topic))
        elif time.erased and positions:
            # Committed offsets are never read again: erasure guards behind them are done.
            short_positions = {
                config.inputs[t]: o for t, o in positions.items() if t in config.inputs
            }
            time.erased = {
                d: offs for d, offs in time.erased.items()
                if any((short_positions.get(t) or 0) <= o for t, o in offs.items())
            }  # fmt: skip
        self.time = time
        # The clock record as last written (or as stored): a write sends it again only changed.
        self._written_time = time.to_json()
        self.index = DueIndex()
        # Decoded states, kept across batches (a customer active in consecutive batches is not
        # decoded again each time), at most `EngineConfig.cached_states`, oldest dropped first;
        # a state changed since the last write stays until it is written (the store lags it).
        self._cache: dict[bytes, CustomerState] = {}
        # What changed since the last write (`write`, or `process`/`settle` with write=True):
        self._dirty: set[bytes] = set()
        self._touched: set[bytes] = set()  # projection refresh only (a segment change)
        self._erased: set[bytes] = set()  # deleted (unless re-created after)
        self._acked_keys: set[bytes] = set()  # outboxes shortened by acknowledgements
        # Reading a record this partition's clock record says was read before a crash whose
        # state writes were lost: its decisions are re-sends (same nudge_id), counted so.
        self._rereading = False
        self._result = BatchResult(partition)
        self._highwaters: dict[str, int | None] = {}
        self._wall_ms: int | None = None
        self._wall: datetime = datetime.now(UTC)  # replaced by every batch's wall clock
        self._ctx = Context(self.rules)
        # True when customers due by the clock still wait for a wake (more fell due at once
        # than `EngineConfig.wake_batch`): the commit protocol runs this engine again soon.
        self.behind = False
        self._wakes_left = config.wake_batch

    # --- entry points -------------------------------------------------------------------------

    def recover(self, stored: Iterable[Stored]) -> BatchResult:
        """After an assignment, before the first record: register stored customers in the
        due index and re-send every decision whose send was never acknowledged (each counted
        as `resent`). A partition's customers may come in slices, one call each (a large table
        is read a chunk at a time: `by_partition` peeks at a chunk); entries of other
        partitions are skipped. Then `recovered`.

        Only a customer with an outbox is decoded whole: for the others the `Peek` (due
        instants and activity fields) is all the index needs."""
        result = self._result = BatchResult(self.partition, clock=self.time.clock)
        partition, index, projection = self.partition, self.index, self.projection
        clock = self.time.clock
        for key, raw, pk in stored:
            if pk.partition != partition:
                continue
            due = pk.due
            if projection is not None:
                change = projection.next_change(pk, clock)
                if change is not None and (due is None or change < due):
                    due = change
            index.register(pk.customer_id, due)
            if pk.outbox:
                for sent in decode(raw).outbox:
                    result.outputs.extend(self._sends(key, sent))
                    result.counts[("resent",)] += 1
        return result

    def recovered(self) -> BatchResult:
        """Every stored customer has been given to `recover`. Returns what to say after the
        re-sends: a finished replay's status, said again (the clock record saying "done" may
        have reached the changelog while the status itself died with the worker; `engage
        replay` keeps one per partition)."""
        result = BatchResult(self.partition, clock=self.time.clock)
        pt = self.time
        if pt.replay is not None and pt.replay_done and self.policy.name == "replay":
            result.outputs.append(self._replay_status())
        if self.projection is not None:
            # Erasures whose Redis deletion was never confirmed: project the customer again,
            # deleted (or, if an event re-created it since, its new state, which replaces the
            # old profile whole).
            for customer_id in pt.unprojected:
                raw = self.store.get(customer_id.encode("utf-8"))
                self.projection.enqueue(customer_id, raw, pt.clock)
        return result

    def projected(self, customer_ids: Iterable[str]) -> bool:
        """Redis confirmed writes of these customers: erasures among them are done there.

        Returns True when that changed the partition's clock record (the caller then has it
        written: `write`). Call between batches (the projector's callback does)."""
        pending = self.time.unprojected
        if not pending:
            return False
        done = set(customer_ids).intersection(pending)
        if not done:
            return False
        self.time.unprojected = [c for c in pending if c not in done]
        return True

    def process(
        self,
        records: Sequence[Record],
        *,
        highwaters: Mapping[str, int | None] | None = None,
        wall_ms: int,
        acknowledged: Mapping[bytes, Collection[str]] | None = None,
        write: bool = True,
    ) -> BatchResult:
        """Handle one batch of this partition's records, in offset order per topic.

        `highwaters` (input topic -> end offset, read once per batch; None where unknown) feed
        clock policies that use them; `wall_ms` is the wall clock read once for the batch.
        `acknowledged` (customer key -> nudge_ids whose sends Kafka acknowledged since the last
        batch) leave their customers' outboxes in the next state write: an acknowledgement
        costs no write of its own, and a customer both acknowledged and changed is written once.
        With `write`, the result holds every change since the last write (each changed customer
        once, the clock record); without, the changes wait for a later `write` (write-behind:
        a customer active in many batches is encoded and written once).
        """
        result = self._result = BatchResult(self.partition)
        self._highwaters = dict(highwaters or {})
        self._wall_ms = wall_ms
        self._wall = datetime.fromtimestamp(wall_ms / 1000, UTC)
        self._ctx = Context(self.rules, self.policy.decision_wall(wall_ms))
        self._wakes_left = self.config.wake_batch
        if acknowledged:
            self._clear_outboxes(acknowledged)
        control, erasures = self.config.control_topic, self.config.erasures_topic
        for record in records:
            self._rereading = False
            try:
                if record.topic == control:
                    self._on_control(record)
                elif record.topic == erasures:
                    self._on_erasure(record)
                else:
                    self._on_input(record)
            except Exception as exc:  # a bug must not stop the stream: DLQ, go on
                self._failed(record, exc)
        if not records:
            self._tick()
        self._finish_replay()
        if write:
            self._flush()
        self._trim()
        result.clock = self.time.clock
        return result

    def settle(
        self, acknowledged: Mapping[bytes, Collection[str]], *, write: bool = True
    ) -> BatchResult:
        """A batch without records: only clears acknowledged decisions from their outboxes
        (see `process`, and `write`). For a partition with acknowledgements and nothing to read:
        its clock, timers and replay state stay as they are."""
        result = self._result = BatchResult(self.partition, clock=self.time.clock)
        self._clear_outboxes(acknowledged)
        if write:
            self._flush()
        self._trim()
        return result

    def write(self) -> BatchResult:
        """Every change since the last write, as one result to store: tombstones, each changed
        customer once (encoded now, and projected), the clock record when it changed. The
        commit protocol calls it when its write interval is up, before an erasure's receipt or
        a replay's status, when the worker idles, and before partitions are handed over."""
        result = self._result = BatchResult(self.partition, clock=self.time.clock)
        self._flush()
        self._trim()
        return result

    @property
    def pending(self) -> int:
        """Customers changed, erased or acknowledged since the last write."""
        return len(self._dirty) + len(self._erased) + len(self._acked_keys)

    @property
    def erasing(self) -> bool:
        """True when an erasure waits for its write (its tombstone goes before its receipt)."""
        return bool(self._erased)

    def _trim(self) -> None:
        """Drop the oldest decoded states beyond the bound (whole batches' worth at once). A
        state not written yet stays: it is the only copy of the customer's latest state. The
        engine is the only writer of its partition's customers, so a cached state is the stored
        one (or the one to store), decoded."""
        cache = self._cache
        excess = len(cache) - self.config.cached_states
        if excess <= 0:
            return
        drop = excess + self.config.cached_states // 4
        pinned = self._dirty or self._acked_keys
        if not pinned:
            for key in list(itertools.islice(cache, drop)):
                del cache[key]
            return
        dirty, acked, gone = self._dirty, self._acked_keys, []
        for key in cache:
            if key not in dirty and key not in acked:
                gone.append(key)
                if len(gone) >= drop:
                    break
        for key in gone:
            del cache[key]

    def _clear_outboxes(self, acknowledged: Mapping[bytes, Collection[str]]) -> None:
        """Drop acknowledged decisions from their customers' outboxes (in the batch's cache;
        `_flush` writes them). Runs before the batch's records, so a decision taken in this
        batch is never mistaken for an acknowledged one."""
        for key, ids in acknowledged.items():
            state = self._state(key)
            if state is None or not state.outbox:
                continue
            kept = [s for s in state.outbox if s.nudge_id not in ids]
            if len(kept) != len(state.outbox):
                self._cache[key] = msgspec.structs.replace(state, outbox=kept)
                self._acked_keys.add(key)

    def _write_acknowledged(self) -> None:
        """Encode the customers whose only change is a shorter outbox (no projection: their
        profiles did not change)."""
        states, dirty, erased = self._result.states, self._dirty, self._erased
        for key in self._acked_keys:
            if key not in dirty and key not in erased:
                states[key] = encode(self._cache[key])

    # --- records ------------------------------------------------------------------------------

    def _on_input(self, record: Record) -> None:
        """One input record, stage by stage: its position in its topic, the guards against
        folding it twice (a redelivery, a customer erased since), validation, then the fold,
        the logic's decisions and the store. A record that stops at a guard or at validation
        still moves the clock, and whatever fell due runs, like after any other record."""
        short, fresh = self._position(record)
        key = record.key
        if self.behind and key is not None:
            self._wake_overdue(key)
        state = self._state(key) if key is not None else None
        if self._folded_before(record, short, state):
            self._tick()
            return
        event = self._accept(record)
        if event is None:
            self._tick()
            return
        assert key is not None  # accept checks the key equals customer_id
        at = to_ms(event.occurred_at)
        before = self.time.clock
        clock = self._clock_at(at, fresh)
        if state is None:
            state = new_state(event.customer_id)
        offsets = {**state.offsets, short: record.offset}
        kind: str = event.type  # type: ignore[attr-defined]
        if is_duplicate(state, event.event_id):
            counts = self._result.counts
            counts[("duplicate", kind)] += 1
            counts[("processed", record.topic, kind, "duplicate")] += 1
            self._put(key, msgspec.structs.replace(state, offsets=offsets))
        else:
            new = self._fold(state, event, late=at < before)
            self._decide(key, new, event, at=at, clock=clock)
            new.partition, new.offsets = self.partition, offsets
            self._store(key, state, new, event, counted=("processed", record.topic, kind, "folded"))
        self._run_due(clock)

    def _position(self, record: Record) -> tuple[str, Progress | None]:
        """Stage 1, position: the topic's short name, and its progress when the record is
        past everything this partition read before (None for a re-read, whose decisions are
        then re-sends)."""
        topic = record.topic
        short = self.config.inputs.get(topic)
        if short is None:
            raise ValueError(f"not an input topic: {topic}")
        self._result.counts[("consumed", topic)] += 1
        progress = self.time.progress.get(topic)
        if progress is None:
            progress = self.time.progress[topic] = Progress()
        fresh = progress.next_offset is None or record.offset >= progress.next_offset
        if fresh:
            progress.next_offset = record.offset + 1
        self._rereading = not fresh
        return short, progress if fresh else None

    def _folded_before(self, record: Record, short: str, state: CustomerState | None) -> bool:
        """Stage 2, guards: the customer's state already holds this record (folded before a
        restart), or the customer was erased after folding it (it stays erased)."""
        if state is not None:
            folded = state.offsets.get(short, -1) >= record.offset
        elif self.time.erased and record.key is not None:
            erased = self.time.erased.get(customer_digest(record.key))
            folded = erased is not None and erased.get(short, -1) >= record.offset
        else:
            folded = False
        if folded:
            self._result.counts[("redelivered", record.topic)] += 1
        return folded

    def _accept(self, record: Record) -> EventBase | None:
        """Stage 3, validation: the event, or None when the record went to the dead letters."""
        outcome = accept(
            record.key,
            record.value,
            self._wall,
            self.config.limits,
            partition=record.partition,
            partitions=self.config.partitions,
        )
        if isinstance(outcome, Rejection):
            self._dead_letter(record, outcome)
            return None
        return outcome

    def _clock_at(self, at: int, fresh: Progress | None) -> int:
        """Stage 4, time: a fresh record's event time moves its topic's progress, then the
        partition clock; returns the clock the event is decided at."""
        if fresh is not None:
            fresh.last_time = at
        clock = self._advance()
        if self._wall_ms is not None:
            self._result.lags_s.append(max((self._wall_ms - at) / 1000, 0.0))
        return clock

    def _fold(self, state: CustomerState, event: EventBase, *, late: bool) -> CustomerState:
        """Stage 5, fold: the event into the customer's profile (a new state)."""
        new = fold(state, event, self.rules.profile)
        if late:
            self._result.counts[("late",)] += 1
        return new

    def _decide(
        self, key: bytes, new: CustomerState, event: EventBase, *, at: int, clock: int
    ) -> None:
        """Stage 6, decide: the customer logic takes the event; its decisions join the outbox
        and the sends."""
        r, decisions, outcomes = self.logic.on_event(
            new.r, new.customer_id, event, at, clock, self._ctx
        )
        new.r = r
        self._decided(key, new, decisions, outcomes)

    def _store(
        self,
        key: bytes,
        old: CustomerState,
        new: CustomerState,
        event: EventBase,
        *,
        counted: tuple[str, ...],
    ) -> None:
        """Stage 7, store: the new state is the batch's to write; the event's KPIs (with
        whether it made a new first-contact resolution) and its `processed` count."""
        fcr = new.first_contact_resolutions > old.first_contact_resolutions
        self._result.kpis.append((event, fcr))
        self._result.counts[counted] += 1
        self._put(key, new)

    def _on_control(self, record: Record) -> None:
        """A tick (live mode, or a replay's completion re-check) or a replay declaration."""
        try:
            body = json.loads(record.value or b"")
            decl = None
            if body.get("kind") == "replay":
                decl = Replay(str(body["replay_id"]), dict(body["ends"]), body.get("final"))
        except (TypeError, ValueError, KeyError, AttributeError):
            log.warning("ignoring an unreadable control message at offset %s", record.offset)
            return
        if decl is not None and (
            self.time.replay is None or self.time.replay.replay_id != decl.replay_id
        ):
            self.time.replay, self.time.replay_done = decl, False
        self._tick()

    def _on_erasure(self, record: Record) -> None:
        """Forget one customer (its state, with the timers and queued events it holds, its
        wake-up and its projection), then say so on the receipts topic. Moves no clock."""
        request = parse_request(record.key, record.value)
        if isinstance(request, Rejection):
            self._dead_letter(record, request)
            return
        key = record.key
        assert key is not None  # parse_request checks the key equals customer_id
        if self.behind:
            self._wake_overdue(key)
        partitions = self.config.partitions
        if partitions is not None and expected_partition(key, partitions) != record.partition:
            expected = expected_partition(key, partitions)
            self._dead_letter(
                record, Rejection("wrong_partition", f"key belongs to partition {expected}")
            )
            return
        state = self._state(key)
        deleted = plan(state, projection=self.projection is not None)
        if state is not None and state.offsets:
            guard = self.time.erased.setdefault(customer_digest(key), {})
            for short, offset in state.offsets.items():
                guard[short] = max(guard.get(short, -1), offset)
        self._cache.pop(key, None)
        self._dirty.discard(key)
        self._touched.discard(key)
        self._erased.add(key)
        self.index.discard(request.customer_id)
        if self.projection is not None:
            self.projection.enqueue(request.customer_id, None, 0)  # profile and segments
            # Until Redis confirms (`projected`), the clock record keeps the id: a worker that
            # stops before the projector flushed leaves the deletion to the next start.
            if request.customer_id not in self.time.unprojected:
                self.time.unprojected.append(request.customer_id)
        erased_at = datetime.fromtimestamp((self._wall_ms or 0) / 1000, UTC)
        body = encode_receipt(receipt(request, erased_at=erased_at, deleted=deleted))
        self._result.outputs.append(Output(ERASURE_RECEIPTS, key, body))
        self._result.counts[("erasure", "true" if deleted.state else "false")] += 1

    def _failed(self, record: Record, exc: Exception) -> None:
        log.error(
            "processing failed at %s[%s]@%s: %s",
            record.topic,
            record.partition,
            record.offset,
            type(exc).__name__,
        )
        self._dead_letter(
            record, Rejection("processing_error", f"{type(exc).__name__} while processing")
        )

    def _dead_letter(self, record: Record, rejection: Rejection) -> None:
        result = self._result
        result.outputs.append(Output(DLQ, record.key, record.value, dlq_headers(record, rejection)))
        result.counts[("dlq", rejection.reason)] += 1
        if record.topic != self.config.control_topic:
            result.counts[("processed", record.topic, "unknown", "dead_lettered")] += 1

    # --- clocks and due items -----------------------------------------------------------------

    def _advance(self) -> int:
        pt = self.time
        pt.clock = self.policy.advance(pt, highwaters=self._highwaters, wall_ms=self._wall_ms)
        return pt.clock

    def _tick(self) -> None:
        self._run_due(self._advance())

    def _run_due(self, clock: int) -> None:
        """Wake the customers due by `clock`, at most the batch's `wake_batch` in all. Those
        left wait for the next batches: waking one later gives the same decisions (the logic
        runs every item due by the clock in ritual-time order), and a record or an erasure for
        one of them wakes it first (`_wake_overdue`), as if it had woken before that record."""
        left = self._wakes_left
        due = self.index.pop_due(clock, left)
        self._wakes_left = left = left - len(due)
        for cid in due:
            self._wake_safely(cid, clock)
        if left > 0:
            self.behind = False
        else:
            wake = self.index.next_wake()
            self.behind = wake is not None and wake <= clock

    def _wake_overdue(self, key: bytes) -> None:
        """A record for a customer that fell due and was left for a later batch: wake it now,
        at the clock before that record, so the record comes after its due items."""
        cid = key.decode("utf-8", "replace")
        clock = self.time.clock
        if self.index.take(cid, clock):
            self._wake_safely(cid, clock)

    def _wake_safely(self, cid: str, clock: int) -> None:
        try:
            self._wake(cid, clock)
        except Exception as exc:  # one customer's bug must not stop the partition's timers
            log.error("waking a customer failed on partition %s: %s", self.partition,
                      type(exc).__name__)  # fmt: skip
            self._result.counts[("wake_errors",)] += 1

    def _wake(self, cid: str, clock: int) -> None:
        key = cid.encode()
        state = self._state(key)
        if state is None:
            return
        r, decisions, outcomes = self.logic.on_due(state.r, cid, clock, self._ctx)
        if r is state.r:  # nothing of its own due (a segment change): re-register only
            self._register(state)
            if self.projection is not None:
                self._touched.add(key)
            return
        new = msgspec.structs.replace(state, r=r)
        self._decided(key, new, decisions, outcomes)
        self._put(key, new)

    def _finish_replay(self) -> None:
        """Tell `engage replay` when this partition has reached the end of its replay."""
        pt = self.time
        if pt.replay is None or pt.replay_done or self.policy.name != "replay" or self.behind:
            return
        if pt.replay.final is not None and pt.clock < pt.replay.final:
            return
        for topic, end in pt.replay.ends.items():
            if (pt.progress.get(topic, Progress()).next_offset or 0) < end:
                return
        pt.replay_done = True
        self._result.outputs.append(self._replay_status())

    def _replay_status(self) -> Output:
        """The news that this partition has reached the end of its declared replay."""
        pt = self.time
        assert pt.replay is not None
        body = {"replay_id": pt.replay.replay_id, "partition": self.partition, "clock": pt.clock}
        return Output(REPLAY_STATUS, str(self.partition).encode(), json.dumps(body).encode())

    # --- state --------------------------------------------------------------------------------

    def _state(self, key: bytes) -> CustomerState | None:
        state = self._cache.get(key)
        if state is None:
            if key in self._erased:
                return None
            raw = self.store.get(key)
            if raw is None:
                return None
            state = self._cache[key] = decode(raw)
        return state

    def _put(self, key: bytes, state: CustomerState) -> None:
        self._cache[key] = state
        self._dirty.add(key)
        self._register(state)

    def _register(self, state: CustomerState) -> None:
        """Wake the customer at its next ritual item, or when its segments next change by
        themselves (so projected segment sets never go stale), whichever comes first."""
        due = self.logic.next_due(state.r)
        if self.projection is not None:
            change = self.projection.next_change(state, self.time.clock)
            if change is not None and (due is None or change < due):
                due = change
        self.index.register(state.customer_id, due)

    def _decided(
        self,
        key: bytes,
        state: CustomerState,
        decisions: list[Decision],
        outcomes: list[Outcome],
    ) -> None:
        """The logic's decisions join the customer's outbox and the batch's sends; its
        decisions and outcomes are counted."""
        counts = self._result.counts
        for ritual, arm, outcome, version in outcomes:
            counts[("outcome", ritual, arm, outcome, version)] += 1
        if not decisions:
            return
        outbox = list(state.outbox)
        for record in decisions:
            sent = Sent(
                record.nudge_id,
                record.status == Status.DELIVERED,
                msgspec.Raw(encode_decision(record)),
            )
            outbox.append(sent)
            self._result.outputs.extend(self._sends(key, sent, record))
            self._result.decided.append(record)
            counts[("decision", record.ritual, record.status, record.rules_version)] += 1
            if self._rereading:
                counts[("resent",)] += 1
        state.outbox = outbox

    def _sends(self, key: bytes, sent: Sent, record: Decision | None = None) -> list[Output]:
        """A decision's sends, with its CloudEvents headers: to the decisions topic, and to
        the nudges topic when delivered (`record` is decoded from the outbox when not given)."""
        value = bytes(sent.record)
        if record is None:
            record = decode_decision(value)
        ns = self.config.namespace
        out = [
            Output(
                DECISIONS,
                key,
                value,
                kafka_headers(record, namespace=ns, topic_kind="decision"),
                key,
                sent.nudge_id,
            )
        ]
        if sent.delivered:
            headers = kafka_headers(record, namespace=ns, topic_kind="nudge")
            out.append(Output(NUDGES, key, value, headers, key, sent.nudge_id))
        return out

    def _flush(self) -> None:
        """Encode each customer changed since the last write once; the projection sees it once
        per write. Then nothing is pending."""
        result, clock = self._result, self.time.clock
        result.erased = self._erased - self._dirty
        for key in self._dirty:
            state = self._cache[key]
            raw = encode(state)
            result.states[key] = raw
            if self.projection is not None:
                self.projection.enqueue(state.customer_id, raw, clock)
                self._register(state)
        if self.projection is not None:
            for key in self._touched - self._dirty:
                # Not changed since the last write, so the store holds its latest state.
                self.projection.enqueue(key.decode("utf-8"), self.store.get(key), clock)
        self._write_acknowledged()
        after = self.time.to_json()
        if after != self._written_time:
            result.time = json.dumps(after, separators=(",", ":")).encode()
            self._written_time = after
        self._dirty.clear()
        self._touched.clear()
        self._erased.clear()
        self._acked_keys.clear()
