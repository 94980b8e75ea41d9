"""KPI components: counted per event, segment snapshots, and the ratios /kpis derives."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from schemas.events import EVENT_ADAPTER
from stream.core.rules import DEFAULT_RULES
from stream.core.state import MS_PER_DAY, fold, new_state, to_ms
from stream.telemetry.kpis import Kpis, snapshot, summary
from tests.factory import T0, event


def parse(evt: dict) -> object:
    return EVENT_ADAPTER.validate_python(evt)


def test_event_counters_and_ratios() -> None:
    registry = CollectorRegistry()
    k = Kpis(registry)
    for score in (10, 9, 8, 3):
        k.count(parse(event("survey", survey="nps", score=score)))
    for score in (5, 4, 2):
        k.count(parse(event("survey", survey="csat", score=score)))
    for score in (6, 3):
        k.count(parse(event("survey", survey="ces", score=score)))
    k.count(parse(event("support_contact", status="opened", complaint=True)))
    k.count(parse(event("support_contact", status="resolved", complaint=True)), True)
    k.count(parse(event("support_contact", status="resolved", complaint=True)), False)
    k.count(parse(event("review", rating=5)))
    k.count(parse(event("purchase", amount="12.50", currency="EUR")))
    s = summary(registry)
    assert s["nps"] == 25.0  # (2 promoters - 1 detractor) / 4
    assert s["csat_percent"] == 66.6667
    assert s["ces_mean"] == 4.5
    assert (s["complaints_opened"], s["complaints_resolved"]) == (1.0, 2.0)
    assert s["first_contact_resolution_ratio"] == 0.5
    assert s["reviews_by_rating"]["5"] == 1.0
    assert s["orders"] == 1.0


def test_segment_snapshot() -> None:
    clock = to_ms(T0) + 10 * MS_PER_DAY
    fresh = fold(new_state("a"), parse(event("click", "a", 9.5)))
    old = fold(new_state("b"), parse(event("click", "b", -100)))
    snap = snapshot([fresh, old], clock, DEFAULT_RULES)
    assert snap.customers == 2
    assert dict(snap.active) == {"1d": 1, "7d": 1, "30d": 1}
    assert dict(snap.stages) == {"new": 1, "dormant": 1}
    assert sum(snap.bands.values()) == 2
    assert sum(snap.quadrants.values()) == 2


def test_consent_opt_outs_by_scope_and_source_and_suppressions_by_reason() -> None:
    registry = CollectorRegistry()
    k = Kpis(registry)
    k.count(parse(event("consent", scope="marketing", status="opted_out")))  # unsubscribe link
    k.count(parse(event("consent", scope="marketing", status="opted_out")))
    k.count(parse(event("consent", scope="all", status="opted_out", source=None)))
    k.count(parse(event("consent", scope="all", status="opted_in", source="preference_center")))
    k.count_decisions(
        [
            {"status": "suppressed", "reason": "no_consent"},
            {"status": "suppressed", "reason": "frequency_cap"},
            {"status": "delivered", "reason": "eligible"},
        ]
    )
    s = summary(registry)
    assert s["consent_opt_outs"]["marketing"]["unsubscribe_link"] == 2.0
    assert s["consent_opt_outs"]["all"]["unspecified"] == 1.0
    assert s["consent_opt_outs"]["all"]["preference_center"] == 0.0
    assert s["suppressions"] == {"no_consent": 1.0, "once_per_window": 0.0, "frequency_cap": 1.0}
