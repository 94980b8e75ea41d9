"""Observability (SPEC §5, §7): recording rules, the Grafana dashboard, and what Prometheus sees.

Real programs only: `promtool` checks the rules and a running worker's /metrics; the local
stack's Prometheus scrapes a real `engage worker` fed through the real broker, and every query of
ops/grafana/dashboards/engage.json must return data from it; NPS and CSAT evaluated by the
recording rules must equal the values computed here from the events sent. Every wait polls a
condition with a deadline.

Prometheus keeps the data of earlier workers on the same target. The assertions stay exact
because the worker under test is the only healthy `engage` target while they run: either it
takes the default target 127.0.0.1:6066 (when nothing else holds that port), or the scrape
targets are switched to its own port through ENGAGE_PROMETHEUS_TARGETS + `devstack.ensure_up`
(a config reload) and switched back afterwards. Series of a stopped worker are marked stale by
Prometheus, so instant queries and the rules see only the live worker; the NPS components are
compared too, so a stale value that happens to be equal cannot pass.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import socket
import subprocess
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from schemas.events import CLICK_ACTIONS, CONSENT_SCOPES, EVENT_TYPES
from schemas.iso4217 import CURRENCIES
from schemas.nudges import RITUALS, STATUSES
from stream.core.ingest import REASONS
from stream.core.profile import QUADRANTS, STAGES
from stream.core.rituals import OUTCOMES, holdout_bucket, nudge_id
from stream.core.rules import load_rules
from stream.core.state import UNREADABLE_REASONS
from stream.telemetry.kpis import (
    ACTIVE_WINDOWS,
    CLV_BANDS,
    CONSENT_SOURCE_LABELS,
    OTHER_CURRENCY,
    RETENTION_WINDOWS,
    SCORE_BANDS,
    SUPPRESSION_REASONS,
)
from stream.topic_names import input_topic
from tests.factory import event
from tests.harness import ROOT, Worker, free_port, produce, produce_events, unique, wait_for

pytestmark = pytest.mark.integration

RULES = ROOT / "ops" / "prometheus" / "rules" / "engage.yml"
GRAFANA = ROOT / "ops" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "engage.json"
DATASOURCES = GRAFANA / "provisioning" / "datasources" / "prometheus.yml"
DASHBOARD_PROVIDERS = GRAFANA / "provisioning" / "dashboards" / "engage.yml"
COMPOSE = ROOT / "docker-compose.yml"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
DEFAULT_TARGET = ("127.0.0.1", 6066)
JOB = "engage"

# Grafana's template variables, as Grafana would expand them for a 1 h dashboard. The rate
# window is 2 minutes (Grafana picks at least 4 scrapes, 20 s here): wide enough that the load
# sent at the start of the module is still inside it when the last panel is queried.
VARIABLES = {
    "$__rate_interval": "2m",
    "${__rate_interval}": "2m",
    "$__interval": "15s",
    "${__interval}": "15s",
    "$__range": "1h",
    "${__range}": "1h",
    "$job": JOB,
    "${job}": JOB,
}

# Metrics another change is adding to the worker (the Redis projection, SPEC §6). Their panels
# are checked as soon as the worker exports them and skipped, saying so, until then.
PENDING_METRICS = {
    "engage_redis_write_seconds",
    "engage_redis_errors_total",
    "engage_redis_pending_customers",
}

# Every label the worker may use, with its closed set of values: no label may take a value
# per customer, order, ticket or event (SPEC §5). A new label must be declared here.
CLOSED_LABELS: dict[str, Any] = {
    "topic": re.compile(
        r"^[A-Za-z0-9._-]+\.(clicks|purchases|reviews|support|surveys|loyalty|consent|erasures)$"
    ),
    "type": {*EVENT_TYPES, "unknown"},
    "outcome": {"folded", "duplicate", "dead_lettered", "failed", *OUTCOMES},
    "reason": {*REASONS, "wrong_partition", *SUPPRESSION_REASONS, *UNREADABLE_REASONS},
    "partition": re.compile(r"^[0-9]{1,4}$"),
    "le": re.compile(r"^([0-9.e+-]+|\+Inf)$"),
    "category": {"promoter", "passive", "detractor"},
    "rating": {"1", "2", "3", "4", "5"},
    "currency": {*CURRENCIES, OTHER_CURRENCY},
    "window": set(ACTIVE_WINDOWS) | set(RETENTION_WINDOWS),
    "stage": set(STAGES),
    "quadrant": set(QUADRANTS),
    "band": set(SCORE_BANDS) | {band for band, _ in CLV_BANDS},
    "action": set(CLICK_ACTIONS),
    "prompted": {"true", "false"},
    "ritual": set(RITUALS),
    "rules_version": set(load_rules().versions),  # the worker runs the packaged rules
    "status": set(STATUSES),
    "arm": {"treated", "held_out"},
    "table": {"customers", "control"},
    "operation": {"retrieved", "updated", "deleted"},
    "scope": set(CONSENT_SCOPES),
    "source": set(CONSENT_SOURCE_LABELS),
    "found": {"true", "false"},
    "role": {"active", "standby"},
}

# Survey answers of the Prometheus load, one per customer.
NPS_SCORES = (10, 9, 9, 8, 7, 6, 3, 0, 10)
CSAT_SCORES = (5, 4, 2, 3, 5, 1, 4, 4, 5)
CES_SCORES = (7, 6, 5, 4, 3, 2, 1, 6, 5)
RATINGS = (5, 4, 3, 2, 1, 5, 4, 5, 3)
HELD_OUT_CUSTOMERS = 3  # of len(NPS_SCORES), in post_purchase_welcome's holdout
# Customers with only past activity, for retention: (days ago first seen, days ago last seen).
HISTORY = {"active": (100, 3), "lapsed": (100, 60), "gone": (120, 95), "recent": (15, 10)}
# Of the post_purchase_welcome nudges, how many customers click theirs (the first treated
# customer twice) and how many held-out customers do (a holdout leak, counted in its own arm).
CLICKING_TREATED = 4
CLICKING_HELD_OUT = 1
SHARE_DWELL_S, COMMENT_DWELL_S, NUDGE_DWELL_S = 2, 5, 1


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


class Prometheus:
    """The HTTP API of the local Prometheus (no proxy: it is on localhost)."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self.opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def get(self, path: str, **params: str) -> Any:
        url = f"{self.url}{path}?{urllib.parse.urlencode(params)}"
        try:
            with self.opener.open(url, timeout=10) as resp:
                body = json.load(resp)
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"{path} {params}: HTTP {exc.code}: {exc.read()!r}") from None
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.get("/api/v1/query", query=expr)
        if data["resultType"] in {"scalar", "string"}:
            return [{"metric": {}, "value": data["result"]}]
        return list(data["result"])

    def value(self, expr: str) -> float | None:
        """The single value of `expr`, or None while it has no sample."""
        result = self.query(expr)
        assert len(result) <= 1, f"{expr} has {len(result)} series: {result}"
        return float(result[0]["value"][1]) if result else None


