"""Shared fixtures: the real local stack, started once per test session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import Worker, unique


@pytest.fixture(scope="session")
def stack() -> dict[str, str]:
    """Addresses of the running local Kafka, Redis and Prometheus (started if needed).

    `ENGAGE_TEST_BOOTSTRAP` points the suite at another broker instead (for example one a
    developer already runs); it is never a mock.
    """
    if os.environ.get("ENGAGE_TEST_BOOTSTRAP"):
        return {"kafka": os.environ["ENGAGE_TEST_BOOTSTRAP"]}
    from stream.tools.devstack import ensure_up

    return ensure_up(("kafka", "redis", "prometheus"))


@pytest.fixture(scope="session")
def bootstrap(stack: dict[str, str]) -> str:
    return stack["kafka"]


@pytest.fixture
def make_worker(bootstrap: str, tmp_path: Path) -> Iterator:
    """Start workers with fresh ids; all are stopped when the test ends."""
    started: list[Worker] = []

    def _make(app_id: str | None = None, namespace: str | None = None, **env: str) -> Worker:
        app_id = app_id or unique("app")
        worker = Worker(
            bootstrap=bootstrap,
            app_id=app_id,
            namespace=namespace or app_id,
            log_path=tmp_path / f"{app_id}-{len(started)}.log",
            extra_env=env,
        )
        started.append(worker)
        return worker

    yield _make
    for worker in started:
        worker.stop()
