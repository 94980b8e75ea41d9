"""The Faust application: a thin shell around the pure core's partition engines.

One agent (concurrency 1) reads all co-partitioned input topics, the clock/control topic and the
erasures topic as raw bytes, in batches, and hands each batch to `BatchShell`
(`stream/adapter/shell.py`), which runs one `PartitionEngine` (`stream/core/engine.py`) per
partition and writes each changed customer once per batch to the changelog partition of the
input partition it came from. `create_app` only wires the parts together: the topics and tables
(`stream.adapter.topology`), the agent and its stop on failure (`stream.adapter.agent`), the
timers, which only send or read (`stream.adapter.timers`), and the HTTP routes behind the token
guard (`stream.adapter.pages`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import faust

from stream.adapter.agent import add_agent
from stream.adapter.collector import CycleCollector
from stream.adapter.drain import DirectConsumer, LeanApp
from stream.adapter.faust_private import install_commit_rule
from stream.adapter.faust_sensor import FaustSensor
from stream.adapter.pages import add_pages
from stream.adapter.sender import Sender
from stream.adapter.shell import BatchShell
from stream.adapter.timers import add_timers
from stream.adapter.topology import declare
from stream.core.clock import clock_for
from stream.core.engine import EngineConfig
from stream.core.ingest import Limits
from stream.core.rules import Rules, load_rules
from stream.core.state import CustomerState, Peek
from stream.kafka_client import faust_options
from stream.serving.projector import RedisProjector, next_segment_change
from stream.settings import Settings
from stream.telemetry.kpis import Kpis
from stream.telemetry.metrics import PipelineMetrics

#: Faust's built-in web views, all off: `/table/...` reads raw table values (a customer's whole
#: state), `/router/...` and `/stats` describe the cluster. Routing `/customers/...` to the
#: owning worker uses Faust's in-process router, not these views.
NO_FAUST_VIEWS = {
    "web_tables_enabled": False,
    "web_router_enabled": False,
    "web_stats_enabled": False,
    "web_graph_enabled": False,
    "web_metrics_enabled": False,
}


class RedisProjection:
    """The engine's `Projection`: changed profiles to the Redis projector (coalesced there)."""

    def __init__(self, projector: RedisProjector, rules: Rules) -> None:
        self.projector = projector
        self.rules = rules

    def enqueue(self, customer_id: str, state: bytes | None, clock_ms: int) -> None:
        """Hand the latest state to the projector's background loop (no I/O here)."""
        self.projector.enqueue(customer_id, state, clock_ms)

    def next_change(self, state: CustomerState | Peek, clock_ms: int) -> int | None:
        """When the customer's segments next change by themselves: a wake-up for Redis."""
        return next_segment_change(state, clock_ms, self.rules.profile)


@dataclass
class Engage:
    """The app and the handles tests and commands need."""

    app: faust.App
    settings: Settings
    table: Any
    shell: BatchShell
    metrics: PipelineMetrics
    kpis: Kpis
    not_ready_since: float | None = None

    def is_ready(self) -> bool:
        """Recovered, assigned and started (/readyz)."""
        app = self.app
        try:
            assigned = bool(app.consumer.assignment())
        except Exception:  # consumer not started yet
            return False
        return (
            assigned
            and not app.rebalancing
            and not app.in_recovery
            and app.tables.recovery.completed.is_set()
            and self._engines_started()
        )

    def _engines_started(self) -> bool:
        """With the direct drain, the engines of the assigned partitions are started (due
        indexes rebuilt) before the first fetch: ready means able to process at once."""
        consumer = self.app.consumer
        if not isinstance(consumer, DirectConsumer):
            return True  # the other drains start a partition at its first batch
        inputs = self.shell.config.inputs
        assigned = {tp.partition for tp in consumer.assignment() if tp.topic in inputs}
        return self.shell.started(assigned)

    def health(self) -> tuple[bool, str]:
        """Alive and making progress (/healthz): false once the agent has stopped on an
        error, or when input waits and no batch was handled for `stall_after_s`."""
        shell = self.shell
        if shell.failure is not None:
            return False, f"agent stopped: {type(shell.failure).__name__}"
        now = time.monotonic()
        if not self.is_ready():
            # Starting, rebalancing or recovering: fine for a while. Faust's table recovery can
            # wait forever on a changelog partition ("No event received for active tp ... since
            # recovery start"); a restart gets past it, so past a bound this is unhealthy.
            since = self.not_ready_since = self.not_ready_since or now
            waited = now - since
            if waited > self.settings.recovery_stuck_after_s:
                return False, f"not ready for {waited:.0f} s (recovery stuck?)"
            return True, "ok"
        self.not_ready_since = None
        idle = now - shell.last_batch
        if idle > self.settings.stall_after_s and shell.waiting_input():
            return False, f"no progress for {idle:.0f} s while input waits"
        return True, "ok"