def port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def daytime_zone(moment: datetime) -> str:
    """A fixed-offset zone where `moment` is between 12:00 and 13:00 local time, so that quiet
    hours (21:00-08:00 local) never defer the immediate rituals the load triggers."""
    offset = (12 - moment.hour) % 24
    if offset > 12:
        offset -= 24
    if offset == 0:
        return "Etc/GMT"
    return f"Etc/GMT{-offset:+d}"  # POSIX sign: Etc/GMT-3 is UTC+3


def customer_ids(prefix: str, treated: int, held_out: int) -> list[str]:
    """Customer ids, `held_out` of them in post_purchase_welcome's holdout bucket (SPEC §4)."""
    percent = load_rules(None).rituals["post_purchase_welcome"].holdout_percent
    held: list[str] = []
    others: list[str] = []
    i = 0
    while len(held) < held_out or len(others) < treated:
        cid = f"{prefix}-{i}"
        i += 1
        if holdout_bucket(cid, "post_purchase_welcome") < percent:
            if len(held) < held_out:
                held.append(cid)
        elif len(others) < treated:
            others.append(cid)
    return held + others


def first_visit(cid: str, k: int, t: datetime, tz: str) -> list[dict[str, Any]]:
    """Events of every type: a first purchase (post_purchase_welcome), survey answers and a
    complaint (service_recovery, referral_invite), a tier change (loyalty_milestone)."""

    def ev(kind: str, seconds: int, **fields: Any) -> dict[str, Any]:
        return event(kind, cid, occurred_at=iso(t + timedelta(seconds=seconds)), tz=tz, **fields)

    n = len(NPS_SCORES)
    return [
        ev("click", 0, action="page_view"),
        ev(
            "purchase",
            10,
            order_id=f"{cid}-o1",
            amount="25.00",
            items=1,
            currency="USD" if k % 3 == 0 else "EUR",
        ),
        ev("survey", 20, survey="nps", score=NPS_SCORES[k % n]),
        ev("survey", 30, survey="csat", score=CSAT_SCORES[k % n]),
        ev("survey", 40, survey="ces", score=CES_SCORES[k % n]),
        ev("review", 50, order_id=f"{cid}-o1", rating=RATINGS[k % n], channel="site"),
        ev("support_contact", 60, ticket_id=f"{cid}-t1", status="opened", complaint=True),
        ev("support_contact", 70, ticket_id=f"{cid}-t1", status="resolved", complaint=True),
        ev("support_contact", 80, ticket_id=f"{cid}-t2", status="resolved", complaint=True),
        ev("loyalty", 90, action="joined"),
        ev("loyalty", 100, action="referral_sent"),
        ev("loyalty", 110, action="referral_converted"),
        ev("loyalty", 120, action="tier_changed", tier="silver"),
    ]


