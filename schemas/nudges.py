"""Output records (SPEC §4): ritual decisions on `engage.nudge-decisions`, and the delivered
ones on `engage.nudges`, the topic messaging systems consume. Both carry the same record."""

from __future__ import annotations

from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

#: The packaged rituals (the rules file may define more: any name matching `RITUAL_NAME`).
Ritual = Literal[
    "post_purchase_welcome",
    "three_days_later",
    "we_noticed",
    "anniversary",
    "service_recovery",
    "referral_invite",
    "loyalty_milestone",
]
RITUAL_NAME = r"^[a-z][a-z0-9_]{0,47}$"
Status = Literal["delivered", "held_out", "suppressed", "expired", "cancelled"]
#: The packaged rituals in their rules-file order (which breaks ties between timers).
RITUALS: tuple[str, ...] = get_args(Ritual)
STATUSES: tuple[str, ...] = get_args(Status)


_EXAMPLE: dict[str, Any] = {
    "nudge_id": "723343b56f26132407d299aa9ad75cb9e8cf4921902c3ee74846925da3c599b4",
    "ritual": "post_purchase_welcome",
    "rules_version": "2026.11-1",
    "customer_id": "cust-000042",
    "anchor": "first_purchase",  # once per customer: the welcome follows the first purchase
    "due_at": "2026-03-02T09:15:00.000Z",
    "decided_at": "2026-03-02T09:15:00.000Z",
    "status": "delivered",
    "reason": "eligible",
    "audience": "customer",
    "category": "care",
    "promotional": False,
    "tz": "Europe/Berlin",
    "explanation": {"order_id": "ord-1001", "source_event_id": "ex-purchase-1"},
}


class Decision(BaseModel):
    """One ritual decision. `nudge_id` is lowercase hex SHA-256 of `ritual|customer_id|anchor`:
    the same nudge is the same id everywhere, so a consumer can drop a re-send."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                _EXAMPLE,
                _EXAMPLE
                | {  # cust-000064's bucket for this ritual is 3, below the 10 % holdout
                    "nudge_id": "dff049a49dc0f25ee0f36a4e1657d33787348caae9d8174411f7ac58a5005d95",
                    "customer_id": "cust-000064",
                    "status": "held_out",
                    "reason": "holdout",
                    "explanation": {
                        "order_id": "ord-2001",
                        "source_event_id": "ex-purchase-9",
                        "holdout_bucket": 3,
                    },
                },
            ]
        },
    )

    nudge_id: str = Field(pattern=r"^[0-9a-f]{64}$")
    ritual: str = Field(
        pattern=RITUAL_NAME,
        description="The ritual's name in the rules file: one of the packaged rituals ("
        + ", ".join(get_args(Ritual))
        + ") or one the rules file defines.",
    )
    rules_version: str
    customer_id: str = Field(min_length=1, max_length=128)
    anchor: str = Field(min_length=1)
    due_at: str = Field(description="When the rule first fell due (RFC 3339, UTC).")
    decided_at: str = Field(
        description="The instant the decision was taken as of: the due time, the deferred "
        "end of quiet hours, or the triggering event's time (RFC 3339, UTC)."
    )
    status: Status
    reason: str = Field(
        description="eligible, holdout, frequency_cap, once_per_window, no_consent, lateness, "
        "review_of_order, support_contact_opened, activity_resumed or open_complaint."
    )
    audience: Literal["customer", "service_team"]
    category: Literal["care", "marketing", "recovery"]
    promotional: bool
    tz: str = Field(description="The customer's IANA time zone at the decision.")
    explanation: dict[str, Any] = Field(
        description="The exact state values and event ids that made the rule fire; no free text."
    )
    template: str | None = Field(
        default=None,
        description="The ritual's `template` key from the rules file, for the messaging system "
        "(present only when the ritual names one).",
    )


class Nudge(Decision):
    """A delivered decision, as messaging systems receive it."""

    model_config = ConfigDict(json_schema_extra={"examples": [_EXAMPLE]})

    status: Literal["delivered"]


RECORD_MODELS: dict[str, type[BaseModel]] = {"decision": Decision, "nudge": Nudge}
