"""Erasure (SPEC §4): deciding what forgetting a customer deletes, and the receipt, purely.

The adapter reads the request off `engage.erasures`, asks `parse_request` whether it can be
honoured, asks `plan` what the customer's state holds (its timers and queued events live in
that state, so deleting the state deletes them), performs the deletions (table tombstone, due
index, Redis) and sends `receipt(...)`. Nothing here touches Kafka, Redis or a clock: the shell
hands in the instant it erased at.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from schemas.erasure import Deleted, ErasureRequest
from stream.core.ingest import Rejection
from stream.core.rituals import timer_count
from stream.core.state import CustomerState


def customer_digest(key: bytes) -> str:
    """What the partition keeps of an erased customer until its records can no longer be
    re-read: a digest, so the id itself is gone with the state."""
    return hashlib.sha256(b"engage-erased:" + key).hexdigest()[:32]


def parse_request(key: bytes | None, value: bytes | None) -> ErasureRequest | Rejection:
    """A valid request whose key is its customer id, or why it goes to the dead-letter topic."""
    if value is None:
        return Rejection("malformed_json", "empty message value")
    try:
        request = ErasureRequest.model_validate_json(value)
    except ValidationError as exc:
        first = exc.errors(include_input=False, include_url=False)[0]
        if first["type"] in {"json_invalid", "json_type"}:
            return Rejection("malformed_json", "erasure request is not JSON")
        loc = ".".join(str(p) for p in first["loc"]) or "request"
        return Rejection("schema_violation", f"erasure request {loc}: {first['msg']}"[:200])
    if key is None or key != request.customer_id.encode("utf-8"):
        return Rejection("key_mismatch", "message key differs from customer_id")
    return request


def plan(state: CustomerState | None, *, projection: bool) -> Deleted:
    """What erasing this customer deletes: its state, and with it the pending timers and
    queued events it holds, its due-index wake-up, and (when projected) its Redis keys."""
    if state is None:
        return Deleted(
            state=False, timers=0, queued_events=0, due_index=False, redis_profile=projection
        )
    return Deleted(
        state=True,
        timers=timer_count(state.r),
        queued_events=len(state.r.pending),
        due_index=True,
        redis_profile=projection,
    )


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def receipt(request: ErasureRequest, *, erased_at: datetime, deleted: Deleted) -> dict[str, Any]:
    """The receipt record: ids, instants and what was deleted; never any personal content."""
    return {
        "request_id": request.request_id,
        "customer_id": request.customer_id,
        "requested_at": _iso(request.requested_at),
        "erased_at": _iso(erased_at),
        "deleted": deleted.model_dump(),
    }


def encode_receipt(record: dict[str, Any]) -> bytes:
    """Canonical JSON bytes of a receipt."""
    return json.dumps(record, sort_keys=True, separators=(",", ":")).encode()
