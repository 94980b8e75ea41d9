"""Alerting rules (ops/prometheus/rules/alerts.yml): valid, unit-tested, on real metric names.

`promtool test rules` runs the cases in ops/prometheus/tests/alerts_test.yml; this module checks
those cases cover every alert both firing and silent, that every metric an alert reads is one
the workers export, and that both the local stack and docker-compose's Prometheus load the file.
"""

from __future__ import annotations

import glob
import re
import shutil
import subprocess
from pathlib import Path

import yaml

from stream.tools.devstack import DevstackSettings, render_prometheus_config
from tests.harness import ROOT

PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
ALERTS = ROOT / "ops" / "prometheus" / "rules" / "alerts.yml"
CASES = ROOT / "ops" / "prometheus" / "tests" / "alerts_test.yml"
REQUIRED = {
    "EngageWorkerDown",
    "EngageWatermarkLagHigh",
    "EngageWatermarkLagGrowing",
    "EngageConsumerLagGrowing",
    "EngageDeadLetterRatioHigh",
    "EngageRedisProjectionFailing",
    "EngageRitualSilent",
    "EngageRebalanceStorm",
}


def alerts() -> list[dict]:
    config = yaml.safe_load(ALERTS.read_text())
    return [rule for group in config["groups"] for rule in group["rules"]]


def test_alert_rules_pass_promtool_check() -> None:
    run = subprocess.run(
        [PROMTOOL, "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in run.stdout + run.stderr


def test_promtool_unit_tests_pass() -> None:
    run = subprocess.run(
        [PROMTOOL, "test", "rules", str(CASES)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=CASES.parent,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "SUCCESS" in run.stdout + run.stderr


def test_every_alert_is_tested_firing_and_silent() -> None:
    names = [rule["alert"] for rule in alerts()]
    assert len(names) == len(set(names))
    assert set(names) >= REQUIRED
    fires: set[str] = set()
    silent: set[str] = set()
    for case in yaml.safe_load(CASES.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            (fires if check.get("exp_alerts") else silent).add(check["alertname"])
    assert fires == set(names), set(names) - fires
    assert silent == set(names), set(names) - silent


def test_alerts_are_labelled_and_explained() -> None:
    for rule in alerts():
        assert rule["labels"]["severity"] in {"page", "ticket"}, rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        assert "for" in rule, f"{rule['alert']}: a single bad scrape must not page"


def test_alerts_name_no_scrape_job() -> None:
    """Whatever the scrape job is called, the alerts work: none selects a job by name."""
    for rule in alerts():
        assert not re.search(r"\bjob\s*=~?", rule["expr"]), rule["alert"]


def test_docs_list_every_alert() -> None:
    doc = (ROOT / "docs" / "alerts.md").read_text()
    for rule in alerts():
        assert f"`{rule['alert']}`" in doc, rule["alert"]


def exported_metric_names() -> set[str]:
    """Every metric name the worker's code registers (string literals `engage_...`)."""
    names: set[str] = set()
    for path in (ROOT / "stream").rglob("*.py"):
        names |= set(re.findall(r'"(engage_[a-z0-9_]+)"', path.read_text()))
    return names


def test_alerts_read_only_metrics_that_exist() -> None:
    exported = exported_metric_names()
    histogram = ("_bucket", "_count", "_sum")
    for rule in alerts():
        for name in re.findall(r"\b(engage_[a-z0-9_]+|up)\b", rule["expr"]):
            if name == "up":
                continue
            base = next((name[: -len(s)] for s in histogram if name.endswith(s)), name)
            assert name in exported or base in exported, f"{rule['alert']}: {name}"


def test_the_local_stack_and_compose_load_the_alerts(tmp_path: Path) -> None:
    rendered = yaml.safe_load(render_prometheus_config(DevstackSettings(devstack_dir=tmp_path)))
    loaded = {Path(p) for pattern in rendered["rule_files"] for p in glob.glob(pattern)}
    assert ALERTS in loaded
    compose = yaml.safe_load((ROOT / "ops" / "prometheus" / "prometheus.yml").read_text())
    base = ROOT / "ops" / "prometheus"  # docker-compose mounts it at /etc/prometheus
    mounted = {Path(p) for pattern in compose["rule_files"] for p in glob.glob(str(base / pattern))}
    assert ALERTS in mounted
