"""The one home of Kafka client settings for the worker (Faust's producer and consumer).

Everything the benchmark tuned (producer linger and batch size, records per poll) and what
recovery depends on (session timeout, heartbeats, standby replicas) comes from `Settings`
here, so the app, the tests and the docs agree on one list.
"""

from __future__ import annotations

from typing import Any

import faust

from stream.settings import Settings


def credentials(settings: Settings) -> Any:
    """Faust credentials for SASL/SSL brokers, or None for plaintext."""
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


def faust_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments of `faust.App` for the Kafka clients."""
    return {
        "broker": settings.broker,
        "broker_credentials": credentials(settings),
        "processing_guarantee": settings.processing_guarantee,
        "consumer_auto_offset_reset": "earliest",
        "producer_linger": settings.producer_linger_ms / 1000,
        "producer_max_batch_size": settings.producer_max_batch_bytes,
        "broker_max_poll_records": settings.consumer_max_poll_records,
        "broker_session_timeout": settings.session_timeout_s,
        "broker_heartbeat_interval": settings.heartbeat_interval_s,
        "table_standby_replicas": settings.standby_replicas,
        # The agent takes up to batch_max_events at a time: let the stream buffer hold them.
        "stream_buffer_maxsize": max(4096, 2 * settings.batch_max_events),
    }
