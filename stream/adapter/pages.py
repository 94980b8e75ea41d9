"""The worker's HTTP routes: Prometheus metrics, KPIs, the probes and customer profiles.

With `ENGAGE_API_TOKEN` set, the token guard (`stream.adapter.access`) sits in front of the
whole web application, so every route but the probes and /metrics needs the bearer token,
checked before `/customers/...` is routed to the worker owning the customer. Faust's own web
views (raw table values, routing metadata, sensor statistics) are switched off by the app.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

import faust
from prometheus_client import generate_latest

from stream.adapter.access import guard
from stream.core.clock import wall_now
from stream.core.profile import view
from stream.core.rules import Rules
from stream.core.state import UnsupportedStateFormat, decode, to_ms
from stream.telemetry.kpis import summary as kpi_summary

if TYPE_CHECKING:
    from stream.adapter.app import Engage

log = logging.getLogger("engage")

# aiohttp refuses a charset inside content_type; Prometheus needs only the version.
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4"


def add_pages(app: faust.App, engage: Engage, rules: Rules) -> None:
    """Register the token guard and every route on `app`."""
    settings, shell, metrics, table = engage.settings, engage.shell, engage.metrics, engage.table
    token = settings.api_token.get_secret_value() if settings.api_token else None
    # The token guards the whole web application, whatever registers a route on it.
    app.on_webserver_init = lambda web: guard(web.web_app, token)

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
