"""The synthetic traffic emitter (`engage emit`): shapes, rules, reproducibility, bad input,
and the pure reaction logic of the closed loop. No Kafka needed."""

from __future__ import annotations

import asyncio
import itertools
import math
import random
import re
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.events import TOPIC_SUFFIX
from schemas.nudges import RITUALS
from stream.kafka_client import KafkaOptions
from stream.tools.emitter import cli
from stream.tools.emitter.actions import Kind, Planned
from stream.tools.emitter.faults import FILE_REASONS, REASONS, FaultMixer
from stream.tools.emitter.personas import (
    CES_AFTER_TICKET_INVITE,
    CSAT_AFTER_TICKET_INVITE,
    NPS_INVITES_PER_DAY,
    PERSONA_BY_NAME,
    PERSONAS,
    Persona,
)
from stream.tools.emitter.reactions import CustomerView, Nudge, react
from stream.tools.emitter.report import ProgressBar, Stats
from stream.tools.emitter.runner import run_file, run_kafka
from stream.tools.emitter.simulation import DAY, Customer, SimConfig, Simulation, allocate, to_ms
from stream.tools.emitter.sink import FileSink
from stream.tools.emitter.wire import Message, message, topic

START = datetime(2026, 1, 1, tzinfo=UTC)
BIG_CUSTOMERS, BIG_DAYS, BIG_SEED = 300, 120, 7

# --------------------------------------------------------------------------- SPEC §1 rules

CLICK_ACTIONS = {
    "page_view", "link_click", "share", "comment", "email_open", "email_click", "search",
}  # fmt: skip
LOYALTY_ACTIONS = {
    "joined", "points_earned", "points_redeemed", "tier_changed", "referral_sent",
    "referral_converted",
}  # fmt: skip
TIERS = ("bronze", "silver", "gold", "platinum")
SURVEY_RANGES = {"nps": (0, 10), "csat": (1, 5), "ces": (1, 7)}
COMMON = {"event_id", "customer_id", "type", "occurred_at", "tz", "schema_version"}
OWN_FIELDS = {
    "click": {"action", "url", "session_id", "nudge_id", "dwell_ms"},
    "purchase": {"order_id", "amount", "currency", "items"},
    "review": {"review_id", "order_id", "rating", "channel", "text"},
    "support_contact": {
        "contact_id", "ticket_id", "channel", "status", "complaint", "order_id", "reason",
    },
    "survey": {"survey", "score", "order_id", "ticket_id"},
    "loyalty": {"action", "points", "tier"},
    "consent": {"scope", "status", "source"},
}  # fmt: skip
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")


def is_id(value: Any) -> bool:
    return isinstance(value, str) and 1 <= len(value) <= 128


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_time(value: Any) -> datetime | None:
    """SPEC §1 occurred_at: RFC 3339 with an offset (None when it is not)."""
    if not isinstance(value, str) or not RFC3339.match(value):
        return None
    moment = datetime.fromisoformat(value)
    return moment if moment.tzinfo is not None else None


def violations(ev: Any) -> list[str]:
    """Every SPEC §1 rule the event breaks (empty: valid). Unknown fields count as errors:
    the emitter should write exactly the fields of the spec."""
    if not isinstance(ev, dict):
        return ["not an object"]
    errors: list[str] = []
    kind = ev.get("type")
    if kind not in OWN_FIELDS:
        return [f"unknown type {kind!r}"]
    if extra := set(ev) - COMMON - OWN_FIELDS[kind]:
        errors.append(f"unexpected fields {sorted(extra)}")
    for name in ("event_id", "customer_id"):
        if not is_id(ev.get(name)):
            errors.append(f"{name} must be a string of 1..128")
    if parse_time(ev.get("occurred_at")) is None:
        errors.append("occurred_at must be RFC 3339 with an offset")
    tz = ev.get("tz")
    if tz is not None:
        try:
            ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError, TypeError):
            errors.append("tz must be an IANA zone")
    if ev.get("schema_version", 1) != 1:
        errors.append("schema_version must be 1")

    def need(cond: bool, msg: str) -> None:
        if not cond:
            errors.append(msg)

    def optional_id(name: str) -> None:
        need(name not in ev or is_id(ev[name]), f"{name} must be an id")

    if kind == "click":
        need(ev.get("action") in CLICK_ACTIONS, "click action")
        need(isinstance(ev.get("url", ""), str), "url is text")
        optional_id("session_id")
        optional_id("nudge_id")
        need("dwell_ms" not in ev or (is_int(ev["dwell_ms"]) and ev["dwell_ms"] >= 0), "dwell")
    elif kind == "purchase":
        need(is_id(ev.get("order_id")), "order_id")
        try:
            amount = Decimal(str(ev.get("amount")))
            need(amount.is_finite() and amount >= 0, "amount >= 0")
        except InvalidOperation:
            errors.append("amount must be a decimal")
        need(isinstance(ev.get("currency"), str) and bool(re.fullmatch(r"[A-Z]{3}",
             ev["currency"])), "currency is ISO 4217")  # fmt: skip
        need(is_int(ev.get("items")) and ev["items"] >= 1, "items >= 1")
    elif kind == "review":
        need(is_id(ev.get("review_id")), "review_id")
        optional_id("order_id")
        need(is_int(ev.get("rating")) and 1 <= ev["rating"] <= 5, "rating 1..5")
        need(ev.get("channel") in {"site", "third_party", "social"}, "review channel")
        need(isinstance(ev.get("text", ""), str), "text is text")
    elif kind == "support_contact":
        need(is_id(ev.get("contact_id")) and is_id(ev.get("ticket_id")), "contact/ticket id")
        need(ev.get("channel") in {"email", "chat", "phone", "social", "in_store"}, "channel")
        need(ev.get("status") in {"opened", "resolved", "reopened"}, "status")
        need(isinstance(ev.get("complaint"), bool), "complaint is a bool")
        optional_id("order_id")
        need(isinstance(ev.get("reason", ""), str), "reason is text")
    elif kind == "survey":
        survey = ev.get("survey")
        need(survey in SURVEY_RANGES, "survey kind")
        if survey in SURVEY_RANGES:
            low, high = SURVEY_RANGES[survey]
            need(is_int(ev.get("score")) and low <= ev["score"] <= high, f"{survey} range")
        optional_id("order_id")
        optional_id("ticket_id")
    elif kind == "loyalty":
        need(ev.get("action") in LOYALTY_ACTIONS, "loyalty action")
        need("points" not in ev or (is_int(ev["points"]) and ev["points"] >= 0), "points")
        need("tier" not in ev or ev["tier"] in TIERS, "tier")
        need(ev.get("action") != "tier_changed" or "tier" in ev, "tier_changed names a tier")
    elif kind == "consent":
        need(ev.get("scope") in {"marketing", "all"}, "consent scope")
        need(ev.get("status") in {"opted_in", "opted_out"}, "consent status")
        need(
            ev.get("source")
            in {None, "preference_center", "unsubscribe_link", "support", "import"},
            "consent source",
        )
    return errors


