"""Pipeline metrics (SPEC §5), with label children cached up front.

Labels are small closed sets (topic, type, outcome, reason; rituals and rules versions come
from the loaded rules files, at most 64 rituals a file), never ids: the series count does not
grow with customers. Children are resolved once per label tuple, so the per-event cost is a dict
lookup and an increment, not prometheus-client's label validation.
"""

from __future__ import annotations

import logging
from bisect import bisect_left
from collections import Counter as Tally
from collections.abc import Callable, Mapping, Sequence
from functools import cache

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

from stream.core.ingest import REASONS
from stream.core.rituals import OUTCOMES
from stream.core.rules import Rules, load_rules
from stream.core.state import UNREADABLE_REASONS
from stream.core.vocabulary import Status

log = logging.getLogger("engage")

# Sub-millisecond to minutes: processing is ~0.1 ms, lag after an outage can be minutes.
LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
)


class PipelineMetrics:
    """The worker's own metrics, in a registry of its own (one per app instance)."""

    def __init__(
        self, registry: CollectorRegistry | None = None, rules: Rules | None = None
    ) -> None:
        """`rules` names the rituals and rules versions whose series exist from the start
        (the packaged rituals when not given)."""
        self.registry = registry or CollectorRegistry()
        r = self.registry
        # The standard process metrics (process_cpu_seconds_total, resident memory, open
        # files): a worker's CPU time per processed event is what sizes a deployment
        # (bench/scale.py, docs/scaling.md). Read from /proc when scraped, nothing per event.
        ProcessCollector(registry=r)
        # The worker's own full collections (`stream.adapter.collector`): each holds the
        # event loop while it scans every live object.
        self.gc_full_seconds = Histogram(
            "engage_gc_full_collection_seconds",
            "Full collections of the cycle collector run on the worker's schedule, by duration.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.gc_found = Counter(
            "engage_gc_full_collection_objects_total",
            "Unreachable objects found by the worker's full collections.",
            registry=r,
        )
        self.consumed = Counter(
            "engage_events_consumed_total",
            "Messages read from the input topics.",
            ["topic"],
            registry=r,
        )
        self.processed = Counter(
            "engage_events_processed_total",
            "Messages handled, by input topic, event type and outcome.",
            ["topic", "type", "outcome"],
            registry=r,
        )
        self.dlq = Counter(
            "engage_dlq_messages_total",
            "Messages sent to the dead-letter topic, by reason code.",
            ["reason"],
            registry=r,
        )
        self.duplicates = Counter(
            "engage_duplicate_events_total",
            "Events dropped because their event_id repeats a recent one of the customer.",
            ["type"],
            registry=r,
        )
        self.processing_seconds = Histogram(
            "engage_processing_seconds",
            "Time to handle one message: each batch's handling time per message, observed once "
            "per batch.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.lag_seconds = Histogram(
            "engage_end_to_end_lag_seconds",
            "Wall clock at processing minus the event's occurred_at.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ready = Gauge(
            "engage_worker_ready",
            "1 when the worker has recovered its tables and holds an assignment.",
            registry=r,
        )
        self.late_events = Counter(
            "engage_late_events_total",
            "Events older than their partition's clock when read (folded, never re-deciding).",
            registry=r,
        )
        self.partition_clock = Gauge(
            "engage_partition_clock_seconds",
            "Each partition's clock, as Unix time.",
            ["partition"],
            registry=r,
        )
        self.decisions = Counter(
            "engage_ritual_decisions_total",
            "Ritual decisions, by ritual, status and the version of the rules that made them.",
            ["ritual", "status", "rules_version"],
            registry=r,
        )
        self.outcomes = Counter(
            "engage_ritual_outcomes_total",
            "Per ritual and arm (treated = delivered, held_out): decisions, and customers who "
            "within the outcome window came back, reviewed, purchased or clicked the nudge itself "
            "(clicked: click-through). Lift is a ratio of these.",
            ["ritual", "arm", "outcome", "rules_version"],
            registry=r,
        )
        self.watermark_lag = Gauge(
            "engage_watermark_lag_seconds",
            "Live mode: wall clock minus each partition's clock.",
            ["partition"],
            registry=r,
        )
        self.consumer_lag = Gauge(
            "engage_consumer_lag_messages",
            "Input messages not processed yet per owned input topic-partition: the end offset "
            "as last fetched minus the next offset to process (set when scraped).",
            ["topic", "partition"],
            registry=r,
        )
        self.redelivered = Counter(
            "engage_redelivered_events_total",
            "Input messages read again after a restart or rebalance and skipped: their offset "
            "is recorded as folded in the customer's state.",
            registry=r,
        )
        self.resent = Counter(
            "engage_decisions_resent_total",
            "Decisions sent again, under the same nudge_id, after a worker took over a "
            "partition whose sends were never acknowledged.",
            registry=r,
        )
        self.wake_errors = Counter(
            "engage_wake_errors_total",
            "Due items of a customer that raised while processed (logged, skipped).",
            registry=r,
        )
        self.unreadable_states = Counter(
            "engage_unreadable_states_total",
            "Stored customer states a partition start could not read, by reason: "
            "newer_format (written by a newer release: refused, not misread) or malformed "
            "(logged, skipped: such a customer is woken by no timer until an event of theirs "
            "comes, and that event is dead-lettered while the state stays unreadable).",
            ["reason"],
            registry=r,
        )
        self.erasures = Counter(
            "engage_erasures_total",
            "Erasure requests honoured, by whether the customer was known (found: true/false).",
            ["found"],
            registry=r,
        )
        self.rebalances = Counter(
            "engage_rebalances_total", "Partition revocations seen by this worker.", registry=r
        )
        self.state_writes = Counter(
            "engage_state_writes_total",
            "Customer states written to the table and its changelog (write-behind: each changed "
            "customer once per write, however many events changed it).",
            registry=r,
        )
        for reason in REASONS:
            self.dlq.labels(reason)
        for reason in UNREADABLE_REASONS:
            self.unreadable_states.labels(reason)
        rules = rules if rules is not None else load_rules()
        for ritual in rules.ritual_names:
            for arm in ("treated", "held_out"):
                for outcome in OUTCOMES:
                    self.outcomes.labels(ritual, arm, outcome, rules.version)
            for status in Status:
                self.decisions.labels(ritual, status, rules.version)

    @cache  # noqa: B019 - bounded by the closed label sets; lives as long as the worker
    def consumed_child(self, topic: str) -> Counter:
        return self.consumed.labels(topic)

    @cache  # noqa: B019
    def processed_child(self, topic: str, kind: str, outcome: str) -> Counter:
        return self.processed.labels(topic, kind, outcome)

    @cache  # noqa: B019
    def dlq_child(self, reason: str) -> Counter:
        return self.dlq.labels(reason)

    @cache  # noqa: B019
    def duplicate_child(self, kind: str) -> Counter:
        return self.duplicates.labels(kind)

    @cache  # noqa: B019
    def decision_child(self, ritual: str, status: str, version: str) -> Counter:
        return self.decisions.labels(ritual, status, version)

    @cache  # noqa: B019
    def partition_clock_child(self, partition: int) -> Gauge:
        return self.partition_clock.labels(str(partition))

    @cache  # noqa: B019
    def outcome_child(self, ritual: str, arm: str, outcome: str, version: str) -> Counter:
        return self.outcomes.labels(ritual, arm, outcome, version)

    @cache  # noqa: B019
    def erasures_child(self, found: bool) -> Counter:
        return self.erasures.labels("true" if found else "false")

    def add_counts(self, counts: Mapping[tuple[str, ...], int]) -> None:
        """Add a batch's engine counts (`BatchResult.counts`) to their counters.

        A key is a count name and then its labels (`("processed", topic, type, outcome)`);
        `COUNTERS` maps each name to its counter child. A name with no counter is a release
        whose engine counts something the metrics do not know yet: the counts are dropped and
        that is logged once per name rather than stopping the worker over a metric."""
        for key, n in counts.items():
            child = COUNTERS.get(key[0])
            if child is None:
                self._unknown_count(key[0])
                continue
            child(self, key).inc(n)

    @cache  # noqa: B019 - one warning per unknown name
    def _unknown_count(self, name: str) -> None:
        log.warning("engine count %r has no metric: dropped", name)

    def set_consumer_lags(self, lags: dict[tuple[str, int], int]) -> None:
        """Replace every consumer-lag sample with `lags` ((topic, partition) -> messages), so
        a partition this worker no longer owns stops being reported."""
        self.consumer_lag.clear()
        for (topic, partition), lag in lags.items():
            self.consumer_lag.labels(topic, str(partition)).set(lag)

    def observe_full_collection(self, seconds: float, found: int) -> None:
        """One full collection of the worker's schedule: its duration and what it found."""
        self.gc_full_seconds.observe(seconds)
        self.gc_found.inc(found)

    def observe_lags(self, lags: Sequence[float]) -> None:
        """A batch's end-to-end lags (one per event) into their histogram: `observe_all`."""
        observe_all(self.lag_seconds, lags)

    @cache  # noqa: B019
    def watermark_lag_child(self, partition: int) -> Gauge:
        return self.watermark_lag.labels(str(partition))


