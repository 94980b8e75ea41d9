"""`engage report`: one self-contained HTML file whose every chart draws in a real browser.

The page is rendered from a real worker's /kpis in headless Chromium (Debian's package,
installed when missing by `devstack.ensure_tools`, the same code as `make tools`): the
page's own check marks each chart drawn when it was laid out with a non-empty SVG drawing and
records script errors; the DOM Chromium dumps after running it is what the test reads. A PNG
screenshot is saved next to the report.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from schemas.nudges import RITUALS
from stream.core.lift import lift
from stream.tools import devstack
from stream.tools.charts import ReportData, Trend, render
from stream.tools.report import build, parse_range
from tests.harness import ROOT, wait_for
from tests.telemetry.test_observability import HELD_OUT_CUSTOMERS, NPS_SCORES, customer_ids, load

CHARTS = {"quadrants", "funnel", "decisions", "lift-came_back", "dlq"}


def sample_summary() -> dict[str, Any]:
    """A /kpis-shaped summary with something in every chart."""
    return {
        "scope": "worker",
        "nps": 12.5,
        "nps_responses": {"promoter": 4, "passive": 3, "detractor": 3},
        "quadrants": {"advocate": 5, "critic": 1, "passive": 9, "quiet_loyalist": 2},
        "lifecycle_stages": {"new": 10, "active": 30, "at_risk": 4, "dormant": 2},
        "ritual_decisions": {r: {"delivered": 5, "held_out": 1, "suppressed": 1} for r in RITUALS},
        "lift": {"we_noticed": {"came_back": lift(40, 90, 3, 12).to_dict()}},
        "lift_by_rules_version": {
            "2026.11-1": {"we_noticed": {"came_back": lift(30, 60, 2, 8).to_dict()}},
            "2026.12-<b>2": {"browse_abandon": {"came_back": lift(10, 30, 1, 4).to_dict()}},
        },
        "retention": {"30d": {"retention_rate": 0.5, "churn_rate": 0.5, "cohort": 8}},
        "clv": {"EUR": {"sum": 1000.0, "customers": 4, "mean": 250.0, "bands": {}}},
        "pipeline": {"consumed": 1000, "dead_letters": {"malformed_json": 3, "oversized": 1}},
    }


def test_page_is_self_contained_and_has_every_chart() -> None:
    trend = Trend("NPS", [(1_700_000_000.0 + 60 * i, float(i % 7)) for i in range(30)])
    page = render(ReportData(sample_summary(), "test", datetime(2026, 3, 2, tzinfo=UTC), [trend]))
    # Nothing is fetched at view time: no external scripts, styles, images or fonts.
    assert not re.search(r"<(link|img|iframe)\b|\bsrc=|@import|url\(", page)
    assert set(re.findall(r"https?://[^\s\"'<]+", page)) == {"http://www.w3.org/2000/svg"}
    charts = set(re.findall(r'data-chart="([^"]+)"', page))
    assert charts == CHARTS | {"trend-NPS"}
    assert "not yet: " in page and "more" in page  # the lift verdict, 3 of 12 held out
    assert "we noticed" in page
    # lift per rules version, a version string escaped like everything else
    assert "rules version 2026.11-1" in page and "rules version 2026.12-&lt;b&gt;2" in page
    assert "<td>browse_abandon</td>" in page and "<td>30/60</td>" in page


def test_range_parsing() -> None:
    assert parse_range("90s") == 90 and parse_range("2h") == 7200 and parse_range("1d") == 86400
    with pytest.raises(Exception, match="duration"):
        parse_range("an hour")


def test_help_prints_usage_and_starts_nothing(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "stream", "report", "--help"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert run.returncode == 0 and "usage: engage report" in run.stdout
    assert list(tmp_path.iterdir()) == []  # no report.html written
    none = subprocess.run(
        [sys.executable, "-m", "stream", "report"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert none.returncode == 2 and "--prometheus" in none.stderr


@contextmanager
def kpis_server(redirects: dict[str, str]) -> Iterator[tuple[str, list[tuple[str, str | None]]]]:
    """A /kpis endpoint on 127.0.0.1 that redirects the paths in `redirects` (302) and answers
    the sample summary elsewhere; yields its base URL and the (path, Authorization) it saw."""
    seen: list[tuple[str, str | None]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append((self.path, self.headers.get("Authorization")))
            target = redirects.get(self.path)
            body = b"" if target else json.dumps(sample_summary()).encode()
            self.send_response(302 if target else 200)
            if target:
                self.send_header("Location", target)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


def test_token_from_the_environment_never_to_another_host(tmp_path: Path) -> None:
    token = "report-token-1"
    with kpis_server({}) as (other, other_seen):
        # The worker's address redirects: once within itself, then to another host:port.
        redirects = {"/old/kpis": "/kpis", "/kpis": f"{other}/kpis"}
        with kpis_server(redirects) as (worker, worker_seen):
            run = subprocess.run(
                [sys.executable, "-m", "stream", "report", "--kpis", f"{worker}/old/kpis",
                 "--out", str(tmp_path / "r.html")],
                cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
                env={**os.environ, "ENGAGE_API_TOKEN": token},
            )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "r.html").exists()
    # Same origin: the token goes along; the other host never sees it.
    assert worker_seen == [("/old/kpis", f"Bearer {token}"), ("/kpis", f"Bearer {token}")]
    assert other_seen == [("/kpis", None)]
    # There is no way to put it on the command line (where `ps` shows it to everyone).
    flag = subprocess.run(
        [sys.executable, "-m", "stream", "report", "--kpis", worker, "--token", token,
         "--out", str(tmp_path / "flag.html")],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert flag.returncode == 2 and "--token" in flag.stderr
    assert not (tmp_path / "flag.html").exists()


def chromium() -> str:
    """The browser, installed by the project's own code when missing (`make tools`)."""
    return devstack.ensure_tools(("chromium",))["chromium"]