def coming_back(cid: str, t: datetime, tz: str) -> list[dict[str, Any]]:
    """Five minutes later: came back, purchased again, reviewed (ritual outcomes, both arms)."""

    def ev(kind: str, seconds: int, **fields: Any) -> dict[str, Any]:
        return event(kind, cid, occurred_at=iso(t + timedelta(seconds=seconds)), tz=tz, **fields)

    return [
        ev("click", 300, action="email_open"),
        ev("purchase", 310, order_id=f"{cid}-o2", amount="12.50", currency="EUR", items=2),
        ev("review", 320, order_id=f"{cid}-o2", rating=4, channel="site"),
    ]


def engaging(cid: str, k: int, t: datetime, tz: str, *, clicks_nudge: int) -> list[dict[str, Any]]:
    """Shares by everyone, comments by every other customer, and `clicks_nudge` clicks on the
    customer's post_purchase_welcome nudge; all with a dwell time."""

    def ev(seconds: int, **fields: Any) -> dict[str, Any]:
        return event("click", cid, occurred_at=iso(t + timedelta(seconds=seconds)), tz=tz, **fields)

    out = [ev(330, action="share", dwell_ms=SHARE_DWELL_S * 1000)]
    if k % 2 == 0:
        out.append(ev(340, action="comment", dwell_ms=COMMENT_DWELL_S * 1000))
    nid = nudge_id("post_purchase_welcome", cid, "first_purchase")
    for i in range(clicks_nudge):
        out.append(ev(350 + i, action="email_click", nudge_id=nid, dwell_ms=NUDGE_DWELL_S * 1000))
    return out


def history(cid: str, now: datetime) -> list[dict[str, Any]]:
    """Customers seen long ago (retention cohorts): page views on their first and last day."""
    out = []
    for name, (first, last) in HISTORY.items():
        for days in (first, last):
            occurred = iso(now - timedelta(days=days))
            out.append(event("click", f"{cid}-{name}", occurred_at=occurred, action="page_view"))
    return out


def nudge_clicks(k: int) -> int:
    """Clicks on the post_purchase_welcome nudge by the k-th customer of `customer_ids`."""
    if k < HELD_OUT_CUSTOMERS:
        return 1 if k < CLICKING_HELD_OUT else 0
    treated = k - HELD_OUT_CUSTOMERS
    return 2 if treated == 0 else 1 if treated < CLICKING_TREATED else 0


def bad_messages(namespace: str, cid: str, duplicate: dict[str, Any]) -> list[tuple]:
    """One malformed message (DLQ) and one repeated event_id (duplicate)."""
    return [
        (input_topic(namespace, "click"), cid.encode(), b"{not json"),
        (input_topic(namespace, "click"), cid.encode(), json.dumps(duplicate).encode()),
    ]


def processed(worker: Worker, count: float) -> Any:
    def probe() -> bool:
        return worker.metric("engage_events_processed_total") >= count

    return probe


def load(worker: Worker, customers: list[str], t: datetime) -> set[str]:
    """Send first visits (plus a malformed message and a duplicate), wait until all are
    processed, then the returns; give back every id sent (none may become a label value)."""
    tz = daytime_zone(t)
    first = [e for k, c in enumerate(customers) for e in first_visit(c, k, t, tz)]
    before = worker.metric("engage_events_processed_total")
    produce_events(worker.bootstrap, worker.namespace, first)
    produce(worker.bootstrap, bad_messages(worker.namespace, customers[0], first[0]))
    sent = before + len(first) + 2
    wait_for(processed(worker, sent), timeout=60, what="first visits processed")
    returns = [e for c in customers for e in coming_back(c, t, tz)]
    returns += [
        e
        for k, c in enumerate(customers)
        for e in engaging(c, k, t, tz, clicks_nudge=nudge_clicks(k))
    ]
    returns += history(customers[0], t)
    produce_events(worker.bootstrap, worker.namespace, returns)
    wait_for(processed(worker, sent + len(returns)), timeout=60, what="returns processed")
    ids = set(customers)
    for e in first + returns:
        ids.update(
            str(e[k])
            for k in (
                "event_id",
                "customer_id",
                "order_id",
                "ticket_id",
                "review_id",
                "contact_id",
                "nudge_id",
            )
            if k in e
        )
    return ids


def series(body: bytes) -> set[tuple[str, tuple[tuple[str, str], ...]]]:
    """Every (sample name, labels) of a /metrics exposition."""
    out = set()
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            out.add((sample.name, tuple(sorted(sample.labels.items()))))
    return out


