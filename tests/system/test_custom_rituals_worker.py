"""Rituals written as data through real workers on the real broker: the two worked examples
of docs/rituals.md in live mode and through `engage replay`, and the packaged rituals' pinned
decision file through a replay with one and with two workers."""

from __future__ import annotations

import gzip
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from stream.core.rules import load_rules
from stream.tools.replay import run_replay
from tests.core.test_custom_rituals import EXAMPLES, customer
from tests.factory import event
from tests.harness import produce_events, read_all, wait_for
from tests.pinned import HERE, decisions, persona_events
from tests.system.test_ritual_engine import lines, replay_settings

pytestmark = pytest.mark.integration


def both_examples(tmp_path: Path) -> Path:
    """One rules file with both worked examples (and the packaged rituals)."""
    text = (EXAMPLES / "browse-abandon.yaml").read_text()
    second = (EXAMPLES / "second-purchase.yaml").read_text().split("rituals:\n", 1)[1]
    path = tmp_path / "both.yaml"
    path.write_text(text.replace('"2026.12-browse-1"', "examples-both") + second)
    return path


def history() -> list[dict[str, Any]]:
    """A few customers browsing and buying around the examples' windows."""
    a, b, c = (customer("browse_abandon", "second_purchase", prefix=f"x{i}") for i in range(3))
    e = [
        event("click", a, occurred_at="2026-01-05T10:00:00Z", action="search", event_id="a1"),
        event("click", a, occurred_at="2026-01-05T10:30:00Z", action="page_view"),
        event("click", a, occurred_at="2026-01-08T10:00:00Z", action="page_view", event_id="a3"),
        event("click", b, occurred_at="2026-01-05T10:00:00Z", action="page_view", event_id="b1"),
        event("purchase", b, occurred_at="2026-01-05T11:00:00Z", order_id="b-o1"),
        event("purchase", c, occurred_at="2026-01-06T12:00:00Z", order_id="c-o1"),
        event("purchase", b, occurred_at="2026-01-10T12:00:00Z", order_id="b-o2"),
    ]
    return e


@pytest.mark.timeout(600)
def test_the_worked_examples_through_a_replay_match_the_in_process_engine(
    bootstrap: str, tmp_path: Path
) -> None:
    rules_path = both_examples(tmp_path)
    events = lines(history())
    until = int(datetime(2026, 3, 1, tzinfo=UTC).timestamp() * 1000)
    got = run_replay(
        events, settings=replay_settings(bootstrap), until=until, rules_file=str(rules_path)
    )
    want = [json.loads(x) for x in decisions(events, load_rules(rules_path), final=until)]
    key = lambda d: d["nudge_id"]  # noqa: E731
    assert sorted(got, key=key) == sorted(want, key=key)
    ours = {"browse_abandon", "second_purchase"}
    mine = sorted((d["ritual"], d["status"], d["reason"]) for d in got if d["ritual"] in ours)
    assert mine == sorted(
        [
            ("browse_abandon", "delivered", "eligible"),  # a, 12:00
            ("browse_abandon", "cancelled", "purchased"),  # b bought within two hours
            ("browse_abandon", "suppressed", "once_per_window"),  # a again, 3 days later
            ("second_purchase", "cancelled", "purchased_again"),  # b bought again on day 5
            ("second_purchase", "delivered", "eligible"),  # c, 14 days after
        ]
    )
    assert all(
        d.get("template") for d in got if d["ritual"] in {"browse_abandon", "second_purchase"}
    )


def midday_zone(now: datetime) -> str:
    """A fixed-offset zone where it is about noon at `now` (and was an hour or two ago, when
    the examples' nudges fell due): the default rules hold nudges back during quiet hours."""
    east = (12 - now.hour) % 24
    if east > 14:
        east -= 24
    return "UTC" if east == 0 else f"Etc/GMT{'-' if east > 0 else '+'}{abs(east)}"