#: Engine count name -> the counter child a count of that key adds to. The key's other items
#: are the counter's labels; counters without labels ignore them (`redelivered` carries the
#: topic for the engine's own use, the metric has no topic label).
COUNTERS: dict[str, Callable[[PipelineMetrics, tuple[str, ...]], Counter]] = {
    "consumed": lambda m, key: m.consumed_child(key[1]),
    "processed": lambda m, key: m.processed_child(key[1], key[2], key[3]),
    "dlq": lambda m, key: m.dlq_child(key[1]),
    "duplicate": lambda m, key: m.duplicate_child(key[1]),
    "decision": lambda m, key: m.decision_child(key[1], key[2], key[3]),
    "outcome": lambda m, key: m.outcome_child(key[1], key[2], key[3], key[4]),
    "erasure": lambda m, key: m.erasures_child(key[1] == "true"),
    "redelivered": lambda m, key: m.redelivered,
    "resent": lambda m, key: m.resent,
    "late": lambda m, key: m.late_events,
    "wake_errors": lambda m, key: m.wake_errors,
}


def observe_all(histogram: Histogram, amounts: Sequence[float]) -> None:
    """Observe a batch of values: what `observe` per value gives (the same bucket counts, the
    same sum up to float rounding), with one increment per bucket hit and one of the sum
    instead of a locked increment and a bucket scan per value (a lag is observed per event).

    prometheus-client has no batch observe; this reads the histogram's bucket bounds and
    values (`_upper_bounds`, `_buckets`, `_sum`), which `tests/telemetry` checks against
    `observe` on the pinned version."""
    if not amounts:
        return
    bounds = histogram._upper_bounds  # type: ignore[attr-defined]
    buckets = histogram._buckets  # type: ignore[attr-defined]
    for index, hits in Tally(bisect_left(bounds, amount) for amount in amounts).items():
        buckets[index].inc(hits)
    histogram._sum.inc(sum(amounts))  # type: ignore[attr-defined]