def exported_families(body: bytes) -> set[str]:
    names = set()
    for family in text_string_to_metric_families(body.decode()):
        names.add(family.name)
        if family.type == "counter":
            names.add(f"{family.name}_total")
    return names


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def all_panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for panel in board["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))  # panels inside collapsed rows
    return out


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title / refId, expr) of every query target of the dashboard."""
    return [
        (f"{panel['title']} / {target['refId']}", target["expr"])
        for panel in all_panels(dashboard())
        for target in panel.get("targets", [])
    ]


def expand(expr: str) -> str:
    for name in sorted(VARIABLES, key=len, reverse=True):
        expr = expr.replace(name, VARIABLES[name])
    assert "$" not in expr, f"a template variable is not expanded in {expr}"
    return expr


def raw_metrics_of(expr: str) -> set[str]:
    """The worker metric families an expression reads (recording rules excluded)."""
    names = set(re.findall(r"(?<![:\w])(engage_[a-z0-9_]+)", expr))
    return {re.sub(r"_(bucket|sum|count)$", "", n) for n in names}


def rule_names() -> list[str]:
    config = yaml.safe_load(RULES.read_text())
    return [rule["record"] for group in config["groups"] for rule in group["rules"]]


# --------------------------------------------------------------------------------------------
# Rules and dashboard files
# --------------------------------------------------------------------------------------------


def test_recording_rules_pass_promtool() -> None:
    run = subprocess.run(
        [PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"SUCCESS: {len(rule_names())} rules found" in run.stdout + run.stderr
    names = rule_names()
    assert len(names) == len(set(names)), "a recording rule is defined twice"
    for name in names:
        assert re.fullmatch(r"engage:[a-z0-9_]+:[a-z0-9_]+", name), f"{name}: level:metric:ops"


def test_recording_rules_sum_over_workers_before_dividing(tmp_path: Path) -> None:
    """promtool's rule unit tests: two workers with very different shares of the answers; the
    ratios are those of the sums, not the mean of the workers' ratios."""

    def pair(metric: str, labels: str, a: int, b: int) -> list[dict[str, str]]:
        sep = "," if labels else ""
        return [
            {
                "series": f'{metric}{{job="engage",instance="w{i}"{sep}{labels}}}',
                "values": f"{v}x12",
            }
            for i, v in ((1, a), (2, b))
        ]

    def ritual(arm: str, outcome: str, a: int, b: int) -> list[dict[str, str]]:
        labels = f'ritual="post_purchase_welcome",arm="{arm}",outcome="{outcome}"'
        return pair("engage_ritual_outcomes_total", labels, a, b)

    series_ = [
        *pair("engage_nps_responses_total", 'category="promoter"', 3, 1),
        *pair("engage_nps_responses_total", 'category="passive"', 1, 0),
        *pair("engage_nps_responses_total", 'category="detractor"', 0, 5),
        *pair("engage_csat_responses_total", "", 4, 16),
        *pair("engage_csat_satisfied_total", "", 4, 2),
        *pair("engage_ces_score_sum", "", 14, 6),
        *pair("engage_ces_score_count", "", 2, 3),
        *pair("engage_complaints_resolved_total", "", 1, 3),
        *pair("engage_first_contact_resolutions_total", "", 1, 0),
        *pair("engage_active_customers", 'window="1d"', 10, 0),
        *pair("engage_active_customers", 'window="30d"', 20, 60),
        *[s for r in range(1, 6) for s in pair("engage_reviews_total", f'rating="{r}"', r, 1)],
        *ritual("treated", "decided", 10, 10),
        *ritual("treated", "came_back", 9, 3),
        *ritual("held_out", "decided", 4, 0),
        *ritual("held_out", "came_back", 1, 0),
        *ritual("treated", "clicked", 1, 5),
        *pair("engage_retention_cohort_customers", 'window="30d"', 4, 16),
        *pair("engage_retention_retained_customers", 'window="30d"', 1, 15),
        *pair("engage_click_dwell_seconds_sum", "", 30, 2),
        *pair("engage_click_dwell_seconds_count", "", 3, 1),
        *pair("engage_clicks_total", 'action="share",prompted="true"', 1, 0),
        *pair("engage_clicks_total", 'action="share",prompted="false"', 0, 9),
        *pair("engage_clv_estimate", 'currency="EUR"', 900, 100),
        *pair("engage_customers_by_clv_band", 'currency="EUR",band="100-500"', 1, 3),
    ]

    def expect(expr: str, value: float, **labels: str) -> dict[str, Any]:
        text = ",".join(f'{k}="{v}"' for k, v in {"job": "engage", **labels}.items())
        return {
            "expr": expr,
            "eval_time": "30s",
            "exp_samples": [{"labels": f"{expr}{{{text}}}", "value": value}],
        }

    lift = "engage:ritual:lift"
    # treated came back 12 of 20, held out 1 of 4 (worker 2 has no held-out decision at all)
    lifts = [
        {
            "labels": f'{lift}{{job="engage",ritual="post_purchase_welcome",outcome="{o}"}}',
            "value": v,
        }
        for o, v in (("came_back", (12 / 20) / (1 / 4)), ("decided", 1))
    ]
    spec = {
        "rule_files": [str(RULES)],
        "evaluation_interval": "5s",
        "tests": [
            {
                "interval": "5s",
                "input_series": series_,
                "promql_expr_test": [
                    expect("engage:nps:score", -10),  # 100 x (4 - 5) / 10, not the mean 75/-83
                    expect("engage:csat:percent", 30),  # 6 / 20
                    expect("engage:ces:mean", 4),  # 20 / 5
                    expect("engage:fcr:ratio", 0.25),
                    expect("engage:stickiness:ratio", 0.125),  # 10 / 80
                    expect("engage:reviews:positive_ratio", 11 / 20),
                    expect("engage:reviews:mean_rating", (55 + 15) / 20),
                    # 16 of 20, not the mean of 1/4 and 15/16
                    expect("engage:retention:ratio", 0.8, window="30d"),
                    expect("engage:churn:ratio", 0.2, window="30d"),
                    expect("engage:dwell_seconds:mean", 8),  # 32 s / 4 clicks
                    expect("engage:prompted_interactions:ratio", 0.1),  # 1 of 10
                    expect("engage:social_interactions:sum", 10, action="share"),
                    expect("engage:clv:mean", 250, currency="EUR"),  # 1000 / 4
                    expect(
                        "engage:nudge_click_through:ratio",
                        0.3,  # 6 of 20
                        ritual="post_purchase_welcome",
                        arm="treated",
                    ),
                    {
                        "expr": f'{lift}{{ritual="post_purchase_welcome"}}',
                        "eval_time": "30s",
                        "exp_samples": lifts,
                    },
                ],
            }
        ],
    }
    path = tmp_path / "engage_test.yml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    run = subprocess.run(
        [PROMTOOL, "test", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_dashboard_and_provisioning_are_consistent() -> None:
    board = dashboard()
    panels = all_panels(board)
    datasource = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    assert [d["type"] for d in datasource] == ["prometheus"]
    uid = datasource[0]["uid"]
    assert uid == "engage-prometheus"
    compose = yaml.safe_load(COMPOSE.read_text())["services"]
    assert datasource[0]["url"] == "http://prometheus:9090" and "prometheus" in compose

    # The datasource is selectable: at import (Grafana's __inputs, which replaces
    # ${DS_PROMETHEUS} by the datasource chosen), and on the dashboard (a datasource variable of
    # the same name, which is what provisioning from files resolves, defaulting to ours).
    selected = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
    [ds_input] = board["__inputs"]
    assert ds_input["name"] == "DS_PROMETHEUS"
    assert (ds_input["type"], ds_input["pluginId"]) == ("datasource", "prometheus")
    variables = board["templating"]["list"]
    ds_var = variables[0]
    assert (ds_var["name"], ds_var["type"], ds_var["query"]) == (
        "DS_PROMETHEUS",
        "datasource",
        "prometheus",
    )
    assert ds_var["current"]["value"] == uid
    assert "engage-prometheus" not in json.dumps([board["panels"], variables[1:]])

    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    cells: dict[tuple[int, int], str] = {}
    for panel in panels:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == selected, panel["title"]
        assert panel.get("targets"), f"{panel['title']} has no query"
        for target in panel["targets"]:
            assert target["datasource"] == selected, panel["title"]
            assert target["expr"].strip(), panel["title"]
    for variable in variables[1:]:
        assert variable["datasource"] == selected, variable["name"]

    rows = [p["title"] for p in panels if p["type"] == "row"]
    assert rows == [
        "Pipeline health",
        "CX KPIs",
        "Engagement",
        "Rituals",
        "Retention, value and interactions",
    ]
    known = set(rule_names())
    for title, expr in dashboard_queries():
        for name in re.findall(r"engage:[a-z0-9_]+:[a-z0-9_]+", expr):
            assert name in known, f"{title}: {name} is not a recording rule"

    # Grafana in docker-compose reads exactly these files.
    grafana = compose["grafana"]
    assert grafana["image"].startswith("grafana/grafana")
    assert "prometheus" in grafana["depends_on"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in grafana["volumes"] if v.startswith("./")}
    assert mounts["/etc/grafana/provisioning"] == "./ops/grafana/provisioning"
    providers = yaml.safe_load(DASHBOARD_PROVIDERS.read_text())["providers"]
    assert mounts[providers[0]["options"]["path"]] == "./ops/grafana/dashboards"


# --------------------------------------------------------------------------------------------
# A worker scraped by the local Prometheus
# --------------------------------------------------------------------------------------------


@dataclass
class Scraped:
    worker: Worker
    prometheus: Prometheus
    instance: str
    customers: list[str]
    body: bytes = b""
    ids: set[str] = field(default_factory=set)


@pytest.fixture(scope="module")
def scraped(stack: dict[str, str], bootstrap: str, tmp_path_factory) -> Iterator[Scraped]:
    """A worker on a port Prometheus scrapes, loaded with events of every type, once Prometheus
    has scraped all of them and evaluated the rules on them."""
    if "prometheus" not in stack:
        pytest.skip("ENGAGE_TEST_BOOTSTRAP points at another broker: no local Prometheus")
    from stream.tools import devstack

    settings = devstack.load_settings()
    reconfigured = None
    if settings.prometheus_targets == ("{}:{}".format(*DEFAULT_TARGET),) and port_free(
        *DEFAULT_TARGET
    ):
        port = DEFAULT_TARGET[1]
    else:
        # 6066 is someone else's (a demo worker?) or the targets were changed: scrape only ours
        # while the tests run, then put the configured targets back.
        port = free_port()
        reconfigured = devstack.load_settings(prometheus_targets=(f"127.0.0.1:{port}",))
        devstack.ensure_up(("prometheus",), settings=reconfigured)
    app_id = unique("obs")
    worker = Worker(
        bootstrap=bootstrap,
        app_id=app_id,
        namespace=app_id,
        log_path=tmp_path_factory.mktemp("obs") / f"{app_id}.log",
        web_port=port,
        extra_env={"ENGAGE_KPI_INTERVAL_S": "1"},
    )
    prometheus = Prometheus(stack["prometheus"])
    instance = f"127.0.0.1:{port}"
    try:
        worker.start()
        sel = f'job="{JOB}",instance="{instance}"'
        # A first scrape before any event: rates and histogram quantiles need an increase
        # between two scrapes, not a load that was all in before the first one.
        wait_for(
            lambda: prometheus.value(f"sum(engage_worker_ready{{{sel}}})") is not None,
            timeout=60,
            interval=0.5,
            what=f"a first scrape of {instance}",
        )
        n = len(NPS_SCORES)
        customers = customer_ids(unique("obs"), n - HELD_OUT_CUSTOMERS, HELD_OUT_CUSTOMERS)
        everyone = len(customers) + len(HISTORY)
        start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=10)
        ids = load(worker, customers, start)
        consumed = worker.metric("engage_events_consumed_total")

        def scraped_all() -> bool:
            healthy = prometheus.query(f'up{{job="{JOB}"}} == 1')
            if {r["metric"]["instance"] for r in healthy} != {instance}:
                return False  # a reload applies new targets asynchronously
            return (
                prometheus.value(f"sum(engage_events_consumed_total{{{sel}}})") == consumed
                and prometheus.value(f"sum(engage_table_customers{{{sel}}})") == everyone
                and prometheus.value(f'sum(engage_active_customers{{{sel},window="1d"}})')
                == len(customers)
            )

        wait_for(
            scraped_all,
            timeout=60,
            interval=0.5,
            what=f"Prometheus scraping all of the load from {instance}, its only healthy target",
        )
        _, body = worker.get("/metrics")
        yield Scraped(worker, prometheus, instance, customers, body, ids)
    finally:
        worker.stop()
        if reconfigured is not None:
            devstack.ensure_up(("prometheus",), settings=settings)


