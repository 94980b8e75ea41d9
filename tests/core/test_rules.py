"""The rules file: validated at start-up, with every problem named."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from stream.core.rules import RulesError, load_rules, parse_duration_ms


def test_the_packaged_rules_are_the_spec_defaults() -> None:
    rules = load_rules()
    r, g = rules.rituals, rules.guardrails
    assert list(r) == [
        "post_purchase_welcome", "three_days_later", "we_noticed", "anniversary",
        "service_recovery", "referral_invite", "loyalty_milestone",
    ]  # fmt: skip
    assert r["three_days_later"].wait is not None
    assert r["three_days_later"].wait.for_ == 72 * 3_600_000
    assert r["we_noticed"].trigger.inactivity == 30 * 86_400_000  # type: ignore[union-attr]
    assert r["anniversary"].trigger.local_time == 10 * 60  # type: ignore[union-attr]
    assert r["service_recovery"].holdout_percent == 0
    assert r["service_recovery"].audience == "service_team"
    assert {r["post_purchase_welcome"].holdout_percent, r["referral_invite"].holdout_percent} == {
        10
    }
    assert r["referral_invite"].once_per == 90 * 86_400_000
    assert (g.quiet_hours.start, g.quiet_hours.end) == (21 * 60, 8 * 60)
    assert (g.frequency_cap.max_delivered, g.frequency_cap.max_marketing) == (2, 1)
    assert g.lateness == 24 * 3_600_000
    assert rules.profile.half_life_days == 14


@pytest.mark.parametrize(
    ("text", "ms"), [("72h", 259_200_000), ("30d", 2_592_000_000), ("500ms", 500), (90, 90_000)]
)
def test_durations(text: object, ms: int) -> None:
    assert parse_duration_ms(text) == ms


def test_a_bad_file_names_every_problem(tmp_path: Path) -> None:
    bad = tmp_path / "rules.yaml"
    bad.write_text(
        "version: x\nrituals:\n  we_noticed: {inactivity: soon}\n"
        "  referral_invite: {holdout_percent: 140}\nguardrails:\n  quiet_hours: {start: '25:00'}\n"
        "  surprise: 1\n"
    )
    with pytest.raises(RulesError) as err:
        load_rules(bad)
    text = str(err.value)
    for where in (
        "rituals.we_noticed.inactivity",
        "rituals.referral_invite.holdout_percent",
        "guardrails.quiet_hours.start",
        "guardrails.surprise",
    ):
        assert where in text, text
    missing = tmp_path / "nope.yaml"
    with pytest.raises(RulesError, match="cannot read"):
        load_rules(missing)


def test_the_worker_refuses_a_bad_rules_file_before_any_io(tmp_path: Path) -> None:
    bad = tmp_path / "rules.yaml"
    bad.write_text("version: x\nrituals: {we_noticed: {inactivity: -3h}}\n")
    env = {**os.environ, "ENGAGE_RULES_FILE": str(bad), "ENGAGE_BROKER": "kafka://127.0.0.1:1"}
    proc = subprocess.run(
        [sys.executable, "-m", "stream", "worker"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert "rituals.we_noticed.inactivity" in proc.stderr
    assert "Traceback" not in proc.stderr
