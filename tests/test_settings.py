"""Configuration from ENGAGE_ variables, and the message a bad value gives."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys

import pytest

from stream.settings import Settings
from stream.topic_names import control_changelog, customers_changelog, forward_group


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


def test_the_changelog_names_are_the_ones_faust_gives_the_tables() -> None:
    """`stream.topic_names` spells the changelogs the same way Faust names them: the topics
    `engage topics` creates, the projector and the tools read are the ones the worker writes."""
    from stream.adapter.app import create_app

    s = Settings(app_id="shop-1", broker="kafka://127.0.0.1:1", redis_enabled=False)
    engage = create_app(s)
    faust_names = sorted(t.changelog_topic.get_topic_name() for t in engage.app.tables.values())
    assert faust_names == sorted(s.changelog_topics())
    assert s.changelog_topics() == [customers_changelog("shop-1"), control_changelog("shop-1")]
    assert s.customers_changelog == "shop-1-customers-changelog"
    assert (s.forward_dlq_topic, forward_group(s.topic_namespace)) == (
        "engage.forward-dlq",
        "engage.forward",
    )


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


SECRET_FIELD = re.compile(r"password|token|secret|authorization|redis_url", re.IGNORECASE)


def _settings_classes() -> list[type]:
    """Every settings object of the product: the pydantic-settings classes and the dataclasses
    the tools build from ENGAGE_ variables."""
    from stream.kafka_client import KafkaOptions
    from stream.tools.devstack import DevstackSettings
    from stream.tools.forward import ForwardConfig

    return [Settings, DevstackSettings, KafkaOptions, ForwardConfig]


def test_every_secret_field_is_hidden_from_repr() -> None:
    """A field named like a secret is a SecretStr or left out of the repr, so a field added
    later cannot print a password by accident (logs, tracebacks, debuggers)."""
    checked = []
    for cls in _settings_classes():
        if dataclasses.is_dataclass(cls):
            fields = {f.name: (f.type, f.repr) for f in dataclasses.fields(cls)}
        else:
            fields = {n: (f.annotation, f.repr) for n, f in cls.model_fields.items()}
        for name, (annotation, shown) in fields.items():
            if SECRET_FIELD.search(name):
                checked.append(name)
                assert not shown or "SecretStr" in str(annotation), (cls.__name__, name)
    assert {"sasl_password", "api_token", "redis_url", "authorization", "secret"} <= set(checked)


def test_no_settings_object_prints_a_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    from stream.kafka_client import KafkaOptions
    from stream.tools.devstack import DevstackSettings
    from stream.tools.forward import ForwardConfig

    secrets = ["pw-sasl-7f3a", "tok-api-7f3a", "pw-redis-7f3a", "Bearer fwd-7f3a", "hook-7f3a"]
    env = {
        "ENGAGE_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "ENGAGE_SASL_USERNAME": "engage",
        "ENGAGE_SASL_PASSWORD": secrets[0],
        "ENGAGE_API_TOKEN": secrets[1],
        "ENGAGE_REDIS_URL": f"redis://:{secrets[2]}@127.0.0.1:6379/0",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    objects = [
        Settings(),
        DevstackSettings(),
        KafkaOptions.from_env(),
        ForwardConfig(
            url="http://127.0.0.1/", group="g", authorization=secrets[3], secret=secrets[4].encode()
        ),
    ]
    for obj in objects:
        for text in (repr(obj), str(obj)):
            leaked = [s for s in secrets if s in text]
            assert not leaked, (type(obj).__name__, leaked)


def test_exactly_once_is_refused_with_its_reason() -> None:
    """exactly_once lost events in the kill -9 experiments (docs/reliability.md): a worker
    configured with it stops at once with one line naming the setting and what to use."""
    with pytest.raises(ValueError, match="exactly_once is not supported"):
        Settings(processing_guarantee="exactly_once")
    proc = subprocess.run(
        [sys.executable, "-m", "stream", "worker"],
        env={"ENGAGE_PROCESSING_GUARANTEE": "exactly_once", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("engage: invalid configuration: ENGAGE_PROCESSING_GUARANTEE:")
    assert "exactly_once is not supported" in lines[0]
    assert "use at_least_once" in lines[0]
    assert Settings(processing_guarantee="at_least_once").processing_guarantee == "at_least_once"
