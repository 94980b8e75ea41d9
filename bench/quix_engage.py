"""The engage core per key inside a Quix Streams application, for the throughput benchmark.

    .venv-bench/bin/python bench/quix_engage.py BOOTSTRAP APP_ID NAMESPACE EVENTS PARTITIONS \
        RESULT_FILE STATE_DIR

A Quix Streams (`quixstreams`, a bench-only dependency with its own virtualenv, see
`requirements-bench.lock`) application reads the input topics of NAMESPACE (the seven
`engage worker` folds) as one StreamingDataFrame (the topics concatenated, which gives them one
co-partitioned state store) and, for every message, runs the engage core on that one record:

1. the customer's encoded state comes from Quix's per-key State (RocksDB with a changelog
   topic, Quix's defaults: at-least-once, a checkpoint every 5 s). Every Quix setting is its
   default but one: the consumer poll timeout is 0.1 s instead of 1 s
   (`BENCH_QUIX_POLL_TIMEOUT=1.0` restores it). Quix orders the concatenated topics of one
   partition number by timestamp, and when a sparse topic's partition runs dry it waits for
   the next poll to learn that it is idle; a poll asks for 10,000 messages, so at the end of a
   finite backlog each such wait lasts the whole timeout (measured here, 30,000 events: 2,400
   events/s with 1 s, 5,300 with 0.1 s; nothing else changed);
2. the partition's `stream.core.engine.PartitionEngine` (one per partition, the same class and
   the same `EngineConfig` as `engage worker`: default rules, live clock, limits from
   `stream.settings.Settings`) validates, folds, and runs the rituals for that record
   (`engine.process([record])`, the wall clock read per message);
3. the changed states go back to Quix state (the current customer, and any other customer of the
   partition whose due ritual item the record's clock ran), with the partition's clock record
   under a key of its own; the decisions, nudges and dead letters are produced by Quix's
   producer (`to_topic`) to output topics of the app's own (`APP_ID.decisions`, ...).

When EVENTS messages have been handled it writes the seconds from the first to the last to
RESULT_FILE; the benchmark then stops the process.

What is equivalent to `engage worker`: the core code and configuration, per-key state in a
changelog-backed store, one state write per changed customer, outputs produced to Kafka, offsets
committed only after the state changelog and the outputs are flushed (Quix's checkpoint).

What is not:

* Per message instead of per batch: Quix hands the function one message at a time, so every
  record pays the engine's per-call costs (a state decoded and encoded per record, the clock
  record serialized per record) that the worker pays once per batch.
* A decision leaves the customer's outbox as soon as its outputs are handed to Quix's producer
  (one more state write, in the same checkpoint), not on the broker's acknowledgement: Quix
  rolls state and offsets back together when a checkpoint fails, so a crash re-sends rather
  than loses, but re-sends are not counted as such.
* Quix writes the changelog at each checkpoint, once per key changed since the last one; the
  worker writes a changelog record per changed key per batch.
* Outputs carry the input message's headers, not the worker's CloudEvents headers.
* No Prometheus metrics, KPIs, HTTP pages, Redis projection, clock ticks, erasures or replay
  control topic: the engine's metric counts are only summed in memory. After a restart the
  partition clock resumes from state but the due index is not rebuilt (a benchmark starts from
  empty state).
* Quix aligns the concatenated topics by message timestamp (see 1.); the worker reads its
  topics as they come.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, Protocol

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from stream.core.clock import PartitionTime, clock_for, wall_ms  # noqa: E402
from stream.core.engine import (  # noqa: E402
    DECISIONS,
    EngineConfig,
    Output,
    PartitionEngine,
    Record,
)
from stream.core.ingest import Limits  # noqa: E402
from stream.core.rules import load_rules  # noqa: E402
from stream.topic_names import input_topic  # noqa: E402

#: The Quix state key holding a customer's encoded state (under the customer's key prefix).
STATE_KEY = "customer"
#: The key prefix under which a partition's clock record is kept (never a customer id: those
#: are validated ids, and this one has a NUL byte).
CLOCK_PREFIX = b"\x00engage-partition-clock"


class KeyState(Protocol):
    """The part of Quix's per-key `State` the store uses."""

    def get_bytes(self, key: str, default: bytes | None = None) -> bytes | None:
        """The raw value under `key` for this state's prefix, or `default`."""
        ...

    def set_bytes(self, key: str, value: bytes) -> None:
        """Store a raw value under `key` for this state's prefix."""
        ...

    def delete(self, key: str) -> None:
        """Remove `key` for this state's prefix."""
        ...