def check_stream(lines: list[bytes]) -> list[dict[str, Any]]:
    """Validate a whole run: each line, time order, unique event ids."""
    events = [msgspec.json.decode(line) for line in lines]
    ids: set[str] = set()
    last: datetime | None = None
    for ev in events:
        assert violations(ev) == [], (violations(ev), ev)
        assert ev["event_id"] not in ids, "event_id repeated"
        ids.add(ev["event_id"])
        moment = parse_time(ev["occurred_at"])
        assert moment is not None
        assert last is None or moment >= last, "events out of time order"
        last = moment
    return events


# ---------------------------------------------------------------------------------- runs


def file_run(
    path: Path, customers: int, days: float, seed: int | str, bad: float = 0.0
) -> tuple[Simulation, bytes, Stats]:
    sim = Simulation(SimConfig(customers, days, START, seed))
    stats = Stats(seed=seed)
    bar = ProgressBar(sim.start_ms, sim.end_ms, enabled=False, console=None)  # type: ignore[arg-type]
    sink = FileSink(str(path))
    try:
        run_file(sim, sink, FaultMixer(seed, bad, file_mode=True), stats, bar)
    finally:
        sink.close()
    return sim, path.read_bytes(), stats


class BigRun:
    """The seeded reference run the statistics tests read (built once per module)."""

    def __init__(self, path: Path) -> None:
        self.sim, raw, self.stats = file_run(path, BIG_CUSTOMERS, BIG_DAYS, BIG_SEED)
        self.lines = raw.splitlines()
        self.events = check_stream(self.lines)
        self.customers: dict[str, Customer] = {c.customer_id: c for c in self.sim.customers}
        self.by_customer: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for ev in self.events:
            ev["_ms"] = to_ms(datetime.fromisoformat(ev["occurred_at"]))
            self.by_customer[ev["customer_id"]].append(ev)

    def persona(self, ev: dict[str, Any]) -> str:
        return self.customers[ev["customer_id"]].persona.name

    def of(self, persona: str, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == kind and self.persona(e) == persona]

    def silent_from(self, c: Customer, t: int) -> int:
        """The first instant at or after t when the customer is silent (or the end)."""
        stops = [self.sim.end_ms]
        if c.churn_ms is not None and c.churn_ms >= t:
            stops.append(c.churn_ms)
        if c.gap_ms is not None and c.gap_ms[0] >= t:
            stops.append(c.gap_ms[0])
        return min(stops)

    def active_days(self, c: Customer) -> float:
        """Customer-days of activity: after arrival, before churn, outside a win-back gap."""
        begin, end = c.arrival_ms, self.sim.end_ms
        if c.churn_ms is not None:
            end = min(end, c.churn_ms)
        span = max(0, end - begin)
        if c.gap_ms is not None:
            g0, g1 = max(c.gap_ms[0], begin), min(c.gap_ms[1], end)
            span -= max(0, g1 - g0)
        return span / DAY


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> BigRun:
    return BigRun(tmp_path_factory.mktemp("emit") / "big.jsonl")