def test_worker_metrics_pass_promtool(scraped: Scraped) -> None:
    """`promtool check metrics` on a loaded worker's /metrics. No lint is tolerated: each of
    promtool's lints (a counter without _total, a missing HELP, a non-base unit, camelCase,
    a reserved suffix) breaks a SPEC §5 rule, so none is expected."""
    run = subprocess.run(
        [PROMTOOL, "check", "metrics"], input=scraped.body, capture_output=True, timeout=60
    )
    output = (run.stdout + run.stderr).decode()
    assert run.returncode == 0 and not output.strip(), output


def test_prometheus_loaded_every_recording_rule(scraped: Scraped) -> None:
    groups = scraped.prometheus.get("/api/v1/rules", type="record")["groups"]
    loaded = {
        rule["name"]: rule
        for group in groups
        if group["file"].endswith("/rules/engage.yml")
        for rule in group["rules"]
    }
    assert sorted(loaded) == sorted(rule_names())

    def all_evaluated() -> list[str] | None:
        groups = scraped.prometheus.get("/api/v1/rules", type="record")["groups"]
        bad = [
            f"{rule['name']}: {rule['health']} {rule.get('lastError', '')}"
            for group in groups
            if group["file"].endswith("/rules/engage.yml")
            for rule in group["rules"]
            if rule["health"] != "ok"
        ]
        return None if bad else ["ok"]

    wait_for(all_evaluated, timeout=30, what="every rule evaluated without error")