class Transaction(Protocol):
    """The part of Quix's partition transaction the store uses: a State per key prefix."""

    def as_state(self, prefix: Any = ...) -> KeyState:
        """The state of one key (Quix prefixes every state key with the message key)."""
        ...


class QuixCustomerStore:
    """The engine's `CustomerStore` over Quix state: each customer's encoded state lives in
    that customer's own key-prefixed State, so a customer's state is exactly Quix's per-key
    state. `transaction` is the current message's partition transaction (set per message)."""

    def __init__(self) -> None:
        self.transaction: Transaction | None = None

    def _state(self, prefix: bytes) -> KeyState:
        if self.transaction is None:
            raise RuntimeError("no Quix transaction bound to the store")
        return self.transaction.as_state(prefix=prefix)

    def get(self, key: bytes) -> bytes | None:
        """The customer's encoded state, or None."""
        return self._state(key).get_bytes(STATE_KEY)

    def put(self, key: bytes, raw: bytes) -> None:
        """Write the customer's new encoded state."""
        self._state(key).set_bytes(STATE_KEY, raw)

    def delete(self, key: bytes) -> None:
        """Forget the customer."""
        self._state(key).delete(STATE_KEY)

    def clock(self, partition: int) -> bytes | None:
        """The partition's clock record, if one was written."""
        return self._state(CLOCK_PREFIX).get_bytes(str(partition))

    def put_clock(self, partition: int, raw: bytes) -> None:
        """Write the partition's clock record."""
        self._state(CLOCK_PREFIX).set_bytes(str(partition), raw)


class PerKeyEngage:
    """One `PartitionEngine` per partition, driven one record at a time over Quix state."""

    def __init__(self, config: EngineConfig, *, clock: Callable[[], int] = wall_ms) -> None:
        """`clock` reads the wall clock in milliseconds (tests pass a fixed one)."""
        self.config = config
        self.clock = clock
        self.store = QuixCustomerStore()
        self.engines: dict[int, PartitionEngine] = {}
        self.acked: dict[int, dict[bytes, set[str]]] = {}  # per partition, for its next record
        self.counts: Counter[tuple[str, ...]] = Counter()

    def _engine(self, partition: int) -> PartitionEngine:
        engine = self.engines.get(partition)
        if engine is None:
            raw = self.store.clock(partition)
            pt = PartitionTime.from_json(json.loads(raw)) if raw is not None else None
            engine = self.engines[partition] = PartitionEngine(
                partition, self.config, self.store, time=pt
            )
        return engine

    def handle(self, record: Record, transaction: Transaction) -> list[Output]:
        """Fold one record into its customer's Quix state; returns the outputs to produce.

        Decisions handed back are taken as acknowledged (the caller produces them in the same
        Quix checkpoint as the state writes): like in engage's own worker, they leave their
        outboxes in the partition's next state write (`process(acknowledged=...)`)."""
        store = self.store
        store.transaction = transaction
        p = record.partition
        engine = self._engine(p)
        result = engine.process(
            [record], wall_ms=self.clock(), acknowledged=self.acked.pop(p, None)
        )
        for key in result.erased:
            store.delete(key)
        for key, raw in result.states.items():
            store.put(key, raw)
        if result.time is not None:
            store.put_clock(p, result.time)
        for out in result.outputs:
            if out.name == DECISIONS and out.customer is not None and out.nudge_id is not None:
                self.acked.setdefault(p, {}).setdefault(out.customer, set()).add(out.nudge_id)
        self.counts.update(result.counts)
        return result.outputs


