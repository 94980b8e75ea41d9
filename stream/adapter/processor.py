"""What the agent does with each message: the shell around ingest, fold, clocks and rituals.

Four kinds of message arrive on one co-partitioned stream: input events, clock ticks (sent by
each worker's timer, live mode), replay declarations (sent by `engage replay`) and erasure
requests (sent by `engage forget`; see `on_erasure`, which does not move any clock). Every one of
them may move its partition's clock, and every clock move runs the partition's due items, so
timers fire inside stream iteration, where table writes are allowed and go to the changelog
partition of the message at hand, which is the partition of every customer touched.

Due items are found through an in-memory `DueIndex` per partition (`stream/core/due.py`), rebuilt
from the customers table after an assignment, so timers cost no writes beyond the customer's own.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from stream.core.clock import Progress, Replay, partition_clock, wall_now
from stream.core.cloudevents import kafka_headers
from stream.core.due import DueIndex
from stream.core.erasure import encode_receipt, parse_request, plan, receipt
from stream.core.ingest import Limits, Rejection, accept
from stream.core.rituals import Context, advance, encode_decision, next_due, on_event
from stream.core.rules import Rules
from stream.core.state import CustomerState, decode, encode, fold, is_duplicate, new_state, to_ms
from stream.serving.projection import next_segment_change
from stream.settings import Settings
from stream.telemetry.kpis import Kpis
from stream.telemetry.metrics import PipelineMetrics

log = logging.getLogger("engage")


def dlq_headers(message: Any, rejection: Rejection) -> list[tuple[str, bytes]]:
    """SPEC §1 dead-letter headers, after the message's own headers (kept unchanged)."""
    own = list(message.headers.items() if isinstance(message.headers, dict) else message.headers)
    return [
        *own,
        ("engage.original_topic", message.topic.encode()),
        ("engage.original_partition", str(message.partition).encode()),
        ("engage.original_offset", str(message.offset).encode()),
        ("engage.original_timestamp", str(int(message.timestamp * 1000)).encode()),
        ("engage.reason", rejection.reason.encode()),
        ("engage.message", rejection.message.encode()),
    ]


@dataclass
class PartitionTime:
    """One partition's clock and what it is computed from (in memory; rebuilt after restart)."""

    clock: int = 0
    progress: dict[str, Progress] = field(default_factory=dict)
    replay: Replay | None = None
    replay_done: bool = False