def create_app(settings: Settings, rules: Rules | None = None) -> Engage:
    """Build the Faust app for these settings (no I/O until the worker starts)."""
    rules = rules or load_rules(settings.rules_file)
    # Commits never crawl nor pass an unprocessed offset (`stream.core.commit.next_commit`).
    install_commit_rule()
    app = LeanApp(
        settings.app_id,
        store=settings.store,
        datadir=settings.data_dir,
        topic_partitions=settings.partitions,
        # Faust's own topics (the assignor's leader topic): as many copies as ours. The worker
        # resolves an unset factor from the cluster before it builds the app.
        topic_replication_factor=settings.replication_factor or 1,
        web_host=settings.web_host,
        web_bind=settings.web_host,
        web_port=settings.web_port,
        canonical_url=settings.advertised_url,  # what other workers route requests to
        web_in_thread=False,
        **NO_FAUST_VIEWS,
        **faust_options(settings),
    )
    app.drain = settings.drain  # before anything creates the transport
    app.fetch_max_wait_ms = settings.consumer_fetch_max_wait_ms  # and its consumer
    app.fetch_min_bytes = settings.consumer_fetch_min_bytes
    topology = declare(app, settings)
    metrics = PipelineMetrics(rules=rules)
    metrics.registry.register(FaustSensor(app))
    kpis = Kpis(metrics.registry)
    projection = _projection(app, settings, rules, metrics)
    shell = BatchShell(
        app=app,
        config=engine_config(settings, rules),
        customers=topology.customers,
        control=topology.control,
        topics=topology.outputs,
        metrics=metrics,
        kpis=kpis,
        projection=projection,
        sender=Sender(app),
        write_interval_s=settings.state_write_interval_ms / 1000
        if settings.drain == "direct"
        else 0.0,  # the stream's drains acknowledge each batch as it ends
        collector=CycleCollector(
            interval_s=settings.gc_full_interval_s, observe=metrics.observe_full_collection
        ),
    )
    if projection is not None:
        projection.projector.on_written = shell.projected
    engage = Engage(app, settings, topology.customers, shell, metrics, kpis)
    add_agent(app, settings, shell, topology.inputs)
    add_timers(
        app,
        settings,
        shell=shell,
        clock_topic=topology.clock,
        customers=topology.customers,
        kpis=kpis,
        rules=rules,
    )

    @app.on_partitions_revoked.connect
    async def on_revoked(app: faust.App, revoked: set[Any], **kwargs: Any) -> None:
        """Faust has waited for the batch in progress and flushed the producer: the revoked
        partitions' acknowledged decisions leave their outboxes, then their engines go."""
        partitions = {tp.partition for tp in revoked}
        await shell.release(partitions)
        shell.forget(partitions)

    @app.on_before_shutdown.connect
    async def on_shutdown(app: faust.App, **kwargs: Any) -> None:
        """A clean stop: the consumer has stopped; acknowledged decisions leave their
        outboxes before the producer's last flush, so a restart sends none of them again."""
        await shell.release(list(shell.engines))

    add_pages(app, engage, rules)
    return engage


def engine_config(settings: Settings, rules: Rules) -> EngineConfig:
    """What every partition engine of this worker is configured with."""
    return EngineConfig(
        rules=rules,
        clock=clock_for(settings.mode, grace_ms=settings.grace_ms),
        inputs={topic: topic.rsplit(".", 1)[-1] for topic in settings.input_topics.values()},
        control_topic=settings.clock_topic,
        erasures_topic=settings.erasures_topic,
        namespace=settings.topic_namespace,
        partitions=settings.partitions,
        wake_batch=settings.wake_batch,
        limits=Limits(
            max_message_bytes=settings.max_message_bytes,
            max_future_skew=timedelta(seconds=settings.max_future_skew_s),
        ),
    )


def _projection(
    app: faust.App, settings: Settings, rules: Rules, metrics: PipelineMetrics
) -> RedisProjection | None:
    """The Redis projection and its background task, unless Redis is off or in replay mode."""
    if not settings.redis_enabled or settings.mode == "replay":
        return None
    projector = RedisProjector(
        settings.redis_url.get_secret_value(),
        rules,
        metrics.registry,
        linger_s=settings.projection_interval_s,
    )

    @app.task
    async def project_to_redis() -> None:
        """Background writes of changed profiles, coalesced; the stream never waits."""
        await projector.run()

    return RedisProjection(projector, rules)
