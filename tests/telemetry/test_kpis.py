"""KPI components: counted per event, segment snapshots, and the ratios /kpis derives."""

from __future__ import annotations

from decimal import Decimal

import msgspec
from prometheus_client import CollectorRegistry, generate_latest

from schemas.events import EVENT_ADAPTER
from schemas.nudges import Decision as DecisionSchema
from stream.core.decision import Decision
from stream.core.profile import clv_estimate
from stream.core.rules import DEFAULT_RULES
from stream.core.state import MS_PER_DAY, fold, new_state, to_ms
from stream.telemetry.kpis import Kpis, snapshot, summary
from stream.telemetry.metrics import PipelineMetrics
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


def test_click_components_prompted_share_social_and_dwell() -> None:
    registry = CollectorRegistry()
    k = Kpis(registry)
    k.count(parse(event("click", action="page_view", dwell_ms=4000)))
    k.count(parse(event("click", action="share", dwell_ms=1500)))
    k.count(parse(event("click", action="comment")))
    k.count(parse(event("click", action="email_click", nudge_id="n-1", dwell_ms=500)))
    s = summary(registry)
    assert s["interactions"]["clicks"] == 4
    assert (s["interactions"]["prompted"], s["interactions"]["unprompted"]) == (1, 3)
    assert s["interactions"]["prompted_share"] == 0.25
    assert s["social_engagement"] == {"share": 1, "comment": 1}
    assert s["dwell_seconds_mean"] == 2.0  # (4 + 1.5 + 0.5) / 3
    body = generate_latest(registry).decode()
    assert 'engage_clicks_total{action="share",prompted="false"} 1.0' in body
    assert "engage_click_dwell_seconds_sum 6.0" in body
    assert "engage_click_dwell_seconds_count 3.0" in body


def test_retention_cohorts_at_the_clock() -> None:
    """Customers at the window's end minus those acquired in it, over those at its start."""
    clock = to_ms(T0) + 100 * MS_PER_DAY

    def customer(cid: str, first: float, last: float) -> object:
        state = fold(new_state(cid), parse(event("click", cid, first)))
        return fold(state, parse(event("click", cid, last)))

    states = [
        customer("a", 0, 99),  # known for 100 days, active yesterday: retained in every window
        customer("b", 0, 80),  # active 20 days ago: retained over 30 and 90 days, not 7
        customer("c", 0, 5),  # gone 95 days ago: churned in every window
        customer("d", 85, 95),  # first seen 15 days ago: in the 7-day cohort only
        customer("e", 97, 98),  # acquired within the last 7 days
    ]
    snap = snapshot(states, clock, DEFAULT_RULES)
    assert dict(snap.cohort) == {"7d": 4, "30d": 3, "90d": 3}
    assert dict(snap.retained) == {"7d": 2, "30d": 2, "90d": 2}
    assert dict(snap.acquired) == {"7d": 1, "30d": 2, "90d": 2}
    registry = CollectorRegistry()
    Kpis(registry).publish(snap)
    retention = summary(registry)["retention"]
    assert retention["7d"]["retention_rate"] == 0.5 and retention["7d"]["churn_rate"] == 0.5
    assert retention["90d"]["retention_rate"] == round(2 / 3, 4)


def test_clv_sum_and_bands_by_currency() -> None:
    clock = to_ms(T0) + 365 * MS_PER_DAY

    def buyer(cid: str, *amounts: str, currency: str = "EUR") -> object:
        state = new_state(cid)
        for i, amount in enumerate(amounts):
            evt = event("purchase", cid, i * 30, amount=amount, currency=currency)
            state = fold(state, parse(evt))
        return state

    states = [
        buyer("a", "100.00", "100.00"),  # 2 orders in a year of 100: 100 x 2/yr x 3 = 600
        buyer("b", "10.00"),  # 1 order a year ago: 10 x 1 x 3 = 30
        buyer("c", "2000.00", currency="USD"),  # 6000
        fold(new_state("d"), parse(event("click", "d"))),  # no purchase: no CLV
    ]
    snap = snapshot(states, clock, DEFAULT_RULES)
    assert snap.clv == {"EUR": 630.0, "USD": 6000.0}
    # The same as the profiles' own clv_estimate.
    assert sum(clv_estimate(s, clock, DEFAULT_RULES) for s in states[:2]) == Decimal("630.00")
    assert dict(snap.clv_bands) == {
        ("EUR", "500-1000"): 1,
        ("EUR", "0-100"): 1,
        ("USD", "5000+"): 1,
    }
    registry = CollectorRegistry()
    k = Kpis(registry)
    k.publish(snap)
    clv = summary(registry)["clv"]
    assert clv["EUR"]["sum"] == 630.0 and clv["EUR"]["mean"] == 315.0
    assert clv["USD"]["bands"]["5000+"] == 1
    # A currency stays exported (at 0) when its customers are gone: series never vanish.
    k.publish(snapshot([], clock, DEFAULT_RULES))
    body = generate_latest(registry).decode()
    assert 'engage_clv_estimate{currency="USD"} 0.0' in body