def browse(page: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         "--allow-file-access-from-files", *args, page.as_uri()],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def drawn(dom: str) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    """The body's attributes and each chart's, from the DOM after the page's script ran."""
    body = dict(re.findall(r'(data-[a-z-]+)="([^"]*)"', re.search(r"<body[^>]*>", dom)[0]))
    charts = {}
    for tag in re.findall(r"<svg [^>]*>", dom):
        attrs = dict(re.findall(r'([a-z-]+)="([^"]*)"', tag))
        charts[attrs["data-chart"]] = attrs
    return body, charts


@pytest.mark.integration
def test_report_of_a_worker_draws_every_chart_in_chromium(
    make_worker, stack: dict[str, str], tmp_path: Path
) -> None:
    worker = make_worker(ENGAGE_KPI_INTERVAL_S="1").start()
    customers = customer_ids(
        f"rep-{tmp_path.name[-6:]}", len(NPS_SCORES) - HELD_OUT_CUSTOMERS, HELD_OUT_CUSTOMERS
    )
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=10)
    load(worker, customers, start)

    def refreshed() -> dict[str, Any] | None:
        kpis = json.loads(worker.get("/kpis")[1])
        return kpis if sum(kpis["quadrants"].values()) >= len(customers) else None

    wait_for(refreshed, timeout=30, what="a segment refresh with every customer")
    out = tmp_path / "report.html"
    run = subprocess.run(
        [sys.executable, "-m", "stream", "report", "--kpis",
         f"http://127.0.0.1:{worker.web_port}", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == str(out.resolve())
    page = out.read_text()
    assert "no history to draw" in page  # a /kpis snapshot has no trends, and says so

    dump = browse(out, "--dump-dom")
    assert dump.returncode == 0, dump.stderr[-2000:]
    body, charts = drawn(dump.stdout)
    assert body["data-report-status"] == "ok", (body, dump.stderr[-2000:])
    assert body["data-errors"] == "0"
    assert set(charts) == CHARTS
    assert all(c["data-drawn"] == "true" for c in charts.values()), charts
    # Real marks, not "no data" placeholders: 9 customers in the heat map and the funnel,
    # decisions of several rituals, both arms of post_purchase_welcome in the lift plot.
    assert int(charts["quadrants"]["data-marks"]) == 6
    assert int(charts["funnel"]["data-marks"]) >= 5
    assert int(charts["decisions"]["data-marks"]) > 10
    assert int(charts["lift-came_back"]["data-marks"]) >= 7
    assert "post purchase welcome" in dump.stdout

    png = tmp_path / "report.png"
    shot = browse(out, f"--screenshot={png}", "--window-size=1280,2000")
    assert shot.returncode == 0, shot.stderr[-2000:]
    header = png.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    assert (int.from_bytes(header[16:20], "big"), int.from_bytes(header[20:24], "big")) == (
        1280,
        2000,
    )
    assert png.stat().st_size > 20_000  # a drawn page, not a blank one
    print(f"report screenshot: {png}")


@pytest.mark.integration
def test_report_from_prometheus_draws_trends(stack: dict[str, str], tmp_path: Path) -> None:
    """The cluster view: components summed from the local Prometheus, trends from range
    queries (whatever the local Prometheus holds; the page must draw either way)."""
    if "prometheus" not in stack:
        pytest.skip("no local Prometheus")
    data = build(prometheus=stack["prometheus"], kpis=None, window_s=900)
    assert data.summary["scope"].startswith("cluster")
    assert len(data.trends) == 9
    out = tmp_path / "cluster.html"
    out.write_text(render(data))
    body, charts = drawn(browse(out, "--dump-dom").stdout)
    assert body["data-report-status"] == "ok", body
    assert {n for n in charts if n.startswith("trend-")} == {
        f"trend-{t.title}" for t in data.trends
    }