def within(observed: float, expected: float, sd: float, *, floor: float = 0.0) -> bool:
    """|observed - expected| within 4 standard deviations (or `floor`, for tiny samples)."""
    return abs(observed - expected) <= max(4 * sd, floor)


def assert_share(hits: int, n: int, p: float, what: str) -> None:
    assert n >= 20, f"{what}: too few samples ({n}) to compare"
    sd = math.sqrt(p * (1 - p) / n)
    assert within(hits / n, p, sd, floor=0.03), f"{what}: {hits}/{n}={hits / n:.3f} vs {p}"


# ------------------------------------------------------------------- the reference run


def test_persona_table_is_consistent() -> None:
    assert abs(sum(p.share for p in PERSONAS) - 1) < 1e-9
    for p in PERSONAS:
        assert len(p.ratings) == 5 and len(p.nps) == 11 and len(p.csat) == 5 and len(p.ces) == 7
        assert p.clicks_per_session >= 1 and p.items_per_order >= 1
        assert p.gap_days is None or p.gap_days[0] > 30  # a win-back's gap is > 30 days
    assert allocate(300, [p.share for p in PERSONAS]) == [45, 75, 36, 54, 45, 45]


def test_every_event_validates_in_time_order_with_unique_ids(big: BigRun) -> None:
    # check_stream ran in the fixture; here the sizes and the wire details.
    assert len(big.events) > 50_000
    assert big.stats.events == len(big.events)
    for line, ev in zip(big.lines[:2000], big.events[:2000], strict=True):
        assert line == message(0, ev["type"], ev["customer_id"],
                               {k: v for k, v in ev.items() if k != "_ms"}).value  # fmt: skip
        assert ev["occurred_at"].endswith("Z") and len(ev["occurred_at"]) == 24  # ms precision


def test_every_type_action_status_and_tier_is_present(big: BigRun) -> None:
    assert {e["type"] for e in big.events} == set(OWN_FIELDS)
    kinds = Counter((e["type"], e.get("action") or e.get("status") or e.get("survey"))
                    for e in big.events)  # fmt: skip
    for action in CLICK_ACTIONS:
        assert kinds["click", action] > 0, action
    for action in LOYALTY_ACTIONS:
        assert kinds["loyalty", action] > 0, action
    for status in ("opened", "resolved", "reopened"):
        assert kinds["support_contact", status] > 0, status
    for survey in SURVEY_RANGES:
        assert kinds["survey", survey] > 0, survey
    tiers = {e["tier"] for e in big.events if e.get("action") == "tier_changed"}
    assert {"silver", "gold"} <= tiers
    assert len({e["tz"] for e in big.events}) >= 10
    assert {"EUR", "USD", "GBP"} <= {e["currency"] for e in big.events if "currency" in e}
    # Clicks of a session share a session_id and carry a dwell time.
    sessions = Counter(e["session_id"] for e in big.events if "session_id" in e)
    assert sum(sessions.values()) / len(sessions) > 2
    # Amounts are decimal strings with the currency's minor units.
    for e in big.events:
        if e["type"] == "purchase":
            digits = 0 if e["currency"] == "JPY" else 2
            assert re.fullmatch(r"\d+" + (r"\.\d\d" if digits else ""), e["amount"]), e
    # No prompted interactions without nudges.
    assert not any("nudge_id" in e for e in big.events)


def test_purchase_rates_match_the_persona_table(big: BigRun) -> None:
    counts = Counter(big.persona(e) for e in big.events if e["type"] == "purchase")
    for p in PERSONAS:
        members = [c for c in big.sim.customers if c.persona is p]
        expected = sum(big.active_days(c) * p.purchases_per_day * c.activity for c in members)
        assert within(counts[p.name], expected, math.sqrt(expected), floor=0.1 * expected), (
            p.name, counts[p.name], expected,
        )  # fmt: skip
        # The activity multipliers average out: the table's rate holds per persona too.
        days = sum(big.active_days(c) for c in members)
        assert abs(counts[p.name] / days - p.purchases_per_day) <= 0.3 * p.purchases_per_day
    assert counts["advocate"] / 45 > counts["critic"] / 36  # advocates buy more


def test_review_response_rates_and_ratings(big: BigRun) -> None:
    for p in PERSONAS:
        orders, reviewed = 0, 0
        reviews = {e["order_id"] for e in big.of(p.name, "review")}
        for e in big.of(p.name, "purchase"):
            c = big.customers[e["customer_id"]]
            if e["_ms"] + 15 * DAY <= big.silent_from(c, e["_ms"]):  # a review had time to come
                orders += 1
                reviewed += e["order_id"] in reviews
        assert_share(reviewed, orders, p.review_rate, f"{p.name} review rate")
    assert {e["rating"] for e in big.of("advocate", "review")} <= {4, 5}
    assert {e["rating"] for e in big.of("critic", "review")} <= {1, 2, 3}
    critic = Counter(e["rating"] for e in big.of("critic", "review"))
    assert critic[1] + critic[2] > 0.8 * sum(critic.values())


