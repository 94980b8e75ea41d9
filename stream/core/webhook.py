"""What a webhook forwarder does with an HTTP answer, how long it waits before retrying, which
nudges it sends and how it signs them.

Pure policy, shared by `engage forward` and its tests: the I/O (and the wall clock) lives in
stream/tools/forward.py.

Signatures follow Standard Webhooks (https://www.standardwebhooks.com): the headers
`webhook-id`, `webhook-timestamp` (unix seconds) and `webhook-signature`, `v1,` followed by the
base64 HMAC-SHA256 of `{id}.{timestamp}.{body}` under the shared secret. The secret is given
base64-encoded, optionally prefixed `whsec_`, as that specification writes it, so a receiver's
Standard Webhooks library verifies the requests with the same string.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from datetime import datetime
from typing import Literal

Verdict = Literal["delivered", "retry", "refused"]
#: Who a nudge is for (the `audience` of a decision record); a customer webhook gets only
#: `customer` nudges unless told otherwise.
AUDIENCES = ("customer", "service_team")
DEFAULT_AUDIENCES = frozenset({"customer"})
SECRET_PREFIX = "whsec_"
#: 4xx answers that mean "later", not "never" (timeout, rate limit).
RETRYABLE_4XX = frozenset({408, 425, 429})


def verdict(status: int | None) -> Verdict:
    """2xx delivered; None (timeout, connection error), 5xx, 408/425/429 and anything else
    unexpected (1xx, 3xx) retried; other 4xx refused for good: dead-lettered, never retried,
    because resending the same body would be refused again. A redirect is never followed (it
    would turn the POST into a GET without a body, or re-post the nudge to another host): it
    is a failure like a 5xx."""
    if status is None:
        return "retry"
    if 200 <= status < 300:
        return "delivered"
    if 400 <= status < 500 and status not in RETRYABLE_4XX:
        return "refused"
    return "retry"


def backoff_s(
    attempt: int, *, initial_s: float, max_s: float, retry_after_s: float | None = None
) -> float:
    """Seconds to wait after failed attempt number `attempt` (1-based): exponential, capped,
    and never shorter than a receiver's Retry-After."""
    wait = min(max_s, initial_s * 2 ** max(attempt - 1, 0))
    if retry_after_s is not None:
        wait = max(wait, min(retry_after_s, max_s))
    return wait


def decode_secret(text: str) -> bytes:
    """The HMAC key from its Standard Webhooks text form: base64, optionally after `whsec_`.

    Raises ValueError for an empty or non-base64 secret (a configuration error, said at start)."""
    raw = text.strip().removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("must be base64 (optionally prefixed whsec_)") from None
    if len(key) < 16:
        raise ValueError("must decode to at least 16 bytes")
    return key


def signature(key: bytes, *, msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header value: `v1,` + base64 HMAC-SHA256 of
    `{msg_id}.{timestamp}.{body}`."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def signed_headers(key: bytes, *, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three Standard Webhooks headers of one request attempt."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature(key, msg_id=msg_id, timestamp=timestamp, body=body),
    }


def seconds_left(decided_at: datetime | None, *, now: datetime, max_age_s: float | None) -> float:
    """How long a nudge decided at `decided_at` may still be delivered at `now`: infinite with
    no maximum age (or no readable decision time), 0 or less once it is too old to send."""
    if max_age_s is None or decided_at is None:
        return float("inf")
    return max_age_s - (now - decided_at).total_seconds()
