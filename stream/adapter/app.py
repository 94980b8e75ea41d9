"""The Faust application: a thin shell around the pure core.

One agent (concurrency 1) reads all seven co-partitioned input topics (plus the clock and
erasures topics) as raw bytes, hands each message to `Processor.handle`, which validates it
(`stream.core.ingest`), dead-letters what cannot be accepted, and folds the rest into the
`customers` table (`stream.core.state`). Table writes (and erasure tombstones) happen only
here, inside stream iteration, for the key of the message being processed: Faust sends a write
to the changelog partition of the current event. `/customers/...` and `/kpis` need the bearer
token when `ENGAGE_API_TOKEN` is set (`stream.adapter.access`).
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Any

import faust
from prometheus_client import generate_latest

from stream.adapter.access import guarded
from stream.adapter.faust_sensor import FaustSensor
from stream.adapter.processor import Processor
from stream.core.clock import wall_now
from stream.core.profile import view
from stream.core.rules import Rules, load_rules
from stream.core.state import decode, to_ms
from stream.kafka_client import faust_credentials
from stream.serving.projection import RedisProjector
from stream.settings import Settings
from stream.telemetry.kpis import Snapshot, add_to_snapshot
from stream.telemetry.kpis import summary as kpi_summary
from stream.telemetry.metrics import PipelineMetrics

log = logging.getLogger("engage")

# aiohttp refuses a charset inside content_type; Prometheus needs only the version.
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4"
RAW = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw"}


@dataclass
class Engage:
    """The app and the handles tests and commands need."""

    app: faust.App
    settings: Settings
    table: Any
    processor: Processor
    metrics: PipelineMetrics

    def is_ready(self) -> bool:
        """Recovered and assigned (SPEC §6 /readyz)."""
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
        )


def create_app(settings: Settings, rules: Rules | None = None) -> Engage:
    """Build the Faust app for these settings (no I/O until the worker starts)."""
    rules = rules or load_rules(settings.rules_file)
    app = faust.App(
        settings.app_id,
        broker=settings.broker,
        broker_credentials=faust_credentials(settings),
        store=settings.store,
        datadir=settings.data_dir,
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        processing_guarantee=settings.processing_guarantee,
        consumer_auto_offset_reset="earliest",
        web_host=settings.web_host,
        web_bind=settings.web_host,
        web_port=settings.web_port,
        canonical_url=settings.advertised_url,  # what other workers route requests to
        web_in_thread=False,
        table_standby_replicas=0,
        producer_max_request_size=settings.dlq_max_bytes,  # a 1 MB message is dead-lettered
    )
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
    tables = {
        name: app.Table(
            name, default=None, partitions=settings.partitions, key_type=bytes, value_type=bytes
        )
        for name in ("customers", "control")
    }
    metrics = PipelineMetrics()
    metrics.registry.register(FaustSensor(app))
    processor = Processor(
        settings,
        rules,
        app,
        tables["customers"],
        tables["control"],
        outputs,
        metrics,
    )
    if settings.redis_enabled and settings.mode != "replay":
        projector = RedisProjector(settings.redis_url.get_secret_value(), rules, metrics.registry)
        processor.projector = projector

        @app.task
        async def project_to_redis() -> None:
            """Background writes of changed profiles; the stream never waits for Redis."""
            await projector.run()

    table = tables["customers"]
    token = settings.api_token.get_secret_value() if settings.api_token else None
    engage = Engage(app, settings, table, processor, metrics)

    @app.agent(stream_topics, name="ingest", concurrency=1)
    async def ingest(stream: faust.StreamT) -> None:
        async for event in stream.events():
            await processor.handle(event)

    if settings.mode == "live":

        @app.timer(settings.tick_interval_s)
        async def tick() -> None:
            """Wall-clock timers only send: one tick per partition, handled by its owner."""
            value = json.dumps({"kind": "tick"}).encode()
            for p in range(settings.partitions):
                await clock_topic.send(value=value, partition=p)

    @app.timer(settings.kpi_interval_s)
    async def refresh_segments() -> None:
        """Segment gauges from this worker's own partitions: reads only, never writes."""
        clock = to_ms(wall_now()) if settings.mode == "live" else processor.latest_clock()
        if clock == 0:
            return  # replay before its declaration: no "now" to read segments at
        snap = Snapshot()
        try:
            for i, raw in enumerate(list(table.values())):
                add_to_snapshot(snap, decode(raw), clock, rules.profile)
                if i % 500 == 499:
                    await asyncio.sleep(0)  # a large table must not stall the stream
        except Exception:  # a timer that raises stops the whole Faust app: log, keep going
            log.exception("segment refresh failed")
            return
        processor.kpis.publish(snap)

    @app.on_partitions_revoked.connect
    async def on_revoked(app: faust.App, revoked: set[Any], **kwargs: Any) -> None:
        processor.forget_partitions({tp.partition for tp in revoked})

    @app.page("/metrics")
    async def metrics_page(web: Any, request: Any) -> Any:
        metrics.ready.set(1 if engage.is_ready() else 0)
        return web.bytes(generate_latest(metrics.registry), content_type=METRICS_CONTENT_TYPE)

    @app.page("/kpis")
    @guarded(token)
    async def kpis_page(web: Any, request: Any) -> Any:
        return web.json(kpi_summary(metrics.registry))

    @app.page("/healthz")
    async def healthz(web: Any, request: Any) -> Any:
        return web.json({"status": "ok"})

    @app.page("/readyz")
    async def readyz(web: Any, request: Any) -> Any:
        ready = engage.is_ready()
        return web.json({"ready": ready}, status=200 if ready else 503)

    @app.page("/customers/{customer_id}")
    @guarded(token)  # before routing: an unauthorised request never reaches another worker
    @app.table_route(table=table, match_info="customer_id")
    async def customer(web: Any, request: Any, customer_id: str) -> Any:
        raw = table.get(customer_id.encode("utf-8"))
        if raw is None:
            return web.json({"error": "unknown customer"}, status=404)
        state = decode(raw)
        clock = to_ms(wall_now()) if settings.mode == "live" else processor.latest_clock()
        clock = max(clock, state.last_seen)  # never read a profile before its own events
        return web.bytes(
            json.dumps(view(state, clock, rules.profile)).encode(),
            content_type="application/json",
        )

    return engage
