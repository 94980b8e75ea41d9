"""Kafka client settings, in one place: every client the product opens gets them from here.

SPEC §7: the Kafka security settings (SASL, SSL) apply to every client: the Faust worker, the
admin client that creates topics, `engage replay`, `engage forget`, the projection rebuild, the
emitter and the benchmarks. Each of them passes its settings (anything with the `ENGAGE_`
security fields: `stream.settings.Settings`, or `KafkaOptions` below) to the functions
below instead of building aiokafka arguments itself, so a new option is added once.

`describe_error` turns the errors a misconfigured client meets (wrong credentials, no broker,
TLS trouble) into one readable line for a command to print.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


class KafkaConf(Protocol):
    """What a client needs to know; `sasl_password` may be a pydantic SecretStr or text."""

    bootstrap_servers: str
    security_protocol: str
    sasl_mechanism: str
    sasl_username: str | None
    sasl_password: Any
    ssl_cafile: str | None
    ssl_certfile: str | None
    ssl_keyfile: str | None


def _secret(value: Any) -> str | None:
    if value is None:
        return None
    getter = getattr(value, "get_secret_value", None)
    return str(getter() if getter else value)


def ssl_context(conf: KafkaConf) -> ssl.SSLContext | None:
    """The TLS context of an SSL or SASL_SSL connection (CA file, optional client cert)."""
    if not conf.security_protocol.endswith("SSL"):
        return None
    context = ssl.create_default_context(cafile=conf.ssl_cafile)
    if conf.ssl_certfile:
        context.load_cert_chain(conf.ssl_certfile, conf.ssl_keyfile)
    return context


def security_kwargs(conf: KafkaConf) -> dict[str, Any]:
    """aiokafka producer / consumer / admin arguments for the configured SASL and SSL."""
    out: dict[str, Any] = {"security_protocol": conf.security_protocol}
    context = ssl_context(conf)
    if context is not None:
        out["ssl_context"] = context
    if conf.security_protocol.startswith("SASL"):
        out["sasl_mechanism"] = conf.sasl_mechanism
        out["sasl_plain_username"] = conf.sasl_username
        out["sasl_plain_password"] = _secret(conf.sasl_password)
    return out


def client_kwargs(conf: KafkaConf) -> dict[str, Any]:
    """`bootstrap_servers` plus the security arguments: what every aiokafka client needs."""
    return {"bootstrap_servers": conf.bootstrap_servers, **security_kwargs(conf)}


#: Where the clients other than the worker look when ENGAGE_BROKER / ENGAGE_TOPIC_NAMESPACE
#: are unset (the worker's own defaults, `stream.settings.Settings`).
DEFAULT_BROKER = "kafka://127.0.0.1:9092"
DEFAULT_NAMESPACE = "engage"


def namespace_from_env(env: Mapping[str, str] | None = None) -> str:
    """The topic namespace from ENGAGE_TOPIC_NAMESPACE (the worker's setting of that name)."""
    env = os.environ if env is None else env
    value = env.get("ENGAGE_TOPIC_NAMESPACE", DEFAULT_NAMESPACE)
    if not value or not all(ch.isalnum() or ch in "._-" for ch in value):
        raise ValueError("ENGAGE_TOPIC_NAMESPACE: only letters, digits, '.', '_' and '-'")
    return value


@dataclass(frozen=True, slots=True)
class KafkaOptions:
    """Kafka connection settings of the clients other than the worker (the emitter, the
    emitter client `stream.client`, `engage forward`), read from the same `ENGAGE_` variables
    as the worker's settings and validated with readable messages. Here, not with a tool, so
    the client package needs nothing from `stream.tools`."""

    bootstrap_servers: str
    namespace: str
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str = "PLAIN"
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)  # never in a repr or a log
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> KafkaOptions:
        """Read ENGAGE_BROKER, ENGAGE_TOPIC_NAMESPACE and the security settings.

        Raises ValueError naming every variable that is wrong.
        """
        env = os.environ if env is None else env
        problems: list[str] = []
        broker = env.get("ENGAGE_BROKER", DEFAULT_BROKER)
        servers = broker.removeprefix("kafka://").replace(";", ",")
        if not broker.startswith("kafka://") or not servers:
            problems.append("ENGAGE_BROKER: must look like kafka://host:port[;host:port]")
        try:
            ns = namespace_from_env(env)
        except ValueError as exc:
            problems.append(str(exc))
            ns = ""
        protocol = env.get("ENGAGE_SECURITY_PROTOCOL", "PLAINTEXT")
        if protocol not in SECURITY_PROTOCOLS:
            problems.append(f"ENGAGE_SECURITY_PROTOCOL: one of {', '.join(SECURITY_PROTOCOLS)}")
        mechanism = env.get("ENGAGE_SASL_MECHANISM", "PLAIN")
        if mechanism not in SASL_MECHANISMS:
            problems.append(f"ENGAGE_SASL_MECHANISM: one of {', '.join(SASL_MECHANISMS)}")
        user, password = env.get("ENGAGE_SASL_USERNAME"), env.get("ENGAGE_SASL_PASSWORD")
        if protocol.startswith("SASL") and not (user and password):
            problems.append("ENGAGE_SASL_USERNAME/ENGAGE_SASL_PASSWORD: needed for SASL")
        if problems:
            raise ValueError("; ".join(problems))
        return cls(
            bootstrap_servers=servers,
            namespace=ns,
            security_protocol=protocol,
            sasl_mechanism=mechanism,
            sasl_username=user,
            sasl_password=password,
            ssl_cafile=env.get("ENGAGE_SSL_CAFILE"),
            ssl_certfile=env.get("ENGAGE_SSL_CERTFILE"),
            ssl_keyfile=env.get("ENGAGE_SSL_KEYFILE"),
        )

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments shared by aiokafka's producer and consumer (`client_kwargs`)."""
        return client_kwargs(self)


