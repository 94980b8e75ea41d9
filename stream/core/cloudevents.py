"""CloudEvents (1.0, Kafka protocol binding, binary mode) headers for decision records.

Decisions and nudges stay plain JSON values; these headers let standard consumers, routers and
bridges (Knative, Argo Events, an HTTP webhook) recognise and route them without parsing the
value. Pure: built from the record alone, so a replay writes byte-identical headers.

The customer id is deliberately not a header: it is already the message key, and headers are
copied into logs and routing tables more freely than values. `ce_subject` is the ritual.
"""

from __future__ import annotations

from collections.abc import Mapping

from schemas.ids import schema_id
from stream.core.decision import Decision

SPEC_VERSION = "1.0"
CONTENT_TYPE = "application/json"


#: `$id` of the published JSON Schemas of the two records.
DATASCHEMA = {kind: schema_id(kind) for kind in ("nudge", "decision")}


def event_type(record: Decision, *, topic_kind: str) -> str:
    """`io.engage.nudge.delivered` on the nudges topic, `io.engage.decision.<status>` on the
    decisions topic (the audit trail, every status)."""
    if topic_kind == "nudge":
        return "io.engage.nudge.delivered"
    return f"io.engage.decision.{record.status}"


def source(namespace: str) -> str:
    """The producing deployment, as a URI-reference: one per topic namespace."""
    return f"urn:engage:{namespace}"


def attributes(record: Decision, *, namespace: str, topic_kind: str) -> dict[str, str]:
    """The CloudEvents context attributes of one decision record (no `ce_` prefix)."""
    return {
        "specversion": SPEC_VERSION,
        "id": record.nudge_id,
        "type": event_type(record, topic_kind=topic_kind),
        "source": source(namespace),
        "time": record.decided_at,
        "subject": record.ritual,
        "dataschema": DATASCHEMA[topic_kind],
        "audience": record.audience,  # extension: route service_team nudges apart
    }


def kafka_headers(record: Decision, *, namespace: str, topic_kind: str) -> list[tuple[str, bytes]]:
    """Kafka binary-mode headers: `ce_<attribute>` plus `content-type`, all UTF-8."""
    attrs = attributes(record, namespace=namespace, topic_kind=topic_kind)
    headers = [(f"ce_{name}", value.encode()) for name, value in attrs.items()]
    headers.append(("content-type", CONTENT_TYPE.encode()))
    return headers


def http_headers(kafka: list[tuple[str, bytes]] | Mapping[str, bytes]) -> dict[str, str]:
    """The HTTP binding of the same event (`ce-<attribute>`, `Content-Type`), from the Kafka
    headers of a consumed record: what a webhook forwarder sends."""
    items = kafka.items() if isinstance(kafka, Mapping) else kafka
    out: dict[str, str] = {}
    for name, value in items:
        if name.startswith("ce_"):
            out[f"ce-{name[3:]}"] = value.decode()
        elif name == "content-type":
            out["Content-Type"] = value.decode()
    return out
