"""CX and engagement KPIs (SPEC §5), exported as components that add up across workers.

Event KPIs (NPS answers by category, CSAT satisfied and total, CES sum and count, complaints,
reviews by rating, referrals, revenue and orders, clicks by action and prompted/unprompted, dwell
time) are counters incremented as each event is folded; the click components, the most frequent,
are plain integers added per event and read by a collector at scrape time (no metric-library
call on the hot path). Segment KPIs (active customers, stages, quadrants, score bands, retention
cohorts, CLV) are gauges refreshed by a periodic read of the worker's own table partitions, so
each worker reports only the customers it owns and `sum()` in PromQL gives the whole
population. Ratios are Prometheus recording rules (`ops/prometheus/rules/engage.yml`), never
computed here; `summary` (GET /kpis) derives the same ratios for one worker, and the lift
intervals of `stream.core.lift`.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import Counter as Tally
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Summary
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.registry import Collector

from schemas.events import (
    CLICK_ACTIONS,
    CONSENT_SCOPES,
    CONSENT_SOURCES,
    Click,
    Consent,
    EventBase,
    Loyalty,
    Purchase,
    Review,
    SupportContact,
    Survey,
)
from schemas.iso4217 import CURRENCIES
from stream.core.decision import Decision
from stream.core.ingest import REASONS
from stream.core.lift import lift as lift_of
from stream.core.profile import (
    QUADRANTS,
    STAGES,
    engagement_score,
    lifecycle_stage,
    quadrant,
    sentiment,
)
from stream.core.rituals import OUTCOME_BITS, RITUALS
from stream.core.rules import ProfileRules
from stream.core.state import MS_PER_DAY, CustomerState, Segments
from stream.core.vocabulary import Status
from stream.telemetry.samples import Samples

#: The currency label of a stored customer whose currency is not in ISO 4217 (a state written
#: before the worker checked currencies): one series for all of them, never one per code.
OTHER_CURRENCY = "other"
_ISO_CURRENCIES = frozenset(CURRENCIES)
#: Consent events without a `source` are counted under this label.
NO_SOURCE = "unspecified"
CONSENT_SOURCE_LABELS = (*CONSENT_SOURCES, NO_SOURCE)
#: Reasons a decision is `suppressed` (SPEC §4), the label values of the suppression counter.
SUPPRESSION_REASONS = ("no_consent", "once_per_window", "frequency_cap")
SCORE_BANDS = ("0-20", "20-40", "40-60", "60-80", "80-100")
ACTIVE_WINDOWS = {"1d": 1, "7d": 7, "30d": 30}
#: Retention windows: customers known at the window's start, and how many of them were active
#: within it (see `add_to_snapshot`).
RETENTION_WINDOWS = {"7d": 7, "30d": 30, "90d": 90}
#: CLV bands, in units of the customer's own currency: (label, lower bound inclusive).
CLV_BANDS = (
    ("0-100", 0),
    ("100-500", 100),
    ("500-1000", 500),
    ("1000-5000", 1000),
    ("5000+", 5000),
)
SOCIAL_ACTIONS = ("share", "comment")
_MS_PER_YEAR = 365.25 * MS_PER_DAY
_CLV_LABELS = tuple(name for name, _ in CLV_BANDS)
_CLV_BOUNDS = tuple(lower for _, lower in CLV_BANDS)
_RETENTION_SPANS = tuple((name, days * MS_PER_DAY) for name, days in RETENTION_WINDOWS.items())


@dataclass
class Snapshot:
    """Segment counts of a set of customers at one clock."""

    customers: int = 0
    active: Tally[str] = field(default_factory=Tally)
    stages: Tally[str] = field(default_factory=Tally)
    quadrants: Tally[str] = field(default_factory=Tally)
    bands: Tally[str] = field(default_factory=Tally)
    cohort: Tally[str] = field(default_factory=Tally)  # window -> known at the window's start
    retained: Tally[str] = field(default_factory=Tally)  # window -> of those, active within it
    acquired: Tally[str] = field(default_factory=Tally)  # window -> first seen within it
    clv: dict[str, float] = field(default_factory=dict)  # currency -> sum of CLV estimates
    clv_bands: Tally[tuple[str, str]] = field(default_factory=Tally)  # (currency, band)


def clv_band(value: float) -> str:
    """The CLV band of an estimate (bands are in the customer's own currency units)."""
    return _CLV_LABELS[max(bisect_right(_CLV_BOUNDS, value) - 1, 0)]


def add_to_snapshot(
    snap: Snapshot, state: CustomerState | Segments, clock: int, rules: ProfileRules
) -> None:
    """Count one customer into a snapshot (pure: the scan loop lives in the shell).

    Retention over a window W ending at `clock`: the cohort is every customer first seen at or
    before clock - W (a customer at the window's start); retained are those of the cohort with
    activity after clock - W (still a customer at its end); acquired are those first seen after
    clock - W. So retention = retained / cohort = (customers at the end - acquired during the
    window) / customers at the start, and churn = 1 - retention.
    """
    snap.customers += 1
    idle = clock - state.last_seen
    for name, days in ACTIVE_WINDOWS.items():
        if 0 <= idle < days * MS_PER_DAY:
            snap.active[name] += 1
    first, last = state.first_seen, state.last_seen
    for name, span in _RETENTION_SPANS:
        start = clock - span
        if first > start:
            snap.acquired[name] += 1
        else:
            snap.cohort[name] += 1
            if last > start:
                snap.retained[name] += 1
    currency = state.currency
    money = state.money.get(currency) if currency is not None else None
    if currency is not None and money is not None and money.orders:
        # The profile's clv_estimate (AOV x orders per year x years = revenue per year x
        # years), in floats: a gauge is a float, and Decimal would make this loop 4x slower.
        years = max((clock - state.first_purchase_at) / _MS_PER_YEAR, rules.clv_min_years)
        value = round(float(money.revenue) / years * rules.clv_years, 2)
        label = currency if currency in _ISO_CURRENCIES else OTHER_CURRENCY
        snap.clv[label] = snap.clv.get(label, 0.0) + value
        snap.clv_bands[(label, clv_band(value))] += 1
    score = engagement_score(state, clock, rules)
    snap.stages[lifecycle_stage(state, clock, rules)] += 1
    snap.quadrants[quadrant(score, sentiment(state, clock, rules), rules)] += 1
    snap.bands[SCORE_BANDS[min(int(score // 20), 4)]] += 1


def snapshot(
    states: Iterable[CustomerState | Segments], clock: int, rules: ProfileRules
) -> Snapshot:
    """The snapshot of a set of customers (tests and tools; the worker scans incrementally)."""
    snap = Snapshot()
    for state in states:
        add_to_snapshot(snap, state, clock, rules)
    return snap


class KpiCollector(Collector):
    """Click components and the snapshot KPIs keyed by open-ended currencies, rendered at
    scrape time from plain values (so counting a click is a dict increment, nothing more)."""

    def __init__(self) -> None:
        self.clicks: dict[tuple[str, str], int] = {
            (action, prompted): 0 for action in CLICK_ACTIONS for prompted in ("true", "false")
        }
        self.dwell_count = 0
        self.dwell_sum = 0.0
        self.snapshot = Snapshot()
        # Every currency seen: its series never disappear (bounded: ISO 4217 codes and "other").
        self.currencies: set[str] = set()

    def publish(self, snap: Snapshot) -> None:
        self.snapshot = snap
        self.currencies.update(snap.clv)

    def describe(self) -> list[Metric]:
        return []  # rendered on demand; the names are unique to this collector

    def collect(self) -> Iterator[Metric]:
        clicks = CounterMetricFamily(
            "engage_clicks",
            "Clicks by action, and whether they carried a nudge_id (prompted) or not. Social "
            "engagement is action share or comment.",
            labels=["action", "prompted"],
        )
        for (action, prompted), n in self.clicks.items():
            clicks.add_metric([action, prompted], n)
        yield clicks
        yield SummaryMetricFamily(
            "engage_click_dwell_seconds",
            "Time on page of the clicks that report dwell_ms.",
            count_value=self.dwell_count,
            sum_value=self.dwell_sum,
        )
        snap = self.snapshot
        for name, tally, help_ in (
            ("cohort", snap.cohort, "Customers first seen at or before the window's start."),
            ("retained", snap.retained, "Of the cohort, customers active within the window."),
            ("acquired", snap.acquired, "Customers first seen within the window."),
        ):
            family = GaugeMetricFamily(
                f"engage_retention_{name}_customers", help_, labels=["window"]
            )
            for window in RETENTION_WINDOWS:
                family.add_metric([window], tally[window])
            yield family
        clv = GaugeMetricFamily(
            "engage_clv_estimate",
            "Sum of the customers' CLV estimates (AOV x purchases per year x 3 years), by the "
            "customers' own currency (that of their first purchase).",
            labels=["currency"],
        )
        bands = GaugeMetricFamily(
            "engage_customers_by_clv_band",
            "Customers with a purchase, by currency and CLV band (in that currency's units).",
            labels=["currency", "band"],
        )
        for currency in sorted(self.currencies):
            clv.add_metric([currency], float(snap.clv.get(currency, 0)))
            for band, _ in CLV_BANDS:
                bands.add_metric([currency, band], snap.clv_bands[(currency, band)])
        yield clv
        yield bands


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
        self.extra = KpiCollector()
        registry.register(self.extra)
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

    def count_decisions(self, decisions: Iterable[Decision]) -> None:
        """Suppressions by reason, for a batch of decision records."""
        for record in decisions:
            if record.status == Status.SUPPRESSED:
                self._suppression(record.reason).inc()

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
        self.count_all([(event, first_contact_resolution)])

    def count_all(self, folded: Iterable[tuple[EventBase, bool]]) -> None:
        """The event KPIs of a batch's folded events ((event, first contact resolution)
        pairs): each series is incremented once per batch, by the batch's total."""
        incs: Tally[Any] = Tally()  # a metric child -> what to add to it
        extra = self.extra
        for event, first_contact_resolution in folded:
            if isinstance(event, Click):  # the most frequent: plain integers, read at scrape
                key = (event.action, "false" if event.nudge_id is None else "true")
                extra.clicks[key] += 1
                if event.dwell_ms is not None:
                    extra.dwell_count += 1
                    extra.dwell_sum += event.dwell_ms / 1000
            elif isinstance(event, Survey):
                if event.survey == "nps":
                    s = event.score
                    band = "promoter" if s >= 9 else "passive" if s >= 7 else "detractor"
                    incs[self._nps(band)] += 1
                elif event.survey == "csat":
                    incs[self.csat] += 1
                    if event.score >= 4:
                        incs[self.csat_satisfied] += 1
                else:
                    self.ces.observe(event.score)
            elif isinstance(event, Purchase):
                incs[self.orders] += 1
                incs[self._revenue(event.currency)] += float(event.amount)
                extra.currencies.add(event.currency)  # its CLV series appear with its revenue
            elif isinstance(event, Review):
                incs[self._review(event.rating)] += 1
            elif isinstance(event, SupportContact) and event.complaint:
                if event.status == "opened":
                    incs[self.complaints_opened] += 1
                elif event.status == "resolved":
                    incs[self.complaints_resolved] += 1
                    if first_contact_resolution:
                        incs[self.fcr] += 1
            elif isinstance(event, Consent):
                incs[self._consent(event.status, event.scope, event.source or NO_SOURCE)] += 1
            elif isinstance(event, Loyalty):
                if event.action == "referral_sent":
                    incs[self.referrals_sent] += 1
                elif event.action == "referral_converted":
                    incs[self.referrals_converted] += 1
        for child, amount in incs.items():
            child.inc(amount)

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
        self.extra.publish(snap)


def _ratio(num: float, den: float) -> float | None:
    return round(num / den, 4) if den else None


def _quantile(buckets: dict[str, float], q: float) -> float | None:
    """histogram_quantile over cumulative buckets (le -> count), linear within a bucket."""
    points = sorted((float(le), n) for le, n in buckets.items())
    if not points or points[-1][1] == 0:
        return None
    rank = q * points[-1][1]
    lower, below = 0.0, 0.0
    for upper, count in points:
        if count >= rank:
            if upper == float("inf"):
                return lower
            if count == below:
                return upper
            return round(lower + (upper - lower) * (rank - below) / (count - below), 6)
        lower, below = upper, count
    return lower


def ritual_lift(get: Any, rituals: Iterable[str] = RITUALS) -> dict[str, dict[str, dict[str, Any]]]:
    """Per ritual and outcome: both arms' rates with Wilson intervals, the difference with
    Newcombe's interval, the ratio with the Katz interval, and a verdict (`stream.core.lift`).

    `get(ritual, arm, outcome)` returns an outcome count (`engage_ritual_outcomes_total`), so
    the same function serves a worker's registry, Prometheus and the report.
    """
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for ritual in rituals:
        treated = int(get(ritual, "treated", "decided"))
        held = int(get(ritual, "held_out", "decided"))
        out[ritual] = {
            outcome: lift_of(
                int(get(ritual, "treated", outcome)),
                treated,
                int(get(ritual, "held_out", outcome)),
                held,
            ).to_dict()
            for outcome in OUTCOME_BITS
        }
    return out


def summary(registry: CollectorRegistry) -> dict[str, Any]:
    """This worker's KPI components and the ratios they give (GET /kpis).

    A worker only knows its own partitions; the cluster-wide figures are the Prometheus
    recording rules, which sum the components of every worker before dividing.
    """
    return summary_of(Samples.of_registry(registry), scope="worker")


def summary_of(m: Samples, *, scope: str) -> dict[str, Any]:
    """KPI components and ratios from samples (`summary`; the report, from Prometheus)."""
    get = m.get

    promoters = get("engage_nps_responses_total", category="promoter")
    passives = get("engage_nps_responses_total", category="passive")
    detractors = get("engage_nps_responses_total", category="detractor")
    nps_n = promoters + passives + detractors
    reviews = {str(r): get("engage_reviews_total", rating=str(r)) for r in range(1, 6)}

    outcome = m.outcome
    rituals = m.rituals()
    lift: dict[str, dict[str, float | None]] = {}
    for ritual in rituals:
        rates = {}
        for arm in ("treated", "held_out"):
            decided = outcome(ritual, arm, "decided")
            rates[arm] = {o: _ratio(outcome(ritual, arm, o), decided) for o in OUTCOME_BITS}
        lift[ritual] = {
            o: _ratio(rates["treated"][o] or 0.0, rates["held_out"][o] or 0.0)
            if rates["treated"][o] is not None
            else None
            for o in OUTCOME_BITS
        }
    active = {w: get("engage_active_customers", window=w) for w in ACTIVE_WINDOWS}
    clicks = get("engage_clicks_total")
    prompted = get("engage_clicks_total", prompted="true")
    delivered = get("engage_ritual_decisions_total", status=Status.DELIVERED)
    retention: dict[str, dict[str, float | None]] = {}
    for w in RETENTION_WINDOWS:
        cohort = get("engage_retention_cohort_customers", window=w)
        kept = get("engage_retention_retained_customers", window=w)
        retention[w] = {
            "cohort": cohort,
            "retained": kept,
            "acquired": get("engage_retention_acquired_customers", window=w),
            "retention_rate": _ratio(kept, cohort),
            "churn_rate": _ratio(cohort - kept, cohort),
        }
    clv: dict[str, dict[str, Any]] = {}
    for currency, total in sorted(m.by("engage_clv_estimate", "currency").items()):
        bands = {
            band: get("engage_customers_by_clv_band", currency=currency, band=band)
            for band, _ in CLV_BANDS
        }
        buyers = sum(bands.values())
        clv[currency] = {
            "sum": round(total, 2),
            "customers": buyers,
            "mean": round(total / buyers, 2) if buyers else None,
            "bands": bands,
        }
    click_through = {
        ritual: {
            arm: {
                "decided": outcome(ritual, arm, "decided"),
                "clicked": outcome(ritual, arm, "clicked"),
                "rate": _ratio(outcome(ritual, arm, "clicked"), outcome(ritual, arm, "decided")),
            }
            for arm in ("treated", "held_out")
        }
        for ritual in rituals
    }
    decisions = {
        ritual: {
            st: get("engage_ritual_decisions_total", ritual=ritual, status=st) for st in Status
        }
        for ritual in rituals
    }
    by_version: dict[str, dict[str, dict[str, Any]]] = {}
    for version in sorted(m.by("engage_ritual_outcomes_total", "rules_version")):

        def versioned(ritual: str, arm: str, name: str, version: str = version) -> float:
            return m.outcome(ritual, arm, name, rules_version=version)

        by_version[version] = ritual_lift(versioned, rituals)
    lag_buckets = m.by("engage_end_to_end_lag_seconds_bucket", "le")
    watermark = [v for _, v in m.series("engage_watermark_lag_seconds")]
    opt_outs = {
        scope: {
            src: get("engage_consent_opt_outs_total", scope=scope, source=src)
            for src in CONSENT_SOURCE_LABELS
        }
        for scope in CONSENT_SCOPES
    }
    return {
        "scope": scope,
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
        "revenue": m.by("engage_revenue_total", "currency"),
        "customers": get("engage_table_customers"),
        "active_customers": active,
        "stickiness": _ratio(active["1d"], active["30d"]),
        "retention": retention,
        "clv": clv,
        "interactions": {
            "clicks": clicks,
            "prompted": prompted,
            "unprompted": clicks - prompted,
            "prompted_share": _ratio(prompted, clicks),
            "by_action": m.by("engage_clicks_total", "action"),
        },
        "social_engagement": {a: get("engage_clicks_total", action=a) for a in SOCIAL_ACTIONS},
        "dwell_seconds_mean": _ratio(
            get("engage_click_dwell_seconds_sum"), get("engage_click_dwell_seconds_count")
        ),
        "nudge_click_through": click_through,
        "prompted_clicks_per_delivered_nudge": _ratio(prompted, delivered),
        "lifecycle_stages": {s: get("engage_customers_by_stage", stage=s) for s in STAGES},
        "quadrants": {q: get("engage_customers_by_quadrant", quadrant=q) for q in QUADRANTS},
        "score_bands": {b: get("engage_customers_by_score_band", band=b) for b in SCORE_BANDS},
        "ritual_decisions": decisions,
        "ritual_lift": lift,
        "lift": ritual_lift(outcome, rituals),
        "lift_by_rules_version": by_version,
        "pipeline": {
            "consumed": get("engage_events_consumed_total"),
            "processed": m.by("engage_events_processed_total", "outcome"),
            "dead_letters": {r: get("engage_dlq_messages_total", reason=r) for r in REASONS},
            "duplicates": get("engage_duplicate_events_total"),
            "late_events": get("engage_late_events_total"),
            "end_to_end_lag_seconds": {
                "p50": _quantile(lag_buckets, 0.5),
                "p99": _quantile(lag_buckets, 0.99),
            },
            "watermark_lag_seconds_max": max(watermark) if watermark else None,
            "rebalances": get("engage_rebalances_total"),
        },
        "consent_opt_outs": opt_outs,
        "suppressions": {
            reason: get("engage_ritual_suppressions_total", reason=reason)
            for reason in SUPPRESSION_REASONS
        },
    }
