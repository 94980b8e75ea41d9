"""The Faust application: a thin shell around the pure core.

One agent (concurrency 1) reads all six co-partitioned input topics as raw bytes, hands each
message to `Processor.handle`, which validates it (`stream.ingest`), dead-letters what cannot be
accepted, and folds the rest into the `customers` table (`stream.state`). Table writes happen
only here, inside stream iteration, for the key of the event being processed: Faust sends a
write to the changelog partition of the current event.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import faust
from faust.types import EventT
from prometheus_client import generate_latest

from schemas.events import EventBase
from stream.clock import wall_now
from stream.ingest import Limits, Rejection, accept
from stream.metrics import PipelineMetrics
from stream.profile import view
from stream.rules import DEFAULT_RULES, ProfileRules
from stream.settings import Settings
from stream.state import decode, encode, fold, is_duplicate, new_state, to_ms

log = logging.getLogger("engage")

# aiohttp refuses a charset inside content_type; Prometheus needs only the version.
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4"
RAW = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw"}
TABLE_NAME = "customers"


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
class Processor:
    """Handles one input message: validate, dead-letter or fold."""

    settings: Settings
    rules: ProfileRules
    table: Any
    dlq_topic: Any
    metrics: PipelineMetrics

    def __post_init__(self) -> None:
        self.limits = Limits(
            max_message_bytes=self.settings.max_message_bytes,
            max_future_skew=timedelta(seconds=self.settings.max_future_skew_s),
        )

    async def handle(self, event: EventT) -> None:
        message = event.message
        started = time.perf_counter()
        self.metrics.consumed_child(message.topic).inc()
        now = wall_now()
        outcome = accept(message.key, message.value, now, self.limits)
        if isinstance(outcome, Rejection):
            await self.dead_letter(message, outcome)
            return
        kind: str = outcome.type  # type: ignore[attr-defined]
        try:
            result = self.fold(message.key, outcome)
        except Exception:  # a bug must not stop the stream; the event is counted, not lost
            log.exception(
                "fold failed at %s[%s]@%s", message.topic, message.partition, message.offset
            )
            result = "failed"
        self.metrics.processed_child(message.topic, kind, result).inc()
        self.metrics.lag_seconds.observe(max((now - outcome.occurred_at).total_seconds(), 0.0))
        self.metrics.processing_seconds.observe(time.perf_counter() - started)

    def fold(self, key: bytes, event: EventBase) -> str:
        raw = self.table.get(key)
        state = decode(raw) if raw is not None else new_state(event.customer_id)
        if is_duplicate(state, event.event_id):
            self.metrics.duplicate_child(event.type).inc()  # type: ignore[attr-defined]
            return "duplicate"
        self.table[key] = encode(fold(state, event, self.rules))
        return "folded"

    async def dead_letter(self, message: Any, rejection: Rejection) -> None:
        await self.dlq_topic.send(
            key=message.key, value=message.value, headers=dlq_headers(message, rejection)
        )
        self.metrics.dlq_child(rejection.reason).inc()
        self.metrics.processed_child(message.topic, "unknown", "dead_lettered").inc()


def _credentials(settings: Settings) -> Any:
    """Faust credentials for SASL/SSL brokers (SPEC §7), or None for plaintext."""
    if settings.security_protocol == "PLAINTEXT":
        return None
    import ssl

    context = None
    if settings.security_protocol.endswith("SSL"):
        context = ssl.create_default_context(cafile=settings.ssl_cafile)
        if settings.ssl_certfile:
            context.load_cert_chain(settings.ssl_certfile, settings.ssl_keyfile)
    if settings.security_protocol.startswith("SASL"):
        assert settings.sasl_password is not None  # validated in Settings
        return faust.SASLCredentials(
            username=settings.sasl_username,
            password=settings.sasl_password.get_secret_value(),
            mechanism=settings.sasl_mechanism,
            ssl_context=context,
        )
    return faust.SSLCredentials(context)


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


def create_app(settings: Settings, rules: ProfileRules = DEFAULT_RULES) -> Engage:
    """Build the Faust app for these settings (no I/O until the worker starts)."""
    app = faust.App(
        settings.app_id,
        broker=settings.broker,
        broker_credentials=_credentials(settings),
        store=settings.store,
        datadir=settings.data_dir,
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        processing_guarantee=settings.processing_guarantee,
        consumer_auto_offset_reset="earliest",
        web_host=settings.web_host,
        web_bind=settings.web_host,
        web_port=settings.web_port,
        web_in_thread=False,
        table_standby_replicas=0,
    )
    inputs = app.topic(*settings.input_topics.values(), partitions=settings.partitions, **RAW)
    dlq = app.topic(settings.dlq_topic, partitions=settings.partitions, **RAW)
    # bytes key and value types make Faust use the raw codec: we encode state ourselves.
    table = app.Table(
        TABLE_NAME, default=None, partitions=settings.partitions, key_type=bytes, value_type=bytes
    )
    metrics = PipelineMetrics()
    processor = Processor(settings, rules, table, dlq, metrics)
    engage = Engage(app, settings, table, processor, metrics)

    @app.agent(inputs, name="ingest", concurrency=1)
    async def ingest(stream: faust.StreamT) -> None:
        async for event in stream.events():
            await processor.handle(event)

    @app.page("/metrics")
    async def metrics_page(web: Any, request: Any) -> Any:
        metrics.ready.set(1 if engage.is_ready() else 0)
        return web.bytes(generate_latest(metrics.registry), content_type=METRICS_CONTENT_TYPE)

    @app.page("/healthz")
    async def healthz(web: Any, request: Any) -> Any:
        return web.json({"status": "ok"})

    @app.page("/readyz")
    async def readyz(web: Any, request: Any) -> Any:
        ready = engage.is_ready()
        return web.json({"ready": ready}, status=200 if ready else 503)

    @app.page("/customers/{customer_id}")
    @app.table_route(table=table, match_info="customer_id")
    async def customer(web: Any, request: Any, customer_id: str) -> Any:
        raw = table.get(customer_id.encode("utf-8"))
        if raw is None:
            return web.json({"error": "unknown customer"}, status=404)
        clock = to_ms(wall_now())
        return web.bytes(
            json.dumps(view(decode(raw), clock, rules)).encode(),
            content_type="application/json",
        )

    return engage
