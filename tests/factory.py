"""Builders of valid SPEC §1 event dicts for tests: one place that knows the field set."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime, timedelta
from typing import Any

T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
_ids = itertools.count(1)


def at(days: float = 0.0, base: datetime = T0) -> str:
    return (base + timedelta(days=days)).isoformat().replace("+00:00", "Z")


def event(kind: str, customer: str = "c1", days: float = 0.0, **fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "event_id": fields.pop("event_id", f"ev-{next(_ids)}"),
        "customer_id": customer,
        "type": kind,
        "occurred_at": fields.pop("occurred_at", at(days)),
    }
    defaults: dict[str, dict[str, Any]] = {
        "click": {"action": "page_view"},
        "purchase": {
            "order_id": f"o-{next(_ids)}",
            "amount": "10.00",
            "currency": "EUR",
            "items": 1,
        },
        "review": {"review_id": f"r-{next(_ids)}", "rating": 5, "channel": "site"},
        "support_contact": {
            "contact_id": f"k-{next(_ids)}",
            "ticket_id": "t1",
            "channel": "chat",
            "status": "opened",
            "complaint": False,
        },
        "survey": {"survey": "nps", "score": 10},
        "loyalty": {"action": "joined"},
        "consent": {"scope": "marketing", "status": "opted_out", "source": "unsubscribe_link"},
    }
    return {**base, **defaults.get(kind, {}), **fields}


def raw(evt: dict[str, Any]) -> bytes:
    return json.dumps(evt).encode("utf-8")
