"""The pure half of the emitter client: from an event to the exact Kafka record engage expects.

No I/O here, so an emitter can check its events in a unit test: the value is validated with the
worker's own models on the exact bytes that will be produced, so an event that passes here is
never dead-lettered for a schema reason (only the wall-clock `future_timestamp` check and the
partition check depend on where and when it is produced).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from pydantic import BaseModel, ValidationError

from schemas.events import EVENT_ADAPTER, TOPIC_SUFFIX, EventBase

#: SPEC §1 limit on one message value.
MAX_MESSAGE_BYTES = 64 * 1024
#: CloudEvents `source` of events produced through this client unless the caller names its own.
DEFAULT_SOURCE = "urn:engage:emitter"


class InvalidEvent(ValueError):
    """The event would be dead-lettered; `reason` is the DLQ reason it would get."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


@dataclass(frozen=True, slots=True)
class Envelope:
    """One Kafka record, ready to produce: the partition is chosen by the producer."""

    topic: str
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]
    event: EventBase


def _default(value: Any) -> Any:
    """JSON for the Python types an event dict may hold: decimals as strings (no float
    rounding of amounts), datetimes as RFC 3339."""
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def encode_event(event: dict[str, Any] | BaseModel) -> bytes:
    """Compact UTF-8 JSON of an event given as a dict or a pydantic model."""
    if isinstance(event, BaseModel):
        return event.model_dump_json(exclude_none=True).encode("utf-8")
    return json.dumps(
        event, default=_default, ensure_ascii=False, separators=(",", ":"), allow_nan=False
    ).encode("utf-8")


def envelope(
    event: dict[str, Any] | BaseModel,
    *,
    namespace: str = "engage",
    source: str = DEFAULT_SOURCE,
    max_message_bytes: int = MAX_MESSAGE_BYTES,
) -> Envelope:
    """Validate and encode one event; raises InvalidEvent with the DLQ reason it would get."""
    try:
        value = encode_event(event)
    except (TypeError, ValueError) as exc:
        raise InvalidEvent("malformed_json", str(exc)) from None
    if len(value) > max_message_bytes:
        raise InvalidEvent("oversized", f"{len(value)} bytes, limit {max_message_bytes}")
    try:
        parsed: EventBase = EVENT_ADAPTER.validate_json(value)  # type: ignore[assignment]
    except ValidationError as exc:
        first = exc.errors(include_input=False, include_url=False)[0]
        reason = "unknown_type" if first["type"] == "union_tag_invalid" else "schema_violation"
        where = ".".join(str(p) for p in first["loc"]) or "event"
        raise InvalidEvent(reason, f"{where}: {first['msg']}") from None
    kind: str = parsed.type  # type: ignore[attr-defined]
    headers = [
        ("ce_specversion", b"1.0"),
        ("ce_id", parsed.event_id.encode()),
        ("ce_type", f"io.engage.event.{kind}".encode()),
        ("ce_source", source.encode()),
        ("ce_time", parsed.occurred_at.isoformat().replace("+00:00", "Z").encode()),
        ("content-type", b"application/json"),
    ]
    return Envelope(
        topic=f"{namespace}.{TOPIC_SUFFIX[kind]}",
        key=parsed.customer_id.encode("utf-8"),
        value=value,
        headers=headers,
        event=parsed,
    )