def test_nps_and_csat_rules_equal_the_answers_sent(scraped: Scraped) -> None:
    prometheus = scraped.prometheus
    promoters = sum(s >= 9 for s in NPS_SCORES)
    passives = sum(7 <= s <= 8 for s in NPS_SCORES)
    detractors = sum(s <= 6 for s in NPS_SCORES)
    nps = 100 * (promoters - detractors) / len(NPS_SCORES)
    csat = 100 * sum(s >= 4 for s in CSAT_SCORES) / len(CSAT_SCORES)
    ces = sum(CES_SCORES) / len(CES_SCORES)
    sel = f'{{job="{JOB}"}}'

    def rules_caught_up() -> dict[str, float | None] | None:
        got = {
            "nps": prometheus.value(f"engage:nps:score{sel}"),
            "csat": prometheus.value(f"engage:csat:percent{sel}"),
            "ces": prometheus.value(f"engage:ces:mean{sel}"),
            **{
                c: prometheus.value(f'engage:nps_responses:sum{{job="{JOB}",category="{c}"}}')
                for c in ("promoter", "passive", "detractor")
            },
        }
        want = {
            "nps": nps,
            "csat": csat,
            "ces": ces,
            "promoter": promoters,
            "passive": passives,
            "detractor": detractors,
        }
        ok = all(got[k] is not None and math.isclose(got[k], v) for k, v in want.items())
        return got if ok else None

    got = wait_for(rules_caught_up, timeout=60, interval=0.5, what="NPS and CSAT rules")
    assert got["nps"] == pytest.approx(100 * (4 - 3) / 9)
    assert got["csat"] == pytest.approx(100 * 6 / 9)
    # The `_1h` variants are not compared: increase() over the hour also counts the answers of
    # earlier workers on the same target, and extrapolates. Their panels are checked below.


