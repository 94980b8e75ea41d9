"""Rituals written as data: the two worked examples of docs/rituals.md, every trigger kind,
wait, cancel and once-per option of a ritual entry, and rules versions in ritual time."""

from __future__ import annotations

from pathlib import Path

import pytest

from stream.core.rituals import Context, holdout_bucket
from stream.core.rules import load_rules
from tests.core.test_rituals import Sim

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "docs" / "examples"
BROWSE = load_rules(EXAMPLES / "browse-abandon.yaml")
SECOND = load_rules(EXAMPLES / "second-purchase.yaml")


def customer(*rituals: str, prefix: str = "cust") -> str:
    """A customer id no listed ritual holds out."""
    i = 0
    while any(holdout_bucket(f"{prefix}-{i}", r) < 10 for r in rituals):
        i += 1
    return f"{prefix}-{i}"


def write(tmp_path: Path, text: str, name: str = "rules.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_the_worked_examples_are_in_the_docs_verbatim() -> None:
    doc = (ROOT / "docs" / "rituals.md").read_text()
    for example in EXAMPLES.glob("*.yaml"):
        assert example.read_text().strip() in doc, example.name


# --- browse abandon -----------------------------------------------------------------------------


def test_browse_abandon_two_hours_after_a_search_without_purchase() -> None:
    cid = customer("browse_abandon")
    s = Sim(cid, Context(BROWSE))
    s.send("click", "2026-03-02T10:00:00Z", action="search", event_id="b1")
    s.send("click", "2026-03-02T10:20:00Z", action="page_view", event_id="b2")  # ignored
    s.send("click", "2026-03-02T10:30:00Z", action="share")  # not a browse action
    s.until("2026-03-02T11:59:59Z")
    assert s.of("browse_abandon") == []
    s.until("2026-03-02T12:00:00Z")
    [d] = s.of("browse_abandon")
    assert (d["status"], d["reason"], d["anchor"]) == ("delivered", "eligible", "browse-b1")
    assert d["template"] == "browse-abandon-v1"
    assert d["category"] == "marketing" and d["promotional"] is True
    assert d["explanation"] == {
        "action": "search",
        "browsed_at": "2026-03-02T10:00:00.000Z",
        "source_event_id": "b1",
    }
    # another spell three days later: at most one per 7 days
    s.send("click", "2026-03-05T10:00:00Z", action="page_view", event_id="b3")
    s.until("2026-03-05T12:00:00Z")
    second = s.of("browse_abandon")[1]
    assert (second["status"], second["reason"]) == ("suppressed", "once_per_window")
    assert second["explanation"]["previous_invite_at"] == "2026-03-02T12:00:00.000Z"
    # eight days later it may go again
    s.send("click", "2026-03-10T13:00:00Z", action="search", event_id="b4")
    s.until("2026-03-10T15:00:00Z")
    assert s.of("browse_abandon")[2]["status"] == "delivered"


def test_browse_abandon_is_cancelled_by_a_purchase_within_two_hours() -> None:
    cid = customer("browse_abandon", "post_purchase_welcome")
    s = Sim(cid, Context(BROWSE))
    s.send("click", "2026-03-02T10:00:00Z", action="page_view", event_id="b1")
    s.send("purchase", "2026-03-02T11:00:00Z", order_id="o1", event_id="p1")
    s.until("2026-03-03T00:00:00Z")
    [d] = s.of("browse_abandon")
    assert (d["status"], d["reason"]) == ("cancelled", "purchased")
    assert d["explanation"]["cancelled_by_event_id"] == "p1"
    # a cancelled decision does not start the once-per window
    s.send("click", "2026-03-03T10:00:00Z", action="search", event_id="b2")
    s.until("2026-03-03T12:00:00Z")
    assert s.of("browse_abandon")[1]["status"] == "delivered"


def test_the_packaged_rituals_are_unchanged_by_a_file_adding_its_own() -> None:
    assert list(BROWSE.rituals)[:7] == list(load_rules().rituals)
    for name, d in load_rules().rituals.items():
        assert BROWSE.rituals[name] == d


# --- second purchase ----------------------------------------------------------------------------


def test_second_purchase_fourteen_days_after_a_lone_first_purchase() -> None:
    cid = customer("second_purchase")
    s = Sim(cid, Context(SECOND))
    s.send("purchase", "2026-03-02T12:00:00Z", order_id="o1", event_id="p1")
    s.until("2026-03-16T11:59:59Z")
    assert s.of("second_purchase") == []
    s.until("2026-03-16T12:00:00Z")
    [d] = s.of("second_purchase")
    assert (d["status"], d["anchor"], d["template"]) == (
        "delivered",
        "second-purchase",
        "second-purchase-v1",
    )
    assert d["explanation"]["order_id"] == "o1"


def test_second_purchase_is_cancelled_by_a_second_purchase_and_never_comes_twice() -> None:
    cid = customer("second_purchase")
    s = Sim(cid, Context(SECOND))
    s.send("purchase", "2026-03-02T12:00:00Z", order_id="o1")
    s.send("purchase", "2026-03-06T12:00:00Z", order_id="o2", event_id="p2")
    s.send("purchase", "2026-05-06T12:00:00Z", order_id="o3")
    s.until("2026-09-01T00:00:00Z")
    [d] = s.of("second_purchase")
    assert (d["status"], d["reason"]) == ("cancelled", "purchased_again")
    assert d["decided_at"] == "2026-03-16T12:00:00.000Z"
    assert d["explanation"]["cancelled_by_event_id"] == "p2"


# --- the other options -----------------------------------------------------------------------

RULES = """
version: options-1
rituals:
  callback:
    audience: service_team
    category: recovery
    holdout_percent: 0
    trigger:
      event: survey
      when: {survey: ces, score: {le: 2}}
      facts: {score: "{score}"}
    wait: {for: 1h, until: "09:30"}
  restart:
    category: care
    holdout_percent: 0
    trigger: {event: click, when: {action: email_open}}
    wait: 1d
    while_waiting: restart
  vip:
    category: marketing
    holdout_percent: 0
    trigger:
      event: loyalty
      when: {action: tier_changed, tier: {in: [gold, platinum]}}
      facts: {tier: "{tier}"}
    anchor: "vip-{tier}"
    cancel_if:
      - {when: {open_complaints: {ge: 1}}, reason: unhappy}
guardrails:
  quiet_hours: {enabled: false}
  frequency_cap: {max_delivered: 100, max_marketing: 100}
"""


def test_a_wait_until_a_local_time_of_day(tmp_path: Path) -> None:
    rules = load_rules(write(tmp_path, RULES))
    s = Sim("c-1", Context(rules))
    s.send("survey", "2026-03-02T08:45:00Z", survey="ces", score=1, tz="Europe/Berlin")
    s.until("2026-03-03T08:29:59Z")
    assert s.of("callback") == []
    s.until("2026-03-03T08:30:00Z")
    [d] = s.of("callback")
    # 08:45 UTC + 1 h = 10:45 in Berlin: the next 09:30 there is the next day, 08:30 UTC
    assert (d["due_at"], d["decided_at"]) == ("2026-03-03T08:30:00.000Z",) * 2
    assert d["audience"] == "service_team" and d["explanation"]["score"] == 1


def test_while_waiting_restart_moves_the_wait(tmp_path: Path) -> None:
    rules = load_rules(write(tmp_path, RULES))
    s = Sim("c-1", Context(rules))
    s.send("click", "2026-03-02T10:00:00Z", action="email_open", event_id="o1")
    s.send("click", "2026-03-02T20:00:00Z", action="email_open", event_id="o2")
    s.until("2026-03-04T00:00:00Z")
    [d] = s.of("restart")
    assert (d["anchor"], d["decided_at"]) == ("o2", "2026-03-03T20:00:00.000Z")


def test_cancel_if_tests_the_state_when_deciding(tmp_path: Path) -> None:
    rules = load_rules(write(tmp_path, RULES))
    s = Sim("c-1", Context(rules))
    s.send("support_contact", "2026-03-02T10:00:00Z", status="opened", complaint=True)
    s.send("loyalty", "2026-03-02T11:00:00Z", action="tier_changed", tier="gold")
    s.send("support_contact", "2026-03-02T12:00:00Z", status="resolved", complaint=True)
    s.send("loyalty", "2026-03-02T13:00:00Z", action="tier_changed", tier="platinum")
    s.send("loyalty", "2026-03-02T14:00:00Z", action="tier_changed", tier="silver")
    assert s.statuses("vip") == [
        ("cancelled", "unhappy", "2026-03-02T11:00:00.000Z"),
        ("delivered", "eligible", "2026-03-02T13:00:00.000Z"),
    ]
    assert s.of("vip")[0]["explanation"]["open_complaints"] == 1


# --- rules versions in ritual time -----------------------------------------------------------


def test_a_new_version_applies_from_its_effective_instant(tmp_path: Path) -> None:
    v1 = "version: v1\nrituals:\n  post_purchase_welcome: {holdout_percent: 0}\n"
    write(tmp_path, v1, "v1.yaml")
    v2 = write(
        tmp_path,
        "version: v2\neffective_from: 2026-03-10T00:00:00Z\nprevious: v1.yaml\n"
        "rituals:\n  post_purchase_welcome: {holdout_percent: 0, template: welcome-v2}\n",
        "v2.yaml",
    )
    rules = load_rules(v2)
    assert rules.versions == ("v2", "v1")
    made = []
    for i, day in enumerate(("2026-03-09T12:00:00Z", "2026-03-10T12:00:00Z")):
        s = Sim(f"c-{i}", Context(rules)).send("purchase", day, order_id="o1")
        [d] = s.of("post_purchase_welcome")
        made.append((d["rules_version"], d.get("template")))
    assert made == [("v1", None), ("v2", "welcome-v2")]


def test_a_timer_is_decided_by_the_version_in_force_at_its_due_instant(tmp_path: Path) -> None:
    write(tmp_path, "version: v1\n", "v1.yaml")
    v2 = write(
        tmp_path,
        "version: v2\neffective_from: 2026-03-04T00:00:00Z\nprevious: v1.yaml\n"
        "rituals:\n  three_days_later: {holdout_percent: 0, enabled: false}\n",
        "v2.yaml",
    )
    cid = customer("three_days_later", "post_purchase_welcome")
    s = Sim(cid, Context(load_rules(v2)))
    s.send("purchase", "2026-03-02T12:00:00Z", order_id="o1")  # armed under v1
    s.until("2026-03-06T00:00:00Z")
    [d] = s.of("three_days_later")  # decided under v2 (disabling stops new timers only)
    assert d["rules_version"] == "v2"
    s.send("purchase", "2026-03-07T12:00:00Z", order_id="o2")  # v2: not armed
    s.until("2026-03-20T00:00:00Z")
    assert len(s.of("three_days_later")) == 1


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"r.yaml": "version: v2\neffective_from: 2026-03-10T00:00:00Z\n"}, "needs `previous`"),
        (
            {
                "r.yaml": "version: v2\neffective_from: 2026-03-10T00:00:00Z\nprevious: r.yaml\n",
            },
            "cycle",
        ),
        (
            {
                "v1.yaml": "version: v2\n",
                "r.yaml": "version: v2\neffective_from: 2026-03-10T00:00:00Z\nprevious: v1.yaml\n",
            },
            "must differ",
        ),
        ({"r.yaml": "version: v2\neffective_from: soon\nprevious: v1.yaml\n"}, "not an instant"),
    ],
)
def test_rollout_mistakes_are_reported(tmp_path: Path, files: dict[str, str], message: str) -> None:
    from stream.core.rules import check_rules_file

    for name, text in files.items():
        write(tmp_path, text, name)
    problems = check_rules_file(tmp_path / "r.yaml")
    assert any(message in p for p in problems), problems


