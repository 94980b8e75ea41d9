"""Configuration from ENGAGE_ variables, and the message a bad value gives."""

from __future__ import annotations

import subprocess
import sys

import pytest

from stream.settings import Settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The defaults, whatever ENGAGE_ variables the developer's shell has set."""
    import os

    for name in list(os.environ):
        if name.startswith("ENGAGE_"):
            monkeypatch.delenv(name)


def test_defaults_name_the_spec_topics() -> None:
    s = Settings()
    assert list(s.input_topics.values()) == [
        "engage.clicks",
        "engage.purchases",
        "engage.reviews",
        "engage.support",
        "engage.surveys",
        "engage.loyalty",
        "engage.consent",
    ]
    assert (s.dlq_topic, s.nudges_topic, s.decisions_topic) == (
        "engage.dlq",
        "engage.nudges",
        "engage.nudge-decisions",
    )
    assert s.bootstrap_servers == "127.0.0.1:9092"


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENGAGE_PARTITIONS", "12")
    monkeypatch.setenv("ENGAGE_TOPIC_NAMESPACE", "acme")
    monkeypatch.setenv("ENGAGE_BROKER", "kafka://k1:9092;k2:9092")
    s = Settings()
    assert s.partitions == 12
    assert s.dlq_topic == "acme.dlq"
    assert s.bootstrap_servers == "k1:9092,k2:9092"


def test_bad_values_stop_the_worker_with_a_clear_message() -> None:
    env = {
        "ENGAGE_PARTITIONS": "zero",
        "ENGAGE_STORE": "postgres://",
        "ENGAGE_BROKER": "localhost:9092",
        "PATH": "/usr/bin:/bin",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "stream", "worker"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert "engage: invalid configuration" in proc.stderr
    for name in ("ENGAGE_PARTITIONS", "ENGAGE_STORE", "ENGAGE_BROKER"):
        assert name in proc.stderr
    assert "Traceback" not in proc.stderr


def test_sasl_needs_credentials() -> None:
    with pytest.raises(ValueError, match="SASL needs"):
        Settings(security_protocol="SASL_SSL")
