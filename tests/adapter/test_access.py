"""Pure parts of access and client security: the bearer check, the settings that name the
advertised URL and retention, and the one mapping of security settings to every client."""

from __future__ import annotations

import faust
import pytest
from pydantic import ValidationError

from stream.adapter.access import authorized
from stream.kafka_client import client_kwargs, describe_error, faust_credentials, security_kwargs
from stream.settings import Settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("ENGAGE_"):
            monkeypatch.delenv(name)


@pytest.mark.parametrize(
    ("header", "ok"),
    [
        ("Bearer tok-1", True),
        ("bearer tok-1", True),
        ("Bearer tok-2", False),
        ("Bearer tok-1x", False),
        ("Basic tok-1", False),
        ("tok-1", False),
        ("", False),
        (None, False),
    ],
)
def test_bearer_token(header: str | None, ok: bool) -> None:
    assert authorized(header, "tok-1") is ok
    assert authorized(header, None) is True  # no token configured: open


def test_advertised_url_never_zero() -> None:
    assert Settings().advertised_url == "http://127.0.0.1:6066"
    s = Settings(web_host="0.0.0.0", web_advertised_url="http://worker-1:6066/")
    assert s.advertised_url == "http://worker-1:6066"
    import socket

    assert Settings(web_host="0.0.0.0").advertised_url == f"http://{socket.gethostname()}:6066"
    with pytest.raises(ValidationError, match=r"not 0\.0\.0\.0"):
        Settings(web_advertised_url="http://0.0.0.0:6066")


def test_retention_settings_name_the_audit_and_dlq_topics() -> None:
    assert Settings().retention_ms() == {}
    s = Settings(audit_retention_days=30, dlq_retention_days=7)
    assert s.retention_ms() == {
        "engage.nudge-decisions": 30 * 86_400_000,
        "engage.nudges": 30 * 86_400_000,
        "engage.dlq": 7 * 86_400_000,
        "engage.forward-dlq": 7 * 86_400_000,
    }
    assert {"engage.erasures", "engage.erasure-receipts", "engage.consent"} <= set(s.all_topics())


def test_one_mapping_of_security_settings() -> None:
    plain = Settings()
    assert client_kwargs(plain) == {
        "bootstrap_servers": "127.0.0.1:9092",
        "security_protocol": "PLAINTEXT",
    }
    assert faust_credentials(plain) is None
    sasl = Settings(
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="u",
        sasl_password="p",
    )
    assert security_kwargs(sasl) == {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "u",
        "sasl_plain_password": "p",
    }
    creds = faust_credentials(sasl)
    assert isinstance(creds, faust.SASLCredentials)
    assert (creds.username, creds.password, creds.mechanism.value) == ("u", "p", "SCRAM-SHA-512")
    ssl = Settings(security_protocol="SSL")
    assert "ssl_context" in security_kwargs(ssl)
    assert isinstance(faust_credentials(ssl), faust.SSLCredentials)


def test_errors_are_one_line_without_secrets() -> None:
    from aiokafka.errors import KafkaConnectionError

    sasl = Settings(security_protocol="SASL_PLAINTEXT", sasl_username="u", sasl_password="pw-x")
    line = describe_error(KafkaConnectionError("Unable to bootstrap"), sasl)
    assert "cannot reach Kafka" in line and "\n" not in line and "pw-x" not in line
