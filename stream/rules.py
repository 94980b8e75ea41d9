"""The numbers behind the profile (SPEC §3), as one validated model.

Every threshold is a setting with the SPEC's default; the ritual rules file embeds this model,
so one versioned file decides both how state is read and what it triggers.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from schemas.events import CLICK_ACTIONS, Click, EventBase, Loyalty


class ProfileRules(BaseModel):
    """State and profile rules; defaults are SPEC §3's."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    half_life_days: float = Field(default=14.0, gt=0)
    score_scale: float = Field(default=10.0, gt=0)
    click_weights: dict[str, float] = Field(
        default_factory=lambda: {
            "page_view": 1.0,
            "email_open": 1.0,
            "search": 1.0,
            "link_click": 2.0,
            "email_click": 2.0,
            "share": 3.0,
            "comment": 3.0,
        }
    )
    type_weights: dict[str, float] = Field(
        default_factory=lambda: {
            "purchase": 5.0,
            "review": 4.0,
            "survey": 2.0,
            "support_contact": 1.0,
            "loyalty": 3.0,
        }
    )
    referral_converted_weight: float = Field(default=8.0, ge=0)
    engaged_score: float = Field(default=40.0, ge=0, le=100)
    sentiment_window_days: int = Field(default=90, ge=1)
    sentiment_threshold: float = Field(default=0.2, ge=0, lt=1)
    max_signals: int = Field(default=32, ge=1, le=256)
    active_window_days: int = Field(default=30, ge=7)
    new_days: int = Field(default=30, ge=0)
    at_risk_days: int = Field(default=30, ge=1)
    dormant_days: int = Field(default=90, ge=1)
    reactivation_gap_days: int = Field(default=30, ge=1)
    reactivated_days: int = Field(default=30, ge=1)
    clv_years: int = Field(default=3, ge=1)
    clv_min_years: float = Field(
        default=1.0, gt=0, description="Purchases per year are never extrapolated from less."
    )
    max_tickets: int = Field(default=16, ge=1, le=256)
    dedup_window: int = Field(default=32, ge=32, le=256)

    def model_post_init(self, _context: object) -> None:
        missing = set(CLICK_ACTIONS) - set(self.click_weights)
        if missing:
            raise ValueError(f"click_weights lacks {sorted(missing)}")
        missing = {"purchase", "review", "survey", "support_contact", "loyalty"} - set(
            self.type_weights
        )
        if missing:
            raise ValueError(f"type_weights lacks {sorted(missing)}")

    def weight(self, event: EventBase) -> float:
        """The engagement weight of one event."""
        if isinstance(event, Click):
            return self.click_weights[event.action]
        if isinstance(event, Loyalty) and event.action == "referral_converted":
            return self.referral_converted_weight
        return self.type_weights[event.type]  # type: ignore[attr-defined]


DEFAULT_RULES = ProfileRules()