def test_the_worked_examples_in_a_live_worker(make_worker, tmp_path: Path) -> None:
    worker = make_worker(ENGAGE_RULES_FILE=str(both_examples(tmp_path))).start()
    now = datetime.now(UTC)
    tz = midday_zone(now)  # outside quiet hours (21:00-08:00 local) whenever the test runs
    browser = customer("browse_abandon", prefix="live-b")
    buyer = customer("second_purchase", "post_purchase_welcome", prefix="live-s")
    produce_events(
        worker.bootstrap,
        worker.namespace,
        [
            event(
                "click",
                browser,
                occurred_at=(now - timedelta(hours=3)).isoformat(),
                action="search",
                event_id="live-b1",
                tz=tz,
            ),
            event(
                "purchase",
                buyer,
                occurred_at=(now - timedelta(days=14, hours=1)).isoformat(),
                order_id="live-o1",
                event_id="live-p1",
                tz=tz,
            ),
        ],
    )
    topic = worker.topic("nudges")

    def delivered() -> dict[str, dict] | None:
        got = {
            json.loads(m.value)["ritual"]: json.loads(m.value)
            for m in read_all(worker.bootstrap, topic)
        }
        return got if {"browse_abandon", "second_purchase"} <= set(got) else None

    got = wait_for(delivered, timeout=60, what="both example nudges")
    assert got["browse_abandon"]["template"] == "browse-abandon-v1"
    assert got["browse_abandon"]["explanation"]["source_event_id"] == "live-b1"
    assert got["second_purchase"]["template"] == "second-purchase-v1"
    assert got["second_purchase"]["explanation"]["order_id"] == "live-o1"


@pytest.mark.timeout(900)
@pytest.mark.parametrize("workers", [1, 2])
def test_a_replay_of_persona_traffic_gives_the_pinned_decision_file(
    bootstrap: str, workers: int
) -> None:
    events = persona_events(1)
    last = max(json.loads(x)["occurred_at"] for x in events)
    until = int(datetime.fromisoformat(last.replace("Z", "+00:00")).timestamp() * 1000)
    until += 366 * 86_400_000
    got = run_replay(events, settings=replay_settings(bootstrap), until=until, workers=workers)
    want = gzip.decompress((HERE / "persona-1.decisions.jsonl.gz").read_bytes()).splitlines()
    assert sorted(
        json.dumps(d, sort_keys=True, separators=(",", ":")).encode() for d in got
    ) == sorted(want)


@pytest.mark.timeout(600)
def test_a_versioned_rollout_through_a_replay_matches_the_in_process_engine(
    bootstrap: str, tmp_path: Path
) -> None:
    """Two files, the second effective from an instant in the middle of the history: the
    real workers pick the version by ritual time exactly as the in-process engine does."""
    (tmp_path / "v1.yaml").write_text("version: roll-1\n")
    v2 = tmp_path / "v2.yaml"
    v2.write_text(
        "version: roll-2\neffective_from: 2026-01-08T00:00:00Z\nprevious: v1.yaml\n"
        "rituals:\n  three_days_later: {delay: 24h}\n"
        "  post_purchase_welcome: {holdout_percent: 0}\n"
    )
    events = lines(history())
    until = int(datetime(2026, 3, 1, tzinfo=UTC).timestamp() * 1000)
    got = run_replay(events, settings=replay_settings(bootstrap), until=until, rules_file=str(v2))
    want = [json.loads(x) for x in decisions(events, load_rules(v2), final=until)]
    key = lambda d: d["nudge_id"]  # noqa: E731
    assert sorted(got, key=key) == sorted(want, key=key)
    versions = {(d["ritual"], d["decided_at"][:10], d["rules_version"]) for d in got}
    assert ("post_purchase_welcome", "2026-01-05", "roll-1") in versions
    assert ("three_days_later", "2026-01-11", "roll-2") in versions  # b's o2: 24 h under roll-2
