"""What a webhook forwarder does with an HTTP answer, and how long it waits before retrying.

Pure policy, shared by `engage forward` and its tests: the I/O lives in stream/tools/forward.py.
"""

from __future__ import annotations

from typing import Literal

Verdict = Literal["delivered", "retry", "refused"]
#: 4xx answers that mean "later", not "never" (timeout, rate limit).
RETRYABLE_4XX = frozenset({408, 425, 429})


def verdict(status: int | None) -> Verdict:
    """2xx delivered; None (timeout, connection error), 5xx, 408/425/429 and anything else
    unexpected (1xx, 3xx) retried; other 4xx refused for good: dead-lettered, never retried,
    because resending the same body would be refused again."""
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
