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


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator:
    """Keep each phase's report on the test item, so a fixture's teardown knows whether the
    test failed (`make_worker` then attaches its workers' logs to the report)."""
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


@pytest.fixture
def make_worker(bootstrap: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator:
    """Start workers with fresh ids; all are stopped when the test ends. When the test failed,
    the end of each worker's log is shown with the failure: CI's report shows what they did."""
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
    call = getattr(request.node, "report_call", None)
    if call is not None and call.failed:  # shown with the failure in the summary
        for n, worker in enumerate(started):
            call.sections.append(
                (f"worker {n} ({worker.app_id}, :{worker.web_port}): end of its log",
                 worker.log_tail(200))
            )  # fmt: skip