def test_nps_distribution_and_response_per_persona(big: BigRun) -> None:
    for p in PERSONAS:
        scores = [e["score"] for e in big.of(p.name, "survey") if e["survey"] == "nps"]
        expected_mean = sum(i * w for i, w in enumerate(p.nps)) / sum(p.nps)
        if len(scores) >= 15:  # churners answer rarely and are active briefly: count only
            assert abs(sum(scores) / len(scores) - expected_mean) < 0.8, p.name
        else:
            assert p.name == "churner", p.name
        days = sum(big.active_days(c) for c in big.sim.customers if c.persona is p)
        expected = days * NPS_INVITES_PER_DAY * p.survey_response
        assert within(len(scores), expected, math.sqrt(expected), floor=0.25 * expected), p.name
    critics = [e["score"] for e in big.of("critic", "survey") if e["survey"] == "nps"]
    advocates = [e["score"] for e in big.of("advocate", "survey") if e["survey"] == "nps"]
    assert max(critics) <= 6 and sum(critics) / len(critics) <= 6
    assert min(advocates) >= 9 and sum(advocates) / len(advocates) >= 9
    csat = defaultdict(list)
    for e in big.events:
        if e["type"] == "survey" and e["survey"] in ("csat", "ces"):
            csat[big.persona(e), e["survey"]].append(e["score"])
    assert sum(csat["critic", "csat"]) / len(csat["critic", "csat"]) < 3
    assert sum(csat["advocate", "csat"]) / len(csat["advocate", "csat"]) > 4


def tickets_of(big: BigRun, persona: str) -> dict[str, list[dict[str, Any]]]:
    tickets: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for e in big.of(persona, "support_contact"):
        tickets[e["ticket_id"]].append(e)
    return tickets


def test_complaints_and_first_contact_resolution(big: BigRun) -> None:
    for p in PERSONAS:
        tickets = tickets_of(big, p.name)
        if len(tickets) < 20:
            continue  # too few tickets in this persona to measure
        complaints = sum(contacts[0]["complaint"] for contacts in tickets.values())
        assert_share(complaints, len(tickets), p.complaint_rate, f"{p.name} complaints")
        fcr = sum(contacts[0]["status"] == "resolved" for contacts in tickets.values())
        assert_share(fcr, len(tickets), p.first_contact_resolution, f"{p.name} FCR")
        for contacts in tickets.values():
            statuses = [c["status"] for c in contacts]
            # A ticket's life: resolved at once, or opened -> resolved [-> reopened -> resolved].
            assert statuses in (
                ["resolved"], ["opened"], ["opened", "resolved"],
                ["opened", "resolved", "reopened"], ["opened", "resolved", "reopened", "resolved"],
            ), statuses  # fmt: skip
            assert len({c["complaint"] for c in contacts}) == 1
    critic = tickets_of(big, "critic")
    assert sum(t[0]["complaint"] for t in critic.values()) / len(critic) > 0.5
    # Surveys after tickets refer to the ticket.
    ticket_surveys = [e for e in big.events if e["type"] == "survey" and "ticket_id" in e]
    assert ticket_surveys and CSAT_AFTER_TICKET_INVITE > 0 and CES_AFTER_TICKET_INVITE > 0


def test_newcomers_are_first_seen_during_the_run(big: BigRun) -> None:
    newcomers = [c for c in big.sim.customers if c.persona.name == "newcomer"]
    seen = [c for c in newcomers if big.by_customer[c.customer_id]]
    assert len(seen) == len(newcomers)
    for c in seen:
        first = big.by_customer[c.customer_id][0]
        assert first["_ms"] == c.arrival_ms >= big.sim.start_ms + 0.05 * BIG_DAYS * DAY
    # Existing customers start right away.
    others = [c for c in big.sim.customers if c.persona.name in ("advocate", "critic")]
    firsts = [big.by_customer[c.customer_id][0]["_ms"] for c in others]
    assert max(firsts) - big.sim.start_ms < 10 * DAY


def test_churners_fall_silent_after_their_churn_point(big: BigRun) -> None:
    churners = [c for c in big.sim.customers if c.persona.name == "churner"]
    churned = [c for c in churners if c.churn_ms is not None and c.churn_ms < big.sim.end_ms]
    assert len(churned) == len(churners)  # 14..60 days: all churn within 120 days
    for c in churned:
        events = big.by_customer[c.customer_id]
        assert events and events[0]["_ms"] < c.churn_ms
        assert all(e["_ms"] < c.churn_ms for e in events), c.customer_id
        assert big.sim.end_ms - events[-1]["_ms"] > 60 * DAY  # long silence: dormant


def test_winbacks_lapse_more_than_30_days_then_return(big: BigRun) -> None:
    winbacks = [c for c in big.sim.customers if c.persona.name == "winback"]
    returned = 0
    for c in winbacks:
        assert c.gap_ms is not None
        events = big.by_customer[c.customer_id]
        times = [e["_ms"] for e in events]
        assert not any(c.gap_ms[0] <= t < c.gap_ms[1] for t in times)
        if c.gap_ms[1] < big.sim.end_ms:
            returned += 1
            longest = max(b - a for a, b in itertools.pairwise(times))
            assert longest > 30 * DAY
            assert times[-1] >= c.gap_ms[1]  # came back
            assert c.gap_ms[1] in times  # the return visit
    assert returned >= 0.8 * len(winbacks)


