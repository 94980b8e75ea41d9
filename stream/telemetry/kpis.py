"""CX and engagement KPIs (SPEC §5), exported as components that add up across workers.

Event KPIs (NPS answers by category, CSAT satisfied and total, CES sum and count, complaints,
reviews by rating, referrals, revenue and orders) are counters incremented as each event is
folded. Segment KPIs (active customers, stages, quadrants, score bands) are gauges refreshed by a
periodic read of the worker's own table partitions, so each worker reports only the customers it
owns and `sum()` in PromQL gives the whole population. Ratios are Prometheus recording rules
(`ops/prometheus/rules/engage.yml`), never computed here.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache

from prometheus_client import CollectorRegistry, Counter, Gauge, Summary

from schemas.events import (
    CONSENT_SCOPES,
    CONSENT_SOURCES,
    Consent,
    EventBase,
    Loyalty,
    Purchase,
    Review,
    SupportContact,
    Survey,
)
from stream.core.profile import (
    QUADRANTS,
    STAGES,
    engagement_score,
    lifecycle_stage,
    quadrant,
    sentiment,
)
from stream.core.rules import ProfileRules
from stream.core.state import MS_PER_DAY, CustomerState

#: Consent events without a `source` are counted under this label.
NO_SOURCE = "unspecified"
CONSENT_SOURCE_LABELS = (*CONSENT_SOURCES, NO_SOURCE)
#: Reasons a decision is `suppressed` (SPEC §4), the label values of the suppression counter.
SUPPRESSION_REASONS = ("no_consent", "once_per_window", "frequency_cap")
SCORE_BANDS = ("0-20", "20-40", "40-60", "60-80", "80-100")
ACTIVE_WINDOWS = {"1d": 1, "7d": 7, "30d": 30}


@dataclass
class Snapshot:
    """Segment counts of a set of customers at one clock."""

    customers: int = 0
    active: Tally[str] = field(default_factory=Tally)
    stages: Tally[str] = field(default_factory=Tally)
    quadrants: Tally[str] = field(default_factory=Tally)
    bands: Tally[str] = field(default_factory=Tally)


def add_to_snapshot(snap: Snapshot, state: CustomerState, clock: int, rules: ProfileRules) -> None:
    """Count one customer into a snapshot (pure: the scan loop lives in the shell)."""
    snap.customers += 1
    idle = clock - state.last_seen
    for name, days in ACTIVE_WINDOWS.items():
        if 0 <= idle < days * MS_PER_DAY:
            snap.active[name] += 1
    score = engagement_score(state, clock, rules)
    snap.stages[lifecycle_stage(state, clock, rules)] += 1
    snap.quadrants[quadrant(score, sentiment(state, clock, rules), rules)] += 1
    snap.bands[SCORE_BANDS[min(int(score // 20), 4)]] += 1


def snapshot(states: Iterable[CustomerState], clock: int, rules: ProfileRules) -> Snapshot:
    snap = Snapshot()
    for state in states:
        add_to_snapshot(snap, state, clock, rules)
    return snap


class Kpis:
    """KPI metrics in the worker's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.nps = Counter(
            "engage_nps_responses_total", "NPS answers by category.", ["category"], registry=r
        )
        self.csat = Counter("engage_csat_responses_total", "CSAT answers.", registry=r)
        self.csat_satisfied = Counter(
            "engage_csat_satisfied_total", "CSAT answers of 4 or 5.", registry=r
        )
        self.ces = Summary("engage_ces_score", "CES answers (1..7, higher = easier).", registry=r)
        self.complaints_opened = Counter(
            "engage_complaints_opened_total", "Support contacts opening a complaint.", registry=r
        )
        self.complaints_resolved = Counter(
            "engage_complaints_resolved_total", "Support contacts resolving a complaint.",
            registry=r,
        )  # fmt: skip
        self.fcr = Counter(
            "engage_first_contact_resolutions_total",
            "Complaint tickets resolved by their first contact.",
            registry=r,
        )
        self.reviews = Counter("engage_reviews_total", "Reviews by rating.", ["rating"], registry=r)
        self.referrals_sent = Counter("engage_referrals_sent_total", "Referrals sent.", registry=r)
        self.referrals_converted = Counter(
            "engage_referrals_converted_total", "Referrals converted.", registry=r
        )
        self.revenue = Counter(
            "engage_revenue_total", "Purchase amounts, by ISO 4217 currency.", ["currency"],
            registry=r,
        )  # fmt: skip
        self.orders = Counter("engage_orders_total", "Purchases.", registry=r)
        self.opt_outs = Counter(
            "engage_consent_opt_outs_total",
            "Consent events opting out, by scope (marketing, all) and source.",
            ["scope", "source"],
            registry=r,
        )
        self.opt_ins = Counter(
            "engage_consent_opt_ins_total",
            "Consent events opting (back) in, by scope and source.",
            ["scope", "source"],
            registry=r,
        )
        self.suppressions = Counter(
            "engage_ritual_suppressions_total",
            "Decisions suppressed, by reason (no_consent, once_per_window, frequency_cap).",
            ["reason"],
            registry=r,
        )
        self.customers = Gauge(
            "engage_table_customers", "Customers held in this worker's table partitions.",
            registry=r,
        )  # fmt: skip
        self.active = Gauge(
            "engage_active_customers", "Customers active within the window.", ["window"],
            registry=r,
        )  # fmt: skip
        self.stages = Gauge(
            "engage_customers_by_stage", "Customers by lifecycle stage.", ["stage"], registry=r
        )
        self.quadrants = Gauge(
            "engage_customers_by_quadrant", "Customers by quadrant.", ["quadrant"], registry=r
        )
        self.bands = Gauge(
            "engage_customers_by_score_band", "Customers by engagement score band.", ["band"],
            registry=r,
        )  # fmt: skip
        for category in ("promoter", "passive", "detractor"):
            self.nps.labels(category)
        for rating in range(1, 6):
            self.reviews.labels(str(rating))
        for scope in CONSENT_SCOPES:
            for source in CONSENT_SOURCE_LABELS:
                self.opt_outs.labels(scope, source)
                self.opt_ins.labels(scope, source)
        for reason in SUPPRESSION_REASONS:
            self.suppressions.labels(reason)
        self.publish(Snapshot())

    @cache  # noqa: B019
    def _consent(self, status: str, scope: str, source: str) -> Counter:
        family = self.opt_outs if status == "opted_out" else self.opt_ins
        return family.labels(scope, source)

    @cache  # noqa: B019
    def _suppression(self, reason: str) -> Counter:
        return self.suppressions.labels(reason)

    def count_decisions(self, decisions: Iterable[dict[str, object]]) -> None:
        """Suppressions by reason, for a batch of decision records."""
        for record in decisions:
            if record["status"] == "suppressed":
                self._suppression(str(record["reason"])).inc()

    @cache  # noqa: B019 - closed label sets
    def _nps(self, category: str) -> Counter:
        return self.nps.labels(category)

    @cache  # noqa: B019
    def _review(self, rating: int) -> Counter:
        return self.reviews.labels(str(rating))

    @cache  # noqa: B019
    def _revenue(self, currency: str) -> Counter:
        return self.revenue.labels(currency)

    def count(self, event: EventBase, first_contact_resolution: bool = False) -> None:
        """The event KPIs of one folded event."""
        if isinstance(event, Survey):
            if event.survey == "nps":
                s = event.score
                self._nps("promoter" if s >= 9 else "passive" if s >= 7 else "detractor").inc()
            elif event.survey == "csat":
                self.csat.inc()
                if event.score >= 4:
                    self.csat_satisfied.inc()
            else:
                self.ces.observe(event.score)
        elif isinstance(event, Purchase):
            self.orders.inc()
            self._revenue(event.currency).inc(float(event.amount))
        elif isinstance(event, Review):
            self._review(event.rating).inc()
        elif isinstance(event, SupportContact) and event.complaint:
            if event.status == "opened":
                self.complaints_opened.inc()
            elif event.status == "resolved":
                self.complaints_resolved.inc()
                if first_contact_resolution:
                    self.fcr.inc()
        elif isinstance(event, Consent):
            self._consent(event.status, event.scope, event.source or NO_SOURCE).inc()
        elif isinstance(event, Loyalty):
            if event.action == "referral_sent":
                self.referrals_sent.inc()
            elif event.action == "referral_converted":
                self.referrals_converted.inc()

    def publish(self, snap: Snapshot) -> None:
        self.customers.set(snap.customers)
        for name in ACTIVE_WINDOWS:
            self.active.labels(name).set(snap.active[name])
        for stage in STAGES:
            self.stages.labels(stage).set(snap.stages[stage])
        for q in QUADRANTS:
            self.quadrants.labels(q).set(snap.quadrants[q])
        for band in SCORE_BANDS:
            self.bands.labels(band).set(snap.bands[band])


