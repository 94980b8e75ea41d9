"""The Faust application: a thin shell around the pure core's partition engines.

One agent (concurrency 1) reads all co-partitioned input topics, the clock/control topic and the
erasures topic as raw bytes, in batches (`take_events`), and hands each batch to `BatchShell.handle`
(`stream/adapter/shell.py`), which runs one `PartitionEngine` (`stream/core/engine.py`) per
partition and writes each changed customer once per batch to the changelog partition of the
input partition it came from. Timers only send (clock ticks to the co-partitioned clock topic);
they never change state. With `ENGAGE_API_TOKEN` set, every HTTP route but the probes and
/metrics needs the bearer token (`stream.adapter.access`); Faust's own web views (raw table
values, routing metadata, sensor statistics) are not served at all.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import faust
from prometheus_client import generate_latest

from stream.adapter import offsets
from stream.adapter.access import guard
from stream.adapter.drain import DirectConsumer, LeanApp
from stream.adapter.faust_sensor import FaustSensor
from stream.adapter.sender import Sender
from stream.adapter.shell import BatchShell
from stream.adapter.tables import PartitionedTable
from stream.core.clock import clock_for, wall_now
from stream.core.engine import EngineConfig, Record
from stream.core.ingest import Limits
from stream.core.profile import view
from stream.core.rules import Rules, load_rules
from stream.core.state import CustomerState, Peek, UnsupportedStateFormat, decode, to_ms
from stream.kafka_client import faust_options
from stream.serving.projection import RedisProjector, next_segment_change
from stream.settings import Settings
from stream.telemetry.kpis import Kpis, Snapshot, add_to_snapshot
from stream.telemetry.kpis import summary as kpi_summary
from stream.telemetry.metrics import PipelineMetrics
from stream.topic_names import CONTROL_TABLE, CUSTOMERS_TABLE

log = logging.getLogger("engage")

# aiohttp refuses a charset inside content_type; Prometheus needs only the version.
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4"
RAW = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw"}
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


def _table(app: faust.App, name: str, settings: Settings) -> PartitionedTable:
    # Should Faust create the changelog (`engage topics` normally has), it gets the same
    # in-sync minimum as the other topics.
    durability = (
        {"min.insync.replicas": str(settings.min_insync_replicas)}
        if settings.min_insync_replicas
        else {}
    )
    table = PartitionedTable(
        app,
        name=name,
        default=None,
        beacon=app.tables.beacon,
        partitions=settings.partitions,
        key_type=bytes,
        value_type=bytes,
        source_topic=settings.clock_topic,
        extra_topic_configs=durability,
    )
    app.tables.add(table)
    return table


def create_app(settings: Settings, rules: Rules | None = None) -> Engage:
    """Build the Faust app for these settings (no I/O until the worker starts)."""
    rules = rules or load_rules(settings.rules_file)
    if settings.processing_guarantee == "at_least_once":
        # Commits never crawl nor pass an unprocessed offset (see the module). Transactions
        # (exactly_once) put markers in the changelog and output topics, which are real gaps:
        # there Faust's own bookkeeping stays.
        offsets.install()
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
    stream_topics = app.topic(
        *settings.input_topics.values(),
        settings.clock_topic,
        settings.erasures_topic,  # co-partitioned: the owner of a customer forgets it
        partitions=settings.partitions,
        **RAW,
    )
    clock_topic = app.topic(settings.clock_topic, partitions=settings.partitions, **RAW)
    outputs = {
        name: app.topic(topic, partitions=settings.partitions, **RAW)
        for name, topic in {
            "dlq": settings.dlq_topic,
            "decisions": settings.decisions_topic,
            "nudges": settings.nudges_topic,
            "replay_status": settings.replay_status_topic,
            "erasure_receipts": settings.erasure_receipts_topic,
        }.items()
    }
    # bytes key and value types make Faust use the raw codec: we encode values ourselves.
    table = _table(app, CUSTOMERS_TABLE, settings)
    control = _table(app, CONTROL_TABLE, settings)
    metrics = PipelineMetrics(rules=rules)
    metrics.registry.register(FaustSensor(app))
    kpis = Kpis(metrics.registry)
    projection = None
    if settings.redis_enabled and settings.mode != "replay":
        projector = RedisProjector(
            settings.redis_url.get_secret_value(),
            rules,
            metrics.registry,
            linger_s=settings.projection_interval_s,
        )
        projection = RedisProjection(projector, rules)

        @app.task
        async def project_to_redis() -> None:
            """Background writes of changed profiles, coalesced; the stream never waits."""
            await projector.run()

    config = EngineConfig(
        rules=rules,
        clock=clock_for(settings.mode, grace_ms=settings.grace_ms),
        inputs={topic: topic.rsplit(".", 1)[-1] for topic in settings.input_topics.values()},
        control_topic=settings.clock_topic,
        erasures_topic=settings.erasures_topic,
        namespace=settings.topic_namespace,
        partitions=settings.partitions,
        limits=Limits(
            max_message_bytes=settings.max_message_bytes,
            max_future_skew=timedelta(seconds=settings.max_future_skew_s),
        ),
    )
    shell = BatchShell(
        app=app,
        config=config,
        customers=table,
        control=control,
        topics=outputs,
        metrics=metrics,
        kpis=kpis,
        projection=projection,
        # exactly_once sends through Faust's transactional producers, at-least-once directly
        sender=Sender(app) if settings.processing_guarantee == "at_least_once" else None,
    )
    if projection is not None:
        projection.projector.on_written = shell.projected
    token = settings.api_token.get_secret_value() if settings.api_token else None
    engage = Engage(app, settings, table, shell, metrics, kpis)
    # The token guards the whole web application, whatever registers a route on it.
    app.on_webserver_init = lambda web: guard(web.web_app, token)

    async def direct(records: list[Record]) -> list[Record]:
        """The direct drain's batches to the engines (see `stream.adapter.drain`). An error of
        the shell itself stops here without acknowledging the batch and makes /healthz fail."""
        try:
            return await shell.handle_records(records)
        except Exception as exc:
            log.exception("the batch shell failed: stopping (see /healthz)")
            shell.failure = exc
            await asyncio.Event().wait()  # never acknowledge this batch
            raise

    async def prepare(partitions: set[int]) -> None:
        """The direct drain's start of newly assigned partitions (`BatchShell.prepare`); an
        error stops there, like a failed batch."""
        try:
            await shell.prepare(partitions)
        except Exception as exc:
            log.exception("starting partitions failed: stopping (see /healthz)")
            shell.failure = exc
            await asyncio.Event().wait()
            raise

    @app.agent(stream_topics, name="ingest", concurrency=1)
    async def ingest(stream: faust.StreamT) -> None:
        """Batches to the engines. With the direct drain the consumer hands the batches over
        itself and this stream stays empty (it makes Faust subscribe to the topics). An error
        of the shell itself stops here without acknowledging the batch (at-least-once) and
        makes /healthz fail."""
        consumer = app.consumer
        if isinstance(consumer, DirectConsumer):
            consumer.direct_topics = frozenset(stream_topics.topics)
            consumer.direct_sink = direct
            consumer.direct_prepare = prepare
        async for events in stream.take_events(
            settings.batch_max_events, within=settings.batch_within_s
        ):
            try:
                await shell.handle(events)
            except Exception as exc:
                log.exception("the batch shell failed: stopping the agent (see /healthz)")
                shell.failure = exc
                await asyncio.Event().wait()  # never acknowledge this batch

    @app.task
    async def bigger_producer_buffer() -> None:
        """Faust's producer buffer blocks the stream above 100 queued sends by default; a
        batch queues one write per changed customer at once."""
        app.producer.buffer.max_messages = settings.producer_buffer_messages

    if settings.mode == "live":

        @app.timer(settings.tick_interval_s)
        async def tick() -> None:
            """Wall-clock timers only send: one tick per partition, handled by its owner."""
            value = json.dumps({"kind": "tick"}).encode()
            for p in range(settings.partitions):
                await clock_topic.send(value=value, partition=p)

    if settings.mode == "replay":

        @app.timer(settings.tick_interval_s * 4)
        async def recheck_replay() -> None:
            """After a restart nothing may be left to read: a tick to each owned partition
            whose replay is declared and unfinished re-checks its completion."""
            value = json.dumps({"kind": "tick"}).encode()
            try:
                assigned = {
                    tp.partition
                    for tp in app.consumer.assignment()
                    if tp.topic == settings.clock_topic
                }
            except Exception:  # consumer not started yet
                return
            for p in sorted(assigned):
                engine = shell.engines.get(p)  # None: not started since the restart
                if engine is None or (
                    engine.time.replay is not None and not engine.time.replay_done
                ):
                    await clock_topic.send(value=value, partition=p)

    next_refresh = [0.0]  # monotonic time before which the segment gauges are not read again

    @app.timer(settings.kpi_interval_s)
    async def refresh_segments() -> None:
        """Segment gauges from this worker's own partitions: reads only, never writes.

        A full read of the table is the one cost here that grows with the customers (a few
        seconds for a million): it is read a chunk at a time with the stream served between
        chunks, and after a read that took T the next waits at least 9 T, so the gauges never
        take more than a tenth of the worker's time (with a million customers they refresh
        every minute or so instead of every `ENGAGE_KPI_INTERVAL_S`)."""
        if time.monotonic() < next_refresh[0]:
            return
        clock = to_ms(wall_now()) if settings.mode == "live" else shell.latest_clock()
        if clock == 0:
            return  # replay before its declaration: no "now" to read segments at
        snap = Snapshot()
        started = time.monotonic()
        try:
            for chunk in table.scan(sorted(shell.engines), chunk=500):
                for _key, raw in chunk:
                    try:
                        state = decode(raw)
                    except UnsupportedStateFormat:
                        continue  # a newer release's customer: counted at partition start
                    add_to_snapshot(snap, state, clock, rules.profile)
                await asyncio.sleep(0)  # a large table must not stall the stream
        except Exception:  # a timer that raises stops the whole Faust app: log, keep going
            log.exception("segment refresh failed")
            return
        finally:
            took = time.monotonic() - started
            next_refresh[0] = time.monotonic() + 9 * took
        kpis.publish(snap)

    @app.on_partitions_revoked.connect
    async def on_revoked(app: faust.App, revoked: set[Any], **kwargs: Any) -> None:
        shell.forget({tp.partition for tp in revoked})

    @app.page("/metrics")
    async def metrics_page(web: Any, request: Any) -> Any:
        metrics.ready.set(1 if engage.is_ready() else 0)
        try:
            metrics.set_consumer_lags(shell.consumer_lags())
        except Exception:  # a scrape must answer whatever the consumer's state
            log.exception("consumer lag not read")
        return web.bytes(generate_latest(metrics.registry), content_type=METRICS_CONTENT_TYPE)

    @app.page("/kpis")
    async def kpis_page(web: Any, request: Any) -> Any:
        return web.json(kpi_summary(metrics.registry))

    @app.page("/healthz")
    async def healthz(web: Any, request: Any) -> Any:
        ok, why = engage.health()
        return web.json({"status": "ok" if ok else why}, status=200 if ok else 503)

    @app.page("/readyz")
    async def readyz(web: Any, request: Any) -> Any:
        ready = engage.is_ready()
        return web.json({"ready": ready}, status=200 if ready else 503)

    @app.page("/customers/{customer_id}")
    # The token is checked before routing: an unauthorised request never reaches another worker.
    @app.table_route(table=table, match_info="customer_id")
    async def customer(web: Any, request: Any, customer_id: str) -> Any:
        raw = table.data.get(customer_id.encode("utf-8"))
        if raw is None:
            return web.json({"error": "unknown customer"}, status=404)
        try:
            state = decode(raw)
        except UnsupportedStateFormat as exc:
            return web.json({"error": str(exc)}, status=500)
        clock = to_ms(wall_now()) if settings.mode == "live" else shell.latest_clock()
        clock = max(clock, state.last_seen)  # never read a profile before its own events
        return web.bytes(
            json.dumps(view(state, clock, rules.profile)).encode(),
            content_type="application/json",
        )

    return engage
