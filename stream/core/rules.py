"""The numbers behind the profile (SPEC §3), as one validated model.

Every threshold is a setting with the SPEC's default; the ritual rules file embeds this model,
so one versioned file decides both how state is read and what it triggers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    model_validator,
)

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
    # Set from the rules file's `consent.marketing_default` (see `Rules`), so a profile shows
    # the consent that applies to a customer who never sent a consent event.
    _marketing_default: str = PrivateAttr(default="opted_in")

    @property
    def marketing_default(self) -> str:
        """`opted_in` or `opted_out`: marketing consent of a customer without a consent event."""
        return self._marketing_default

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


# --- rituals (SPEC §4) ------------------------------------------------------------------------

_UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def parse_duration_ms(value: object) -> int:
    """'72h', '30d', '1500ms', '90s' or a number of seconds -> milliseconds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return int(value * 1000)
    text = str(value).strip()
    for unit in ("ms", "s", "m", "h", "d"):
        number = text.removesuffix(unit)
        if number != text:
            try:
                return int(float(number) * _UNITS_MS[unit])
            except ValueError:
                break
    raise ValueError(f"not a duration: {value!r} (use e.g. 72h, 30d, 90s, 500ms)")


def parse_local_time(value: object) -> int:
    """'08:00' -> minutes after local midnight."""
    hours, _, minutes = str(value).partition(":")
    try:
        h, m = int(hours), int(minutes or 0)
    except ValueError:
        raise ValueError(f"not a local time: {value!r} (use HH:MM)") from None
    if not (0 <= h < 24 and 0 <= m < 60):
        raise ValueError(f"not a local time: {value!r}")
    return h * 60 + m


Duration = Annotated[int, BeforeValidator(parse_duration_ms), Field(gt=0)]
LocalTime = Annotated[int, BeforeValidator(parse_local_time)]
Percent = Annotated[float, Field(ge=0, le=100)]


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class RitualRule(_Strict):
    enabled: bool = True
    holdout_percent: Percent = 10.0


class ThreeDaysLater(RitualRule):
    delay: Duration = parse_duration_ms("72h")


class WeNoticed(RitualRule):
    inactivity: Duration = parse_duration_ms("30d")


class Anniversary(RitualRule):
    local_time: LocalTime = parse_local_time("10:00")


class ServiceRecovery(RitualRule):
    holdout_percent: Percent = 0.0
    nps_max: int = Field(default=6, ge=0, le=10)
    rating_max: int = Field(default=2, ge=1, le=5)
    csat_max: int = Field(default=2, ge=1, le=5)


class ReferralInvite(RitualRule):
    nps_min: int = Field(default=9, ge=0, le=10)
    rating_min: int = Field(default=5, ge=1, le=5)
    window: Duration = parse_duration_ms("90d")


class Rituals(_Strict):
    post_purchase_welcome: RitualRule = RitualRule()
    three_days_later: ThreeDaysLater = ThreeDaysLater()
    we_noticed: WeNoticed = WeNoticed()
    anniversary: Anniversary = Anniversary()
    service_recovery: ServiceRecovery = ServiceRecovery()
    referral_invite: ReferralInvite = ReferralInvite()
    loyalty_milestone: RitualRule = RitualRule()


class QuietHours(_Strict):
    enabled: bool = True
    start: LocalTime = parse_local_time("21:00")
    end: LocalTime = parse_local_time("08:00")


class FrequencyCap(_Strict):
    window: Duration = parse_duration_ms("7d")
    max_delivered: int = Field(default=2, ge=0)
    max_marketing: int = Field(default=1, ge=0)


class Guardrails(_Strict):
    quiet_hours: QuietHours = QuietHours()
    frequency_cap: FrequencyCap = FrequencyCap()
    lateness: Duration = parse_duration_ms("24h")


class ConsentRules(_Strict):
    """SPEC §4 Consent: `opted_out` for regions where marketing needs an explicit opt-in."""

    marketing_default: Literal["opted_in", "opted_out"] = "opted_in"


class Rules(_Strict):
    """The one versioned rules file: its version is stamped on every decision."""

    version: str = Field(min_length=1, max_length=64)
    profile: ProfileRules = ProfileRules()
    rituals: Rituals = Rituals()
    guardrails: Guardrails = Guardrails()
    consent: ConsentRules = ConsentRules()
    outcome_window: Duration = Field(
        default=parse_duration_ms("7d"),
        description="How long after a decision the customer's activity counts as its outcome.",
    )

    @model_validator(mode="after")
    def _profile_knows_consent_default(self) -> Rules:
        """The profile view reads only `ProfileRules`: hand it the consent default (a private
        copy, so a shared default `ProfileRules` instance is never changed)."""
        profile = self.profile.model_copy()
        profile._marketing_default = self.consent.marketing_default
        object.__setattr__(self, "profile", profile)
        return self


DEFAULT_RULES_FILE = Path(__file__).with_name("default_rules.yaml")


def load_rules(path: str | Path | None = None) -> Rules:
    """Read and validate a rules file (YAML); raises RulesError with every problem listed."""
    source = Path(path) if path else DEFAULT_RULES_FILE
    try:
        data = yaml.safe_load(source.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise RulesError(f"cannot read rules file {source}: {exc}") from None
    try:
        return Rules.model_validate(data)
    except ValidationError as exc:
        problems = [
            f"  {'.'.join(str(p) for p in err['loc']) or '(file)'}: {err['msg']}"
            for err in exc.errors()
        ]
        raise RulesError(f"invalid rules file {source}:\n" + "\n".join(problems)) from None


class RulesError(ValueError):
    """A rules file that cannot be used; the message lists what is wrong."""