def test_customer_value_and_interaction_rules_equal_the_events_sent(scraped: Scraped) -> None:
    """Retention and churn, CLV, prompted share, social engagement, dwell time and nudge
    click-through, each evaluated by Prometheus from the worker's components, against the
    values computed here from the events `load` sent."""
    prometheus = scraped.prometheus
    n = len(scraped.customers)
    # Retention cohorts (HISTORY; the load's own customers were all first seen 10 minutes ago):
    # 7d: active, lapsed, gone, recent known at the start, only `active` seen since;
    # 30d and 90d: active, lapsed, gone known at the start; `active` seen within 30 days,
    # `active` and `lapsed` (60 days ago) within 90.
    retention = {"7d": 1 / 4, "30d": 1 / 3, "90d": 2 / 3}
    # CLV = AOV x orders per year (at least one year) x 3, in the first purchase's currency:
    # customers k % 3 == 0 first paid 25.00 USD (then 12.50 EUR): 25 x 1 x 3 = 75 USD;
    # the others 25.00 + 12.50 EUR: 18.75 x 2 x 3 = 112.50 EUR.
    usd = sum(1 for k in range(n) if k % 3 == 0)
    eur = n - usd
    # Clicks: a page view and an email open per customer, a share each, a comment every other
    # one, the nudge clicks; two page views per history customer.
    nudge = sum(nudge_clicks(k) for k in range(n))
    comments = sum(1 for k in range(n) if k % 2 == 0)
    clicks = 2 * n + n + comments + nudge + 2 * len(HISTORY)
    dwell = n * SHARE_DWELL_S + comments * COMMENT_DWELL_S + nudge * NUDGE_DWELL_S
    dwell_count = n + comments + nudge
    sel = f'job="{JOB}"'
    ctr = f'engage:nudge_click_through:ratio{{{sel},ritual="post_purchase_welcome"'
    want = {
        **{f'engage:retention:ratio{{{sel},window="{w}"}}': v for w, v in retention.items()},
        **{f'engage:churn:ratio{{{sel},window="{w}"}}': 1 - v for w, v in retention.items()},
        f'engage:clv:sum{{{sel},currency="USD"}}': 75.0 * usd,
        f'engage:clv:sum{{{sel},currency="EUR"}}': 112.5 * eur,
        f'engage:clv:mean{{{sel},currency="EUR"}}': 112.5,
        f'engage:customers_by_clv_band:sum{{{sel},currency="USD",band="0-100"}}': usd,
        f'engage:customers_by_clv_band:sum{{{sel},currency="EUR",band="100-500"}}': eur,
        f'engage:customers_by_clv_band:sum{{{sel},currency="EUR",band="5000+"}}': 0,
        f"engage:prompted_interactions:ratio{{{sel}}}": nudge / clicks,
        f'engage:social_interactions:sum{{{sel},action="share"}}': n,
        f'engage:social_interactions:sum{{{sel},action="comment"}}': comments,
        f"engage:dwell_seconds:mean{{{sel}}}": dwell / dwell_count,
        f'{ctr},arm="treated"}}': CLICKING_TREATED / (n - HELD_OUT_CUSTOMERS),
        f'{ctr},arm="held_out"}}': CLICKING_HELD_OUT / HELD_OUT_CUSTOMERS,
    }
    # The same numbers, spelled out for the reader.
    assert (usd, eur, comments, nudge, clicks) == (3, 6, 5, 6, 46)
    assert dwell / dwell_count == 49 / 20
    delivered = sum(
        v
        for labels, v in _samples(scraped.body, "engage_ritual_decisions_total")
        if labels["status"] == "delivered"
    )
    assert delivered > 0
    want[f"engage:prompted_clicks_per_nudge:ratio{{{sel}}}"] = nudge / delivered
    got: dict[str, float | None] = {}

    def rules_caught_up() -> bool:
        got.update({expr: prometheus.value(expr) for expr in want})
        return all(got[k] is not None and math.isclose(got[k], v) for k, v in want.items())

    try:
        wait_for(rules_caught_up, timeout=60, interval=0.5, what="customer value rules")
    except Exception:
        wrong = {k: (got.get(k), v) for k, v in want.items() if got.get(k) != v}
        raise AssertionError(f"rules (got, want): {wrong}") from None