def engine_config(namespace: str, partitions: int) -> EngineConfig:
    """The engine configuration `engage worker` builds for this namespace (default settings)."""
    from schemas.events import EVENT_TYPES
    from stream.settings import Settings

    settings = Settings(topic_namespace=namespace, partitions=partitions)
    inputs = [input_topic(namespace, t) for t in EVENT_TYPES]
    return EngineConfig(
        rules=load_rules(settings.rules_file),
        clock=clock_for(settings.mode, grace_ms=settings.grace_ms),
        inputs={topic: topic.rsplit(".", 1)[-1] for topic in inputs},
        control_topic=settings.clock_topic,
        erasures_topic=settings.erasures_topic,
        namespace=namespace,
        partitions=partitions,
        limits=Limits(
            max_message_bytes=settings.max_message_bytes,
            max_future_skew=timedelta(seconds=settings.max_future_skew_s),
        ),
    )


def main() -> None:
    """Run the Quix application until the benchmark stops it."""
    from quixstreams import Application, message_context
    from quixstreams.models.serializers import SerializationContext, Serializer

    from schemas.events import EVENT_TYPES

    bootstrap, app_id, namespace, events, partitions, result, state_dir = sys.argv[1:8]
    n, parts = int(events), int(partitions)
    core = PerKeyEngage(engine_config(namespace, parts))

    class OutputValue(Serializer):
        """An engine `Output` goes to Kafka as its already-encoded value."""

        def __call__(self, value: Output, ctx: SerializationContext) -> bytes | None:
            return value.value

    app = Application(
        broker_address=bootstrap,
        consumer_group=app_id,
        auto_offset_reset="earliest",
        state_dir=state_dir,
        loglevel="WARNING",
        consumer_poll_timeout=float(os.environ.get("BENCH_QUIX_POLL_TIMEOUT", "0.1")),
    )
    inputs = [
        app.topic(input_topic(namespace, t), key_deserializer="bytes",
                  value_deserializer="bytes")
        for t in EVENT_TYPES
    ]  # fmt: skip
    outputs = {
        name: app.topic(f"{app_id}.{name}", key_serializer="bytes", value_serializer=OutputValue())
        for name in ("decisions", "nudges", "dlq", "replay_status", "erasure_receipts")
    }
    sdf = app.dataframe(inputs[0])
    for topic in inputs[1:]:
        sdf = sdf.concat(app.dataframe(topic))

    seen, first = 0, 0.0

    def engage(value: bytes, key: bytes, timestamp: int, headers: Any, state: Any) -> list[Output]:
        nonlocal seen, first
        if not first:
            first = time.perf_counter()
        ctx = message_context()
        record = Record(ctx.topic, ctx.partition, ctx.offset, timestamp, key, value,
                        tuple(headers or ()))  # fmt: skip
        # Quix's State of this message's key; its transaction (a private attribute: Quix
        # offers no public way) gives the State of any other key of the partition, for a
        # customer woken by a due ritual item.
        out = core.handle(record, state._transaction)
        seen += 1
        if seen == n:
            elapsed = time.perf_counter() - first
            counts = core.counts
            print(f"{n} events: {sum(v for k, v in counts.items() if k[0] == 'decision')} "
                  f"decisions, {sum(v for k, v in counts.items() if k[0] == 'dlq')} dead letters",
                  flush=True)  # fmt: skip
            Path(result).write_text(f"{elapsed:.6f}")
        return out

    sdf = sdf.apply(engage, stateful=True, metadata=True, expand=True)
    sdf.to_topic(lambda value, key, ts, headers: outputs[value.name], key=lambda o: o.key)
    app.run()


if __name__ == "__main__":
    main()