#: What every producer of the product writes with: acknowledged only once all in-sync
#: copies have the write (with min.insync.replicas=2 on a cluster, a write survives the loss of
#: a broker), and idempotent, so a send retried after a lost acknowledgement or a leader change
#: is not written twice.
DURABLE_PRODUCER: dict[str, Any] = {"acks": "all", "enable_idempotence": True}


def producer(conf: KafkaConf, **options: Any) -> Any:
    """An (unstarted) aiokafka producer for these settings, durable (`DURABLE_PRODUCER`)
    unless `options` say otherwise."""
    from aiokafka import AIOKafkaProducer

    return AIOKafkaProducer(**client_kwargs(conf), **{**DURABLE_PRODUCER, **options})


def consumer(conf: KafkaConf, *topics: str, **options: Any) -> Any:
    """An (unstarted) aiokafka consumer for these settings."""
    from aiokafka import AIOKafkaConsumer

    return AIOKafkaConsumer(*topics, **client_kwargs(conf), **options)


def admin(conf: KafkaConf, **options: Any) -> Any:
    """An (unstarted) aiokafka admin client for these settings."""
    from aiokafka.admin import AIOKafkaAdminClient

    return AIOKafkaAdminClient(**client_kwargs(conf), **options)


def faust_credentials(conf: KafkaConf) -> Any:
    """Faust `broker_credentials` for the configured SASL/SSL, or None for plaintext."""
    if conf.security_protocol == "PLAINTEXT":
        return None
    import faust

    context = ssl_context(conf)
    if conf.security_protocol.startswith("SASL"):
        return faust.SASLCredentials(
            username=conf.sasl_username,
            password=_secret(conf.sasl_password),
            mechanism=conf.sasl_mechanism,
            ssl_context=context,
        )
    return faust.SSLCredentials(context)


