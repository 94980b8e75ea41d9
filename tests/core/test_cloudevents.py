"""CloudEvents headers of decision records: a pure function of the record."""

from __future__ import annotations

import msgspec

from schemas.nudges import Decision as DecisionSchema
from stream import __version__
from stream.core.cloudevents import http_headers, kafka_headers
from stream.core.decision import Decision

EXAMPLE = DecisionSchema.model_json_schema()["examples"][0]
RECORD = msgspec.convert(EXAMPLE, Decision)


def test_kafka_binary_mode_headers() -> None:
    nudge = dict(kafka_headers(RECORD, namespace="shop", topic_kind="nudge"))
    assert nudge == {
        "ce_specversion": b"1.0",
        "ce_id": RECORD.nudge_id.encode(),
        "ce_type": b"io.engage.nudge.delivered",
        "ce_source": b"urn:engage:shop",
        "ce_time": RECORD.decided_at.encode(),
        "ce_subject": RECORD.ritual.encode(),
        "ce_dataschema": f"urn:engage:schema:nudge:{__version__}".encode(),
        "ce_audience": b"customer",
        "content-type": b"application/json",
    }
    held = msgspec.structs.replace(RECORD, status="held_out")
    decision = dict(kafka_headers(held, namespace="shop", topic_kind="decision"))
    assert decision["ce_type"] == b"io.engage.decision.held_out"
    assert decision["ce_dataschema"] == f"urn:engage:schema:decision:{__version__}".encode()
    # the customer id is the key, never a header
    assert not any(RECORD.customer_id.encode() in v for v in decision.values())
    # deterministic: a replay writes the same headers
    assert kafka_headers(held, namespace="shop", topic_kind="decision") == list(decision.items())


def test_http_binding_of_the_same_headers() -> None:
    headers = http_headers(kafka_headers(RECORD, namespace="shop", topic_kind="nudge"))
    assert headers["ce-id"] == RECORD.nudge_id
    assert headers["ce-type"] == "io.engage.nudge.delivered"
    assert headers["Content-Type"] == "application/json"
    assert http_headers([("engage.reason", b"x"), ("other", b"y")]) == {}