# ------------------------------------------------------------------- reproducibility


def run_cli(tmp_path: Path, name: str, *extra: str) -> bytes:
    out = tmp_path / name
    argv = ["--customers", "40", "--days", "20", "--start", "2026-01-01T00:00:00Z",
            "--out", str(out), "--quiet", *extra]  # fmt: skip
    assert cli.main(argv) == 0
    return out.read_bytes()


def test_same_seed_same_bytes_different_seed_different_bytes(tmp_path: Path) -> None:
    a = run_cli(tmp_path, "a.jsonl", "--seed", "42")
    b = run_cli(tmp_path, "b.jsonl", "--seed", "42")
    c = run_cli(tmp_path, "c.jsonl", "--seed", "43")
    assert a == b
    assert a != c
    assert len(a.splitlines()) > 1000
    check_stream(a.splitlines())
    check_stream(c.splitlines())


def test_bad_messages_do_not_change_the_good_traffic(tmp_path: Path) -> None:
    clean = run_cli(tmp_path, "clean.jsonl", "--seed", "5")
    mixed = run_cli(tmp_path, "mixed.jsonl", "--seed", "5", "--bad-fraction", "0.05")
    good = [
        line
        for line in mixed.splitlines()
        if len(line) <= 64 * 1024 and not violations(safe_decode(line))
    ]
    assert b"\n".join(good) + b"\n" == clean
    assert len(mixed.splitlines()) > len(clean.splitlines())


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    customers=st.integers(1, 12),
    days=st.floats(0.5, 25),
    seed=st.integers(0, 2**32),
    start=st.datetimes(datetime(2000, 1, 1), datetime(2035, 1, 1), timezones=st.just(UTC)),
)
def test_any_small_run_is_valid(customers: int, days: float, seed: int, start: datetime) -> None:
    sim = Simulation(SimConfig(customers, days, start, seed))
    lines = [message(i.at_ms, i.type, i.customer_id, i.event).value for i in sim]
    events = check_stream(lines)
    for ev in events:
        assert sim.start_ms <= to_ms(datetime.fromisoformat(ev["occurred_at"])) < sim.end_ms


# ------------------------------------------------------------------------ bad messages


def safe_decode(value: bytes) -> Any:
    try:
        return msgspec.json.decode(value)
    except msgspec.DecodeError:
        return None


def classify(msg: Message, wall_now: datetime) -> str | None:
    """Which SPEC §1 DLQ reason a message earns (None: accepted), by the test's own rules."""
    if len(msg.value) > 64 * 1024:
        return "oversized"
    ev = safe_decode(msg.value)
    if ev is None:
        return "malformed_json"
    if isinstance(ev, dict) and ev.get("type") not in OWN_FIELDS and "type" in ev:
        return "unknown_type"
    if violations(ev):
        return "schema_violation"
    if msg.key != ev["customer_id"].encode():
        return "key_mismatch"
    moment = parse_time(ev["occurred_at"])
    assert moment is not None
    if moment - wall_now > timedelta(minutes=5):
        return "future_timestamp"
    if msg.reason == "wrong_partition":  # a valid value: the Kafka sink picks the wrong partition
        return "wrong_partition"
    return None


def mixed_messages(fraction: float, *, file_mode: bool, wall: datetime) -> list[Message]:
    sim = Simulation(SimConfig(60, 30, START, 3))
    mixer = FaultMixer(3, fraction, file_mode=file_mode, wall_now=lambda: wall)
    out: list[Message] = []
    for item in sim:
        good = message(item.at_ms, item.type, item.customer_id, item.event)
        out += mixer.before(good, item.event)
        out.append(good)
    return out


@pytest.mark.parametrize("file_mode", [False, True])
def test_bad_fraction_every_reason_in_proportion(file_mode: bool) -> None:
    wall = START + timedelta(days=40)  # after the run: only future_timestamp is ahead of it
    fraction = 0.06
    messages = mixed_messages(fraction, file_mode=file_mode, wall=wall)
    bad = [m for m in messages if m.reason is not None]
    assert_share(len(bad), len(messages), fraction, "bad fraction")
    reasons = FILE_REASONS if file_mode else REASONS
    by_reason = Counter(m.reason for m in bad)
    assert set(by_reason) == set(reasons)
    for reason in reasons:
        assert_share(by_reason[reason], len(bad), 1 / len(reasons), reason)
    for m in messages:
        assert classify(m, wall) == m.reason, (m.reason, m.value[:200])
        assert m.type in TOPIC_SUFFIX
        if file_mode:
            assert b"\n" not in m.value  # one message per line