def faust_options(settings: Any) -> dict[str, Any]:
    """Keyword arguments of `faust.App` for the worker's Kafka clients (`Settings`).

    What the benchmark tuned (producer linger and batch size, records per poll) and what
    recovery depends on (session timeout, heartbeats, standby replicas) in one list.
    """
    return {
        "broker": settings.broker,
        "broker_credentials": faust_credentials(settings),
        "processing_guarantee": settings.processing_guarantee,
        # acks=all; idempotence comes with the app's producer (stream/adapter/drain.py).
        "producer_acks": -1,
        "consumer_auto_offset_reset": "earliest",
        "producer_linger": settings.producer_linger_ms / 1000,
        "producer_max_batch_size": settings.producer_max_batch_bytes,
        "producer_max_request_size": settings.dlq_max_bytes,  # a 1 MB message is dead-lettered
        "broker_max_poll_records": settings.consumer_max_poll_records,
        "broker_session_timeout": settings.session_timeout_s,
        "broker_heartbeat_interval": settings.heartbeat_interval_s,
        "table_standby_replicas": settings.table_standby_replicas,
        # The agent takes up to batch_max_events at a time: let the stream buffer hold them.
        "stream_buffer_maxsize": max(4096, 2 * settings.batch_max_events),
    }


class KafkaAccessError(RuntimeError):
    """The broker refused our credentials or our TLS handshake; the message is one line."""


async def check_access(conf: KafkaConf, *, timeout_s: float = 10.0) -> None:
    """Raise KafkaAccessError when the broker rejects the configured SASL/SSL credentials.

    aiokafka logs an authentication failure and then reports only "Unable to bootstrap", so a
    command would say "cannot reach Kafka" for a wrong password. One direct connection to the
    first reachable bootstrap server shows the real reason. Unreachable servers are left to
    the client's own retries; plaintext needs no check.
    """
    if conf.security_protocol == "PLAINTEXT":
        return
    import logging

    # aiokafka warns on every PLAIN-over-plaintext connection; the clients that follow will say
    # so again, so this probe keeps quiet and a failure stays one line.
    quiet = logging.getLogger("aiokafka.conn")
    previous = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        await _probe_servers(conf, timeout_s)
    finally:
        quiet.setLevel(previous)


async def _probe_servers(conf: KafkaConf, timeout_s: float) -> None:
    """Connect to the first reachable bootstrap server; raise KafkaAccessError if refused."""
    import asyncio

    from aiokafka.conn import create_conn

    for server in conf.bootstrap_servers.split(","):
        host, _, port = server.strip().rpartition(":")
        try:
            conn = await asyncio.wait_for(
                create_conn(
                    host.strip("[]"),
                    int(port),
                    request_timeout_ms=int(timeout_s * 1000),
                    **security_kwargs(conf),
                ),
                timeout_s,
            )
        except (OSError, TimeoutError):
            continue  # not reachable (yet): the client's own start-up handles that
        except Exception as exc:
            if is_auth_error(exc):
                raise KafkaAccessError(describe_error(exc, conf)) from None
            continue
        conn.close()
        return


def is_auth_error(exc: BaseException) -> bool:
    """True for a broker refusing our credentials (SASL) or our certificate."""
    from aiokafka.errors import KafkaError

    name = type(exc).__name__
    text = str(exc)
    return (
        "Authentication" in name
        or "SaslAuthentication" in text
        or "Authentication failed" in text
        or (isinstance(exc, ssl.SSLError))
        or (isinstance(exc, KafkaError) and "authentication" in text.lower())
    )


def describe_error(exc: BaseException, conf: KafkaConf | None = None) -> str:
    """One line saying what went wrong talking to Kafka, without any secret."""
    if isinstance(exc, KafkaAccessError):
        return str(exc)
    where = f" at {conf.bootstrap_servers}" if conf is not None else ""
    if is_auth_error(exc):
        who = ""
        if conf is not None and conf.security_protocol.startswith("SASL"):
            who = f" as {conf.sasl_username!r} ({conf.security_protocol}, {conf.sasl_mechanism})"
        return (
            f"Kafka{where} refused the credentials{who}: check ENGAGE_SASL_USERNAME, "
            "ENGAGE_SASL_PASSWORD, ENGAGE_SASL_MECHANISM and ENGAGE_SECURITY_PROTOCOL"
        )
    from aiokafka.errors import KafkaConnectionError

    if isinstance(exc, KafkaConnectionError | ConnectionError | TimeoutError):
        return (
            f"cannot reach Kafka{where} ({type(exc).__name__}): is the broker up, and do "
            "ENGAGE_BROKER and ENGAGE_SECURITY_PROTOCOL match its listener?"
        )
    return f"Kafka error{where}: {type(exc).__name__}: {str(exc)[:200]}"
