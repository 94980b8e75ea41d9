"""The Faust shell's health rule, without Kafka: /healthz fails on a stopped or stalled agent."""

from __future__ import annotations

import time
from types import SimpleNamespace

from stream.adapter.app import Engage
from stream.settings import Settings


def engage(*, failure: Exception | None = None, idle_s: float = 0.0, waiting: bool = False,
           ready: bool = True) -> Engage:  # fmt: skip
    shell = SimpleNamespace(
        failure=failure,
        last_batch=time.monotonic() - idle_s,
        waiting_input=lambda: waiting,
    )
    settings = Settings(stall_after_s=5, recovery_stuck_after_s=30)
    e = Engage(app=None, settings=settings, table=None, shell=shell,  # type: ignore[arg-type]
               metrics=None, kpis=None)  # type: ignore[arg-type]  # fmt: skip
    e.is_ready = lambda: ready  # type: ignore[method-assign]
    return e


def test_a_working_agent_is_healthy() -> None:
    assert engage().health() == (True, "ok")
    assert engage(idle_s=600).health() == (True, "ok")  # idle with nothing to read is fine


def test_an_agent_stopped_on_an_error_is_unhealthy() -> None:
    ok, why = engage(failure=RuntimeError("secret")).health()
    assert not ok and "RuntimeError" in why and "secret" not in why


def test_no_progress_while_input_waits_is_unhealthy() -> None:
    ok, why = engage(idle_s=10, waiting=True).health()
    assert not ok and "no progress" in why
    assert engage(idle_s=2, waiting=True).health()[0]  # within the allowance


def test_recovering_or_rebalancing_is_not_a_stall() -> None:
    assert engage(idle_s=600, waiting=True, ready=False).health()[0]


def test_a_worker_stuck_in_recovery_becomes_unhealthy() -> None:
    """Faust's table recovery can wait forever for a changelog partition: past the bound,
    /healthz fails so an orchestrator restarts the worker."""
    e = engage(ready=False)
    assert e.health()[0]
    e.not_ready_since = time.monotonic() - 31
    ok, why = e.health()
    assert not ok and "not ready" in why
    e.is_ready = lambda: True  # type: ignore[method-assign]
    assert e.health()[0] and e.not_ready_since is None