def test_bad_messages_agree_with_the_processor_ingest() -> None:
    """Cross-check with the worker's own acceptance rules, where that module exists."""
    ingest = pytest.importorskip("stream.core.ingest")
    wall = START + timedelta(days=40)
    from stream.core.partitioning import expected_partition

    for m in mixed_messages(0.1, file_mode=False, wall=wall):
        home = expected_partition(m.key, 8)
        partition = (home + 1) % 8 if m.reason == "wrong_partition" else home  # as KafkaSink
        out = ingest.accept(
            m.key, m.value, wall, ingest.Limits(), partition=partition, partitions=8
        )
        got = out.reason if isinstance(out, ingest.Rejection) else None
        assert got == m.reason, (m.reason, got, m.value[:200])


def test_bad_fraction_is_bounded() -> None:
    with pytest.raises(ValueError):
        FaultMixer(1, 0.9, file_mode=True)


# --------------------------------------------------------------------------- reactions


def persona(name: str, **overrides: float) -> Persona:
    return replace(PERSONA_BY_NAME[name], **overrides)


ALWAYS = {"open_rate": 1.0, "click_rate": 1.0, "return_rate": 1.0, "resume_rate": 1.0,
          "checkin_review_rate": 1.0, "invite_referral_rate": 1.0,
          "anniversary_purchase_rate": 1.0, "recovery_csat_rate": 1.0}  # fmt: skip
T = to_ms(START + timedelta(days=50))


def nudge(ritual: str, customer: str = "cust-000001", **kw: Any) -> Nudge:
    fields: dict[str, Any] = {"nudge_id": "n" * 64, "decided_at_ms": T, "anchor": ""} | kw
    return Nudge(ritual=ritual, customer_id=customer, **fields)


def test_we_noticed_brings_a_lapsed_winback_back() -> None:
    view = CustomerView("cust-000001", persona("winback", **ALWAYS), silent=True)
    plan = react(view, nudge("we_noticed"), random.Random(1), now_ms=T)
    assert plan[0].kind is Kind.PROMPTED and plan[0].data["action"] == "email_open"
    assert plan[1].kind is Kind.PROMPTED and plan[1].data["action"] == "email_click"
    assert all(step.data.get("nudge_id") == "n" * 64 for step in plan[:2])
    kinds = [step.kind for step in plan]
    assert Kind.VISIT in kinds and Kind.RESUME in kinds
    assert all(step.at_ms > T for step in plan)
    assert [s.at_ms for s in plan] == sorted(s.at_ms for s in plan)


def test_nothing_happens_for_an_unknown_customer() -> None:
    assert react(None, nudge("we_noticed"), random.Random(1), now_ms=T) == []
    view = CustomerView("cust-000002", persona("winback", **ALWAYS))
    assert react(view, nudge("we_noticed"), random.Random(1), now_ms=T) == []  # not theirs
    # In the simulation: ignored, and the traffic is exactly what it would have been.
    a, b = Simulation(SimConfig(20, 10, START, 9)), Simulation(SimConfig(20, 10, START, 9))
    first = [next(iter(a)) for _ in range(50)]
    assert [next(iter(b)) for _ in range(50)] == first
    assert b.deliver(nudge("we_noticed", customer="someone-else", decided_at_ms=b.now_ms)) is None
    assert list(a) == list(b)


def test_not_delivered_and_unopened_nudges_cause_nothing() -> None:
    view = CustomerView("cust-000001", persona("advocate", **ALWAYS))
    held = nudge("referral_invite", status="held_out")
    assert react(view, held, random.Random(1), now_ms=T) == []
    shy = CustomerView("cust-000001", persona("advocate", open_rate=0.0))
    assert react(shy, nudge("referral_invite"), random.Random(1), now_ms=T) == []


def test_three_days_later_reviews_the_order_only_if_unreviewed() -> None:
    p = persona("quiet_loyalist", **ALWAYS)
    view = CustomerView("cust-000001", p, unreviewed_orders=("ord-1",))
    plan = react(view, nudge("three_days_later", anchor="ord-1"), random.Random(2), T)
    assert [s.data for s in plan if s.kind is Kind.REVIEW] == [{"order_id": "ord-1"}]
    done = CustomerView("cust-000001", p)
    plan = react(done, nudge("three_days_later", anchor="ord-1"), random.Random(2), T)
    assert Kind.REVIEW not in [s.kind for s in plan]


def test_service_recovery_resolves_open_tickets_or_asks_for_csat() -> None:
    p = persona("critic", **ALWAYS)
    view = CustomerView("cust-000001", p, open_tickets=("tkt-1", "tkt-2"))
    plan = react(view, nudge("service_recovery"), random.Random(3), T)
    follows = [s.data for s in plan if s.kind is Kind.FOLLOW]
    assert follows == [
        {"ticket_id": "tkt-1", "op": "resolve", "recovered": True},
        {"ticket_id": "tkt-2", "op": "resolve", "recovered": True},
    ]
    plan = react(CustomerView("cust-000001", p), nudge("service_recovery"), random.Random(3), T)
    assert [s.data for s in plan if s.kind is Kind.SURVEY] == [{"survey": "csat", "bias": 1}]