def test_an_inactivity_spell_armed_by_one_version_lives_on_under_the_next(tmp_path: Path) -> None:
    """An inactivity ritual's pending spell is data (`r.idle`) until it falls due: a version
    that makes the ritual an event ritual keeps the spell armed before it (activity no longer
    moves it, since these rules do not restart it), its cancel rules reach it, and it is
    decided by the version in force at its due instant with the facts and anchor of the one
    that armed it."""
    write(
        tmp_path,
        "version: v1\nrituals:\n  lapsed:\n    category: care\n    holdout_percent: 0\n"
        "    trigger: {inactivity: 10d, facts: {last_event_id: '{event_id}'}}\n"
        "    anchor: 'lapsed-{event_id}'\n"
        "guardrails:\n  quiet_hours: {enabled: false}\n",
        "v1.yaml",
    )
    v2 = write(
        tmp_path,
        "version: v2\neffective_from: 2026-03-05T00:00:00Z\nprevious: v1.yaml\n"
        "rituals:\n  lapsed:\n    category: care\n    holdout_percent: 0\n"
        "    trigger: {event: purchase, facts: {order_id: '{order_id}'}}\n"
        "    anchor: 'lapsed-{order_id}'\n    wait: 1d\n"
        "    cancel:\n      - {event: review, reason: reviewed}\n"
        "guardrails:\n  quiet_hours: {enabled: false}\n",
        "v2.yaml",
    )
    rules = load_rules(v2)
    kept = Sim("c-1", Context(rules))
    kept.send("click", "2026-03-02T12:00:00Z", action="page_view", event_id="e1")
    kept.send("click", "2026-03-06T12:00:00Z", action="page_view", event_id="e2")
    kept.until("2026-03-30T00:00:00Z")
    [d] = kept.of("lapsed")
    assert (d["anchor"], d["status"], d["rules_version"]) == ("lapsed-e1", "delivered", "v2")
    assert d["due_at"] == d["decided_at"] == "2026-03-12T12:00:00.000Z"
    assert d["explanation"] == {"last_event_id": "e1", "source_event_id": "e1"}
    cancelled = Sim("c-2", Context(rules))
    cancelled.send("click", "2026-03-02T12:00:00Z", action="page_view", event_id="e1")
    cancelled.send("review", "2026-03-06T12:00:00Z", rating=4, event_id="r1")
    cancelled.until("2026-03-30T00:00:00Z")
    [d] = cancelled.of("lapsed")
    assert (d["anchor"], d["status"], d["reason"]) == ("lapsed-e1", "cancelled", "reviewed")
    assert d["explanation"]["cancelled_by_event_id"] == "r1"