def test_lift_intervals_in_the_summary() -> None:
    registry = CollectorRegistry()
    metrics = PipelineMetrics(registry)
    Kpis(registry)
    # the same counts split over two rules versions: 40/30 + 30/26 treated, 50/30 + 30/18 held out
    for version, arm, decided, came_back in (
        ("v1", "treated", 40, 30), ("v2", "treated", 30, 26),
        ("v1", "held_out", 50, 30), ("v2", "held_out", 30, 18),
    ):  # fmt: skip
        metrics.outcome_child("we_noticed", arm, "decided", version).inc(decided)
        metrics.outcome_child("we_noticed", arm, "came_back", version).inc(came_back)
    metrics.outcome_child("we_noticed", "treated", "clicked", "v1").inc(14)
    s = summary(registry)
    by_version = s["lift_by_rules_version"]
    assert by_version["v2"]["we_noticed"]["came_back"]["treated"] == 30
    assert by_version["v2"]["we_noticed"]["came_back"]["held_out_successes"] == 18
    assert by_version["v1"]["we_noticed"]["came_back"]["treated"] == 40
    came_back = s["lift"]["we_noticed"]["came_back"]
    assert came_back["difference"] == {"estimate": 0.2, "lower": 0.0524, "upper": 0.3339}
    assert came_back["verdict"] == "significant"
    assert came_back["treated"] == 70 and came_back["held_out_successes"] == 48
    assert s["lift"]["we_noticed"]["purchased"]["verdict"] == "not yet: no difference observed"
    assert s["nudge_click_through"]["we_noticed"]["treated"]["rate"] == 0.2
    assert s["ritual_lift"]["we_noticed"]["came_back"] == round((56 / 70) / (48 / 80), 4)


def test_consent_opt_outs_by_scope_and_source_and_suppressions_by_reason() -> None:
    registry = CollectorRegistry()
    k = Kpis(registry)
    k.count(parse(event("consent", scope="marketing", status="opted_out")))  # unsubscribe link
    k.count(parse(event("consent", scope="marketing", status="opted_out")))
    k.count(parse(event("consent", scope="all", status="opted_out", source=None)))
    k.count(parse(event("consent", scope="all", status="opted_in", source="preference_center")))
    example = DecisionSchema.model_json_schema()["examples"][0]
    k.count_decisions(
        msgspec.convert({**example, "status": status, "reason": reason}, Decision)
        for status, reason in (
            ("suppressed", "no_consent"),
            ("suppressed", "frequency_cap"),
            ("delivered", "eligible"),
        )
    )
    s = summary(registry)
    assert s["consent_opt_outs"]["marketing"]["unsubscribe_link"] == 2.0
    assert s["consent_opt_outs"]["all"]["unspecified"] == 1.0
    assert s["consent_opt_outs"]["all"]["preference_center"] == 0.0
    assert s["suppressions"] == {"no_consent": 1.0, "once_per_window": 0.0, "frequency_cap": 1.0}


def test_the_demo_reads_the_kpis_samples_the_same_way_from_metrics_text() -> None:
    """One `Samples` serves /kpis (a registry) and the demo (the /metrics text): the same
    counts read either way give the same sums and the same lift."""
    from stream.telemetry.samples import Samples
    from stream.tools.demo import arm_rates, lifts

    registry = CollectorRegistry()
    metrics = PipelineMetrics(registry)
    Kpis(registry)
    for arm, decided, came_back in (("treated", 40, 30), ("held_out", 50, 30)):
        metrics.outcome_child("we_noticed", arm, "decided", "v1").inc(decided)
        metrics.outcome_child("we_noticed", arm, "came_back", "v1").inc(came_back)
    metrics.dlq_child("malformed_json").inc(3)
    from_registry = Samples.of_registry(registry)
    from_text = Samples.of_text(generate_latest(registry).decode())
    for samples in (from_registry, from_text):
        assert samples.get("engage_dlq_messages_total") == 3
        assert samples.by("engage_dlq_messages_total", "reason")["malformed_json"] == 3
        assert samples.outcome("we_noticed", "treated", "came_back") == 30
        assert arm_rates(samples, "we_noticed")["held_out"]["came_back"] == 0.6
    assert lifts(from_text) == summary(registry)["lift"] == lifts(from_registry)
    assert Samples.of_text("").get("engage_events_consumed_total") == 0