@dataclass
class Processor:
    """Handles one message of the agent's stream."""

    settings: Settings
    rules: Rules
    app: Any
    customers: Any  # table: customer id -> CustomerState bytes
    control: Any  # table: "replay:{partition}" -> replay declaration
    topics: dict[str, Any]
    metrics: PipelineMetrics
    partitions: dict[int, PartitionTime] = field(default_factory=dict)
    index: dict[int, DueIndex] = field(default_factory=dict)
    projector: Any = None  # RedisProjector, or None when the projection is off

    def __post_init__(self) -> None:
        self.limits = Limits(
            max_message_bytes=self.settings.max_message_bytes,
            max_future_skew=timedelta(seconds=self.settings.max_future_skew_s),
        )
        self.inputs = set(self.settings.input_topics.values())
        self.kpis = Kpis(self.metrics.registry)
        self.live = self.settings.mode == "live"

    # --- entry point ----------------------------------------------------------------------------

    async def handle(self, event: Any) -> None:
        message = event.message
        if message.topic == self.settings.clock_topic:
            await self.on_control(message)
        elif message.topic == self.settings.erasures_topic:
            await self.on_erasure(message)
        else:
            await self.on_input(message)

    async def on_input(self, message: Any) -> None:
        started = time.perf_counter()
        self.metrics.consumed_child(message.topic).inc()
        p = message.partition
        pt = self._partition(p)
        seen = pt.progress.setdefault(message.topic, Progress())
        seen.next_offset = message.offset + 1
        now = wall_now()
        outcome = accept(
            message.key,
            message.value,
            now,
            self.limits,
            partition=message.partition,
            partitions=self.settings.partitions,
        )
        if isinstance(outcome, Rejection):
            await self.dead_letter(message, outcome)
            await self.tick(p)
            return
        at = to_ms(outcome.occurred_at)
        seen.last_time = at
        kind: str = outcome.type  # type: ignore[attr-defined]
        before = pt.clock
        clock = self._advance_clock(p)
        try:
            result = await self.fold(message.key, outcome, at, clock, late=at < before, partition=p)
        except Exception:  # a bug must not stop the stream; the event is counted, not lost
            log.exception(
                "fold failed at %s[%s]@%s", message.topic, message.partition, message.offset
            )
            result = "failed"
        self.metrics.processed_child(message.topic, kind, result).inc()
        self.metrics.lag_seconds.observe(max((now - outcome.occurred_at).total_seconds(), 0.0))
        await self.run_due(p, clock)
        self.metrics.processing_seconds.observe(time.perf_counter() - started)

    async def on_control(self, message: Any) -> None:
        """A tick (live) or a replay declaration for this partition."""
        p = message.partition
        try:
            body = json.loads(message.value)
            if body.get("kind") == "replay":
                decl = Replay(str(body["replay_id"]), dict(body["ends"]), body.get("final"))
        except (TypeError, ValueError, KeyError, AttributeError):
            log.warning("ignoring an unreadable control message at offset %s", message.offset)
            return
        if body.get("kind") == "replay":
            self.control[f"replay:{p}".encode()] = json.dumps(body).encode()
            pt = self._partition(p)
            pt.replay, pt.replay_done = decl, False
        await self.tick(p)

    async def on_erasure(self, message: Any) -> None:
        """SPEC §4 Erasure: forget one customer, then say so on the receipts topic.

        Self-contained on purpose (a port to another engine moves this method as is). It runs
        inside stream iteration, on the partition that owns the customer (the erasures topic is
        co-partitioned with the inputs), so `del` on the table writes the changelog tombstone
        to the customer's own changelog partition. The customer's pending timers and queued
        events live in its state, so they go with it; its due-index wake-up and its Redis keys
        are removed here; a later event starts a new profile.
        """
        request = parse_request(message.key, message.value)
        if isinstance(request, Rejection):
            await self.dead_letter(message, request)
            return
        expected = _partition_of(message.key, self.settings.partitions)
        if message.partition != expected:  # deleting here would miss the customer's state
            await self.dead_letter(
                message,
                Rejection("wrong_partition", f"key belongs to partition {expected}"),  # type: ignore[arg-type]
            )
            return
        key = message.key
        raw = self.customers.get(key)
        state = decode(raw) if raw is not None else None
        deleted = plan(state, projection=self.projector is not None)
        if raw is not None:
            del self.customers[key]  # the changelog tombstone
        self._index(message.partition).discard(request.customer_id)
        if self.projector is not None:
            self.projector.enqueue(request.customer_id, None, 0)  # profile and segments
        record = receipt(request, erased_at=wall_now(), deleted=deleted)
        await self.topics["erasure_receipts"].send(key=key, value=encode_receipt(record))
        self.metrics.erasures_child(deleted.state).inc()

    async def tick(self, p: int) -> None:
        clock = self._advance_clock(p)
        await self.run_due(p, clock)

    # --- clocks ---------------------------------------------------------------------------------

    def _partition(self, p: int) -> PartitionTime:
        pt = self.partitions.get(p)
        if pt is None:
            pt = self.partitions[p] = PartitionTime()
            raw = self.control.get(f"replay:{p}".encode())
            if raw is not None:
                body = json.loads(raw)
                pt.replay = Replay(body["replay_id"], dict(body["ends"]), body.get("final"))
            committed = getattr(self.app.consumer, "_committed_offset", {})
            for topic in self.inputs:
                offset = committed.get(_tp(topic, p))
                pt.progress[topic] = Progress(next_offset=offset)
        return pt

    def _advance_clock(self, p: int) -> int:
        pt = self._partition(p)
        mode = self.settings.mode
        wall: int | None = None
        grace = 0
        if mode == "replay":
            if pt.replay is None:
                return pt.clock  # nothing moves time before the replay's declaration
            highwaters: dict[str, int | None] = {}
            now = None
        else:
            highwaters = {t: self._highwater(t, p) for t in self.inputs}
            if mode == "live":
                now = wall = to_ms(wall_now())
                grace = self.settings.grace_ms
            else:  # follow: the latest event time read stands in for the wall clock
                now = max((s.last_time for s in pt.progress.values() if s.last_time), default=None)
                if now is None:
                    return pt.clock
        pt.clock = partition_clock(
            pt.clock,
            pt.progress,
            highwaters=highwaters,
            wall_ms=now,
            grace_ms=grace,
            replay=pt.replay if mode == "replay" else None,
        )
        self.metrics.partition_clock_child(p).set(pt.clock / 1000)
        if wall is not None:
            self.metrics.watermark_lag_child(p).set(max(wall - pt.clock, 0) / 1000)
        return pt.clock

    def _highwater(self, topic: str, p: int) -> int | None:
        try:
            return self.app.consumer.highwater(_tp(topic, p))
        except Exception:  # not assigned (yet), or no fetch answered
            return None

    def latest_clock(self) -> int:
        """The furthest partition clock of this worker (profile reads in replay mode)."""
        return max((pt.clock for pt in self.partitions.values()), default=0)

    def context(self) -> Context:
        return Context(self.rules, to_ms(wall_now()) if self.live else None)

    # --- state ---------------------------------------------------------------------------------

    async def fold(
        self, key: bytes, event: Any, at: int, clock: int, *, late: bool, partition: int
    ) -> str:
        raw = self.customers.get(key)
        state = decode(raw) if raw is not None else new_state(event.customer_id)
        if is_duplicate(state, event.event_id):
            self.metrics.duplicate_child(event.type).inc()
            return "duplicate"
        fcr_before = state.first_contact_resolutions
        state = fold(state, event, self.rules.profile)
        if late:
            self.metrics.late_events.inc()
        state.r, decisions, outcomes = on_event(
            state.r, state.customer_id, event, at, clock, self.context()
        )
        state.partition = partition
        self._save(key, state, clock)
        self.kpis.count(event, state.first_contact_resolutions > fcr_before)
        await self.emit(decisions, outcomes)
        return "folded"

    def _save(self, key: bytes, state: CustomerState, clock: int) -> None:
        """The one table write per change; the Redis projection and due index follow it."""
        raw = encode(state)
        self.customers[key] = raw
        if self.projector is not None:
            self.projector.enqueue(state.customer_id, raw, clock)
        self._register(state, clock)

    def _register(self, state: CustomerState, clock: int) -> None:
        """Wake the customer at its next ritual item, or when its segments next change by
        themselves (so the Redis segment sets never go stale), whichever comes first."""
        due = next_due(state.r)
        if self.projector is not None:
            change = next_segment_change(state, clock, self.rules.profile)
            if change is not None and (due is None or change < due):
                due = change
        self._index(state.partition).register(state.customer_id, due)

    def _index(self, p: int) -> DueIndex:
        """Partition p's due index; after an assignment, rebuilt from the recovered table."""
        index = self.index.get(p)
        if index is None:
            index = self.index[p] = DueIndex()
            clock = self.partitions[p].clock if p in self.partitions else 0
            for raw in list(self.customers.values()):
                state = decode(raw)
                if state.partition == p:
                    self._register(state, clock)
        return index

    def forget_partitions(self, partitions: set[int]) -> None:
        """Revoked partitions: their clocks and indexes are rebuilt by whoever gets them."""
        self.metrics.rebalances.inc()
        for p in partitions:
            self.index.pop(p, None)
            self.partitions.pop(p, None)

    async def run_due(self, p: int, clock: int) -> None:
        """Process every customer of partition p with something due by `clock`."""
        index = self._index(p)
        for cid in index.pop_due(clock):
            try:
                await self._wake(cid, clock)
            except Exception:  # one customer's bug must not stop the partition's timers
                log.exception("waking a customer failed on partition %s", p)
        await self._maybe_finish_replay(p, clock)

    async def _wake(self, cid: str, clock: int) -> None:
        """Process one customer's due items; re-register its next wake-up."""
        key = cid.encode()
        raw = self.customers.get(key)
        if raw is None:
            return
        state = decode(raw)
        r, decisions, outcomes = advance(state.r, cid, clock, self.context())
        if r is not state.r:
            state.r = r
            self._save(key, state, clock)
            await self.emit(decisions, outcomes)
        else:  # a segment change falls due: refresh the projection only
            if self.projector is not None:
                self.projector.enqueue(cid, raw, clock)
            self._register(state, clock)

    # --- outputs -------------------------------------------------------------------------------

    async def emit(
        self, decisions: list[dict[str, Any]], outcomes: list[tuple[str, str, str]]
    ) -> None:
        for ritual, arm, outcome in outcomes:
            self.metrics.outcome_child(ritual, arm, outcome).inc()
        for record in decisions:
            key = record["customer_id"].encode()
            value = encode_decision(record)
            ns = self.settings.topic_namespace
            await self.topics["decisions"].send(
                key=key,
                value=value,
                headers=kafka_headers(record, namespace=ns, topic_kind="decision"),
            )
            if record["status"] == "delivered":
                await self.topics["nudges"].send(
                    key=key,
                    value=value,
                    headers=kafka_headers(record, namespace=ns, topic_kind="nudge"),
                )
            self.metrics.decision_child(record["ritual"], record["status"]).inc()
        self.kpis.count_decisions(decisions)

    async def dead_letter(self, message: Any, rejection: Rejection) -> None:
        await self.topics["dlq"].send(
            key=message.key, value=message.value, headers=dlq_headers(message, rejection)
        )
        self.metrics.dlq_child(rejection.reason).inc()
        self.metrics.processed_child(message.topic, "unknown", "dead_lettered").inc()

    async def _maybe_finish_replay(self, p: int, clock: int) -> None:
        """Tell `engage replay` when this partition has reached the end of its replay."""
        pt = self.partitions.get(p)
        if self.settings.mode != "replay" or pt is None or pt.replay is None or pt.replay_done:
            return
        if pt.replay.final is not None and clock < pt.replay.final:
            return
        if any(
            (pt.progress.get(t, Progress()).next_offset or 0) < end
            for t, end in pt.replay.ends.items()
        ):
            return
        pt.replay_done = True
        await self.app.producer.flush()  # every decision is out before the news that it is
        await self.topics["replay_status"].send(
            key=str(p).encode(),
            value=json.dumps(
                {"replay_id": pt.replay.replay_id, "partition": p, "clock": clock}
            ).encode(),
            partition=p,
        )


def _partition_of(key: bytes, partitions: int) -> int:
    """Kafka's default key partitioner (murmur2), the one SPEC §1 asks producers to use."""
    from aiokafka.partitioner import murmur2

    return (murmur2(key) & 0x7FFFFFFF) % partitions


def _tp(topic: str, partition: int) -> Any:
    from faust.types import TP

    return TP(topic, partition)
