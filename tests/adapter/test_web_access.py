"""Every HTTP route a worker serves needs the API token, except the probes and /metrics.

Profiles are personal data, and Faust ships web views of its own (`/table/{name}/{key}/` reads
a table's raw values, `/router/...` tells who owns what): with `ENGAGE_API_TOKEN` set, nothing
but `/healthz`, `/readyz` and `/metrics` may answer without it. The first test enumerates the
routes the app really registers (so a route added later is covered too); the second asks two
real workers with the RocksDB store for a customer's raw table entry.
"""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer

from stream.adapter.access import OPEN_PATHS
from stream.adapter.app import create_app
from stream.settings import Settings
from tests.factory import event
from tests.harness import produce_events, unique, wait_for

TOKEN = "web-access-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PROBES = {"/healthz", "/readyz", "/metrics"}


def _concrete(pattern: str) -> str:
    """A request path matching a route pattern (`/table/{name}/{key}/` -> `/table/customers/x/`)."""
    return re.sub(r"\{[^}]+\}", "customers", pattern)


def _registered(tmp_path: Path) -> tuple[Any, list[tuple[str, str]]]:
    settings = Settings(
        api_token=TOKEN,
        redis_enabled=False,
        store="rocksdb://",
        app_id=unique("routes"),
        data_dir=str(tmp_path / "data"),
    )
    engage = create_app(settings)
    web = engage.app.web
    web.init_server()  # what the worker does before serving: blueprints, pages, middleware
    routes = [
        (route.method, route.resource.canonical)
        for route in web.web_app.router.routes()
        if route.resource is not None
    ]
    return web, routes


def test_probes_are_the_only_open_paths() -> None:
    assert set(OPEN_PATHS) == PROBES


def test_every_registered_route_but_the_probes_answers_401_without_the_token(
    tmp_path: Path,
) -> None:
    web, routes = _registered(tmp_path)
    paths = {path for _, path in routes}
    assert PROBES | {"/customers/{customer_id}", "/kpis"} <= paths
    # Faust's own views are not served at all: raw table values, cluster topology, sensors.
    assert not [p for p in paths if p.startswith(("/table", "/router", "/graph", "/stats"))]

    async def ask() -> dict[tuple[str, str], tuple[int, ...]]:
        server = TestServer(web.web_app, host="127.0.0.1")
        await server.start_server()
        try:
            async with ClientSession(base_url=str(server.make_url("/"))) as http:

                async def status(method: str, path: str, headers: dict[str, str]) -> int:
                    async with http.request(method, path, headers=headers) as resp:
                        return resp.status

                out = {}
                for method, pattern in [*routes, ("GET", "/no-such-path")]:
                    path = _concrete(pattern)
                    out[(method, pattern)] = (
                        await status(method, path, {}),
                        await status(method, path, {"Authorization": "Bearer wrong"}),
                        await status(method, path, AUTH),
                    )
                return out
        finally:
            await server.close()

    answers = asyncio.run(ask())
    for (method, pattern), (bare, wrong, right) in answers.items():
        if pattern in PROBES:
            assert 401 not in (bare, wrong, right), (method, pattern, answers)
        else:  # refused without the right token, and not by the token check with it
            assert (bare, wrong) == (401, 401), (method, pattern, answers)
            assert right != 401, (method, pattern, answers)


@pytest.mark.integration
@pytest.mark.timeout(240)
def test_two_rocksdb_workers_serve_no_table_view_and_route_profiles_with_the_token(
    make_worker: Any,
) -> None:
    env = {
        "ENGAGE_API_TOKEN": TOKEN,
        "ENGAGE_STORE": "rocksdb://",
        "ENGAGE_REDIS_ENABLED": "false",
    }
    first = make_worker(**env).start()
    # each worker its own data dir, as in production: with rocksdb:// each keeps a standby copy
    # of the other's partitions (ENGAGE_STANDBY_REPLICAS defaults to 1), and a RocksDB database
    # is opened by one process at a time
    own_dir = str(first.log_path.parent / f"data-{first.app_id}-second")
    second = make_worker(
        app_id=first.app_id, namespace=first.namespace, ENGAGE_DATA_DIR=own_dir, **env
    ).start()
    customers = [unique("raw") for _ in range(6)]  # spread over both workers' partitions
    now = datetime.now(UTC).isoformat()
    produce_events(
        first.bootstrap, first.namespace, [event("click", c, occurred_at=now) for c in customers]
    )
    workers = (first, second)
    for w in workers:
        for c in customers:  # with the token, every profile through every worker (half routed)
            wait_for(lambda w=w, c=c: w.profile(c, AUTH), timeout=60, what=f"{c} via {w.web_port}")
    for w in workers:
        for c in customers:
            for path in (f"/table/customers/{c}/", f"/router/customers/{c}/", f"/customers/{c}"):
                status, body = w.get(path)
                assert status == 401, (path, status, body[:200])
                assert c.encode() not in body
            # Faust's table view is not served at all, not even with the token.
            assert w.get(f"/table/customers/{c}/", AUTH)[0] == 404
        for path in ("/", "/table/", "/router/", "/kpis"):
            assert w.get(path)[0] == 401, path
        for probe in PROBES:
            assert w.get(probe)[0] == 200, probe