def _samples(body: bytes, name: str) -> list[tuple[dict[str, str], float]]:
    return [
        (sample.labels, sample.value)
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
        if sample.name == name
    ]


@pytest.mark.parametrize(
    ("panel", "expr"), [pytest.param(panel, expr, id=panel) for panel, expr in dashboard_queries()]
)
def test_every_dashboard_query_returns_data(scraped: Scraped, panel: str, expr: str) -> None:
    missing = raw_metrics_of(expr) - exported_families(scraped.body)
    pending = missing & PENDING_METRICS
    if pending:
        pytest.skip(f"the worker does not export {', '.join(sorted(pending))} yet")
    assert not missing, f"{panel}: the worker exports no {', '.join(sorted(missing))}"
    query = expand(expr)

    def has_data() -> list[dict[str, Any]] | None:
        result = scraped.prometheus.query(query)
        finite = [r for r in result if math.isfinite(float(r["value"][1]))]
        return result if finite else None

    wait_for(has_data, timeout=30, interval=0.5, what=f"{panel}: {query}")


# --------------------------------------------------------------------------------------------
# Cardinality
# --------------------------------------------------------------------------------------------


def test_series_do_not_grow_with_customers(make_worker) -> None:
    """The same mix of events from N and then 2N more customers: the set of series is the
    same, every label value comes from a closed set, and no id ever becomes a label value."""
    worker = make_worker(ENGAGE_KPI_INTERVAL_S="1").start()
    prefix = f"card-{uuid.uuid4().hex[:8]}"
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=10)
    n = 6
    ids = load(worker, customer_ids(f"{prefix}-a", n - 1, 1), start)

    def every_partition_clocked() -> set[tuple[str, tuple[tuple[str, str], ...]]] | None:
        """Per-partition gauges appear with a partition's first batch (a tick at the latest)."""
        now = series(worker.get("/metrics")[1])
        clocked = {dict(labels).get("partition") for name, labels in now
                   if name == "engage_partition_clock_seconds"}  # fmt: skip
        return now if clocked >= {str(p) for p in range(worker.partitions)} else None

    after_n = wait_for(every_partition_clocked, timeout=30, what="a clock on every partition")
    ids |= load(worker, customer_ids(f"{prefix}-b", 2 * n - 1, 1), start)
    _, body = worker.get("/metrics")
    after_3n = series(body)

    # Consumer lag appears per input topic-partition once it has been fetched from (bounded by
    # topics x partitions, checked below with the other labels), not per customer.
    lazy = {s for s in after_3n | after_n if s[0] == "engage_consumer_lag_messages"}
    grown, gone = after_3n - after_n - lazy, after_n - after_3n - lazy
    assert not grown and not gone, {"new": grown, "gone": gone}
    for name, labels in after_3n:
        for label, value in labels:
            assert value not in ids, f"{name} has an id as the value of {label}: {value}"
            allowed = CLOSED_LABELS.get(label)
            assert allowed is not None, f"{name}: label {label!r} has no declared closed set"
            ok = allowed.match(value) if isinstance(allowed, re.Pattern) else value in allowed
            assert ok, f"{name}{{{label}={value!r}}} is outside the label's closed set"