def test_referral_invite_joins_then_refers() -> None:
    view = CustomerView("cust-000001", persona("advocate", **ALWAYS), member=False)
    kinds = [s.kind for s in react(view, nudge("referral_invite"), random.Random(4), T)]
    assert kinds[-2:] == [Kind.JOIN, Kind.REFERRAL]


@settings(max_examples=200, deadline=None)
@given(
    ritual=st.sampled_from([*RITUALS, "some_future_ritual"]),
    name=st.sampled_from([p.name for p in PERSONAS]),
    lag=st.integers(-3 * DAY, 30 * DAY),
    seed=st.integers(0, 2**32),
    silent=st.booleans(),
    member=st.booleans(),
)
def test_reaction_plans_are_ordered_prompted_and_never_in_the_past(
    ritual: str, name: str, lag: int, seed: int, silent: bool, member: bool
) -> None:
    view = CustomerView("cust-000001", PERSONA_BY_NAME[name], silent=silent, member=member,
                        unreviewed_orders=("ord-1",), open_tickets=("tkt-1",))  # fmt: skip
    now = T + lag  # the nudge may be decided before or (a lagging emitter) after now
    plan = react(view, nudge(ritual, anchor="ord-1"), random.Random(seed), now)
    if not plan:
        return
    assert plan[0] == Planned(plan[0].at_ms, Kind.PROMPTED,
                              {"action": "email_open", "nudge_id": "n" * 64})  # fmt: skip
    assert all(s.at_ms > now for s in plan)
    assert all(s.at_ms >= T for s in plan)
    assert [s.at_ms for s in plan] == sorted(s.at_ms for s in plan)
    assert all(s.data["nudge_id"] == "n" * 64 for s in plan if s.kind is Kind.PROMPTED)


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(["nudge_id", "ritual", "customer_id", "decided_at",
                                         "status", "anchor"]),
                       st.one_of(st.none(), st.integers(), st.text(max_size=30))))  # fmt: skip
def test_nudge_records_never_crash_the_parser(record: dict[str, Any]) -> None:
    Nudge.from_record(record)


def test_nudge_record_parsing() -> None:
    record = {"nudge_id": "ab" * 32, "ritual": "we_noticed", "customer_id": "cust-000001",
              "anchor": "ev-1", "due_at": "2026-02-20T10:00:00Z",
              "decided_at": "2026-02-20T10:00:00.000+00:00", "status": "delivered",
              "category": "care", "rules_version": "1"}  # fmt: skip
    parsed = Nudge.from_record(record)
    assert parsed is not None
    assert parsed.decided_at_ms == to_ms(datetime(2026, 2, 20, 10, tzinfo=UTC))
    assert Nudge.from_record({**record, "decided_at": "2026-02-20T10:00:00"}) is None
    assert Nudge.from_record([1, 2]) is None


def lapsed_winback(sim: Simulation) -> Customer:
    """Run until some win-back has been silent for 31 days; returns them."""
    winbacks = [c for c in sim.customers if c.persona.name == "winback" and c.gap_ms]
    target = min(winbacks, key=lambda c: c.gap_ms[0])  # type: ignore[index]
    assert target.gap_ms is not None
    while sim.now_ms < target.gap_ms[0] + 31 * DAY:
        assert sim.step() is not None
    assert target.silent
    return target


def test_simulated_winback_returns_after_we_noticed() -> None:
    sim = Simulation(SimConfig(40, 150, START, 11))
    c = lapsed_winback(sim)
    c.persona = persona("winback", **ALWAYS)
    decided = sim.now_ms - 2 * DAY  # decided in the simulated past (a lagging loop)
    plan = sim.deliver(nudge("we_noticed", customer=c.customer_id, decided_at_ms=decided))
    assert plan
    assert sim.deliver(nudge("we_noticed", customer=c.customer_id)) is None  # a re-send
    events = [i for i in sim if i.customer_id == c.customer_id]
    assert c.gap_ms is not None
    during_gap = [i for i in events if i.at_ms < c.gap_ms[1]]
    assert during_gap[0].event["action"] == "email_open"
    assert during_gap[0].event["nudge_id"] == "n" * 64
    assert during_gap[0].at_ms > decided
    assert any(i.event.get("session_id") for i in during_gap[2:])  # the return visit
    assert len(during_gap) > 5  # and regular activity resumed before the gap would have ended