def _ratio(num: float, den: float) -> float | None:
    return round(num / den, 4) if den else None


def summary(registry: CollectorRegistry) -> dict[str, object]:
    """This worker's KPI components and the ratios they give (GET /kpis).

    A worker only knows its own partitions; the cluster-wide figures are the Prometheus
    recording rules, which sum the components of every worker before dividing.
    """
    values: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in registry.collect():
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value

    def get(name: str, **labels: str) -> float:
        return values.get((name, tuple(sorted(labels.items()))), 0.0)

    promoters = get("engage_nps_responses_total", category="promoter")
    passives = get("engage_nps_responses_total", category="passive")
    detractors = get("engage_nps_responses_total", category="detractor")
    nps_n = promoters + passives + detractors
    reviews = {str(r): get("engage_reviews_total", rating=str(r)) for r in range(1, 6)}
    lift: dict[str, dict[str, float | None]] = {}
    from stream.core.rituals import OUTCOME_BITS, RITUALS

    for ritual in RITUALS:
        rates = {}
        for arm in ("treated", "held_out"):
            decided = get("engage_ritual_outcomes_total", ritual=ritual, arm=arm, outcome="decided")
            rates[arm] = {
                o: _ratio(
                    get("engage_ritual_outcomes_total", ritual=ritual, arm=arm, outcome=o), decided
                )
                for o in OUTCOME_BITS
            }
        lift[ritual] = {
            o: _ratio(rates["treated"][o] or 0.0, rates["held_out"][o] or 0.0)
            if rates["treated"][o] is not None
            else None
            for o in OUTCOME_BITS
        }
    active = {w: get("engage_active_customers", window=w) for w in ACTIVE_WINDOWS}
    opt_outs = {
        scope: {
            src: get("engage_consent_opt_outs_total", scope=scope, source=src)
            for src in CONSENT_SOURCE_LABELS
        }
        for scope in CONSENT_SCOPES
    }
    return {
        "scope": "worker",
        "nps": round(100 * (promoters - detractors) / nps_n, 2) if nps_n else None,
        "nps_responses": {"promoter": promoters, "passive": passives, "detractor": detractors},
        "csat_percent": _ratio(
            100 * get("engage_csat_satisfied_total"), get("engage_csat_responses_total")
        ),
        "ces_mean": _ratio(get("engage_ces_score_sum"), get("engage_ces_score_count")),
        "complaints_opened": get("engage_complaints_opened_total"),
        "complaints_resolved": get("engage_complaints_resolved_total"),
        "first_contact_resolution_ratio": _ratio(
            get("engage_first_contact_resolutions_total"), get("engage_complaints_resolved_total")
        ),
        "reviews_by_rating": reviews,
        "referrals": {
            "sent": get("engage_referrals_sent_total"),
            "converted": get("engage_referrals_converted_total"),
        },
        "orders": get("engage_orders_total"),
        "customers": get("engage_table_customers"),
        "active_customers": active,
        "stickiness": _ratio(active["1d"], active["30d"]),
        "lifecycle_stages": {s: get("engage_customers_by_stage", stage=s) for s in STAGES},
        "quadrants": {q: get("engage_customers_by_quadrant", quadrant=q) for q in QUADRANTS},
        "ritual_lift": lift,
        "consent_opt_outs": opt_outs,
        "suppressions": {
            reason: get("engage_ritual_suppressions_total", reason=reason)
            for reason in SUPPRESSION_REASONS
        },
    }
