"""Faust's own sensor (its `Monitor`), exported under the project's metric conventions.

Faust's bundled Prometheus sensor names metrics after the app, counts in milliseconds and
replaces the `/metrics` page; this collector instead reads the statistics Faust's default
monitor already keeps, at scrape time, and exports them as `engage_faust_*` in base units next
to the worker's own metrics. Labels are the table name and operation: closed sets.
"""

from __future__ import annotations

from collections.abc import Iterator
from statistics import fmean
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from stream.adapter.faust_private import started_consumer


class FaustSensor(Collector):
    """Reads `app.monitor` when Prometheus scrapes; costs nothing per event."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def collect(self) -> Iterator[Any]:
        m = self.app.monitor
        counters = {
            "messages_received": ("Messages received by the consumer.", m.messages_received_total),
            "messages_sent": ("Messages sent by the producer.", m.messages_sent),
            "events": ("Events handled by the streams.", m.events_total),
            "send_errors": ("Produce operations that failed.", m.send_errors),
            "assignments_completed": ("Partition assignments completed.", m.assignments_completed),
            "assignments_failed": ("Partition assignments failed.", m.assignments_failed),
            "rebalances": ("Rebalances seen by this worker.", m.rebalances),
        }
        for name, (doc, value) in counters.items():
            yield CounterMetricFamily(f"engage_faust_{name}", doc, value=value)
        yield GaugeMetricFamily(
            "engage_faust_messages_active", "Messages being processed.", value=m.messages_active
        )
        yield GaugeMetricFamily(
            "engage_faust_events_active", "Events being processed.", value=m.events_active
        )
        latencies = {
            "event_runtime": ("Mean time streams spent on an event.", m.events_runtime),
            "commit_latency": ("Mean offset commit time.", m.commit_latency),
            "send_latency": ("Mean producer send time.", m.send_latency),
            "assignment_latency": ("Mean partition assignment time.", m.assignment_latency),
        }
        for name, (doc, values) in latencies.items():
            yield GaugeMetricFamily(
                f"engage_faust_{name}_avg_seconds",
                f"{doc} Over Faust's recent history.",
                value=fmean(values) if values else 0.0,
            )
        tables = CounterMetricFamily(
            "engage_faust_table_keys",
            "Table key operations, by table and operation.",
            labels=["table", "operation"],
        )
        for name, state in sorted(m.tables.items()):
            tables.add_metric([name, "retrieved"], state.keys_retrieved)
            tables.add_metric([name, "updated"], state.keys_updated)
            tables.add_metric([name, "deleted"], state.keys_deleted)
        yield tables
        yield from self._recovery()

    def _recovery(self) -> Iterator[Any]:
        """Table restore: the changelog partitions this worker restores (active: it owns
        them) or mirrors (standby: a warm copy for a takeover), the changelog records still to
        read, whether the standbys have caught up, and the records restored so far."""
        recovery = self.app.tables.recovery
        partitions = GaugeMetricFamily(
            "engage_faust_table_partitions",
            "Table changelog partitions restored here: active (owned) or standby (mirrored).",
            labels=["role"],
        )
        remaining = GaugeMetricFamily(
            "engage_faust_recovery_remaining_records",
            "Changelog records still to read, by role (active or standby).",
            labels=["role"],
        )
        for role, tps, left in (
            ("active", recovery.active_tps, recovery.active_remaining_total),
            ("standby", recovery.standby_tps, recovery.standby_remaining_total),
        ):
            partitions.add_metric([role], len(tps))
            remaining.add_metric([role], max(0, left()))
        yield partitions
        yield remaining
        yield GaugeMetricFamily(
            "engage_faust_standbys_ready",
            "1 once the standby copies have caught up with their changelogs.",
            value=1 if self.app.tables.standbys_ready else 0,
        )
        consumer = started_consumer(self.app)  # None before the worker starts
        yield CounterMetricFamily(
            "engage_faust_changelog_records_restored",
            "Changelog records applied to the tables a fetch at a time (the direct drain).",
            value=getattr(consumer, "restored", 0),
        )