def test_kafka_loop_reacts_to_delivered_nudges() -> None:
    """run_kafka with a fake producer and listener: pacing, bad mix and the closed loop."""

    class FakeSink:
        def __init__(self) -> None:
            self.sent: list[Message] = []

        async def send(self, msg: Message, on_ack: Callable[[], None] | None = None) -> None:
            self.sent.append(msg)
            if on_ack is not None:
                on_ack()

        async def drain(self) -> None:
            return None

    class FakeListener:
        def __init__(self) -> None:
            self.queue: asyncio.Queue[Nudge] = asyncio.Queue()
            self.invalid = 0

    sim = Simulation(SimConfig(30, 20, START, 4))
    for c in sim.customers:
        c.persona = replace(c.persona, **ALWAYS)
    stats = Stats(mode="kafka")
    bar = ProgressBar(sim.start_ms, sim.end_ms, enabled=False, console=None)  # type: ignore[arg-type]

    async def go() -> FakeSink:
        sink, listener = FakeSink(), FakeListener()
        for i in (1, 2, 3):
            listener.queue.put_nowait(
                nudge(
                    "post_purchase_welcome",
                    customer=f"cust-{i:06d}",
                    nudge_id=f"n{i}",
                    decided_at_ms=sim.start_ms,
                )
            )
        listener.queue.put_nowait(nudge("we_noticed", customer="stranger", nudge_id="x"))
        mixer = FaultMixer(4, 0.02, file_mode=False)
        await run_kafka(sim, sink, mixer, listener, stats, bar,  # type: ignore[arg-type]
                        speed=1e12, rate=None)  # fmt: skip
        return sink

    sink = asyncio.run(go())
    prompted = [m for m in sink.sent if b'"nudge_id"' in m.value and m.reason is None]
    assert {safe_decode(m.value)["nudge_id"] for m in prompted} == {"n1", "n2", "n3"}
    assert stats.nudges_by_ritual == Counter(post_purchase_welcome=3, we_noticed=1)
    assert stats.nudges_ignored == 1 and stats.prompted_clicks == len(prompted)
    assert set(stats.bad_by_reason) == set(REASONS)
    good = [m for m in sink.sent if m.reason is None]
    check_stream([m.value for m in good])
    assert all(m.key == safe_decode(m.value)["customer_id"].encode() for m in good)


# ------------------------------------------------------------------------ configuration


def test_kafka_options_from_env() -> None:
    opts = KafkaOptions.from_env({})
    assert opts.bootstrap_servers == "127.0.0.1:9092" and opts.namespace == "engage"
    opts = KafkaOptions.from_env({"ENGAGE_BROKER": "kafka://a:1;b:2",
                                  "ENGAGE_TOPIC_NAMESPACE": "demo"})  # fmt: skip
    assert opts.bootstrap_servers == "a:1,b:2" and topic(opts.namespace, "click") == "demo.clicks"
    assert opts.client_kwargs() == {"bootstrap_servers": "a:1,b:2",
                                    "security_protocol": "PLAINTEXT"}  # fmt: skip
    with pytest.raises(ValueError, match="ENGAGE_BROKER"):
        KafkaOptions.from_env({"ENGAGE_BROKER": "a:1"})
    with pytest.raises(ValueError, match="SASL"):
        KafkaOptions.from_env({"ENGAGE_SECURITY_PROTOCOL": "SASL_PLAINTEXT"})
    with pytest.raises(ValueError, match="NAMESPACE"):
        KafkaOptions.from_env({"ENGAGE_TOPIC_NAMESPACE": "no spaces"})


def test_topics_are_the_workers_input_topics() -> None:
    from stream.settings import Settings

    inputs = Settings(topic_namespace="shop").input_topics
    assert {kind: topic("shop", kind) for kind in TOPIC_SUFFIX} == inputs


def test_start_parsing() -> None:
    now = datetime(2026, 5, 1, 12, 34, 56, 789000, tzinfo=UTC)
    assert cli.parse_start("", 90, now) == datetime(2026, 1, 31, 12, 34, tzinfo=UTC)
    assert cli.parse_start("now", 90, now) == now
    assert cli.parse_start("2026-03-01", 1, now) == datetime(2026, 3, 1, tzinfo=UTC)
    assert cli.parse_start("2026-03-01T10:00:00+02:00", 1, now) == datetime(
        2026, 3, 1, 8, tzinfo=UTC
    )
    with pytest.raises(ValueError, match="offset"):
        cli.parse_start("2026-03-01T10:00:00", 1, now)
    with pytest.raises(ValueError):
        cli.parse_start("yesterday", 1, now)


def test_cli_rejects_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--customers", "0"], ["--bad-fraction", "0.9"], ["--start", "2026-01-01T00"]):
        with pytest.raises(SystemExit) as exc:
            cli.main([*argv, "--out", "/dev/null"])
        assert exc.value.code == 2
    assert "error" in capsys.readouterr().err


def test_consent_changes_are_rare_and_mostly_unsubscribe_links(big: BigRun) -> None:
    consent = [e for e in big.events if e["type"] == "consent"]
    customers = {e["customer_id"] for e in big.events}
    opt_outs = [e for e in consent if e["status"] == "opted_out"]
    by_source = Counter(e["source"] for e in opt_outs)
    assert opt_outs and len(opt_outs) < 0.3 * len(customers)  # a minority opts out
    assert by_source.most_common(1)[0][0] == "unsubscribe_link"
    assert by_source["unsubscribe_link"] > len(opt_outs) / 2
    assert all(e["scope"] == "marketing" for e in opt_outs if e["source"] == "unsubscribe_link")
    assert any(e["status"] == "opted_in" for e in consent)  # some come back
