"""`engage report`: the KPIs as one self-contained HTML file people would rather look at.

    engage report --prometheus http://127.0.0.1:9090 --out report.html
    engage report --kpis http://127.0.0.1:6066 --out report.html

With `--prometheus`, the figures are the components of every worker summed (the cluster) and the
KPI trends come from range queries; with `--kpis`, the figures are one worker's `GET /kpis`
snapshot and there are no trends (the page says so). Both together: the figures from /kpis and
the trends from Prometheus (what `engage demo` does). The page itself is built by
`stream.tools.charts` (pure); this module only fetches and writes.

The bearer token for /kpis comes from ENGAGE_API_TOKEN, never from the command line (where any
user of the machine reads it in the process list), and goes only to the host it was meant
for: a redirect to another host, port or scheme is followed without it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from stream.cli import command_parser
from stream.telemetry.kpis import summary_of
from stream.telemetry.samples import Samples
from stream.tools.charts import ReportData, Trend, render

DEFAULT_SELECTOR = 'job="engage"'
#: (title, PromQL with {sel} for the label matchers, unit): raw components, so that a selector
#: of any labels (job, instance) applies; a ratio with a zero denominator has no point.
TRENDS: tuple[tuple[str, str, str], ...] = (
    (
        "NPS",
        '100 * (sum(engage_nps_responses_total{{{sel},category="promoter"}})'
        ' - sum(engage_nps_responses_total{{{sel},category="detractor"}}))'
        " / sum(engage_nps_responses_total{{{sel}}})",
        "",
    ),
    (
        "CSAT",
        "100 * sum(engage_csat_satisfied_total{{{sel}}})"
        " / sum(engage_csat_responses_total{{{sel}}})",
        " %",
    ),
    ("Active customers, 7 days", 'sum(engage_active_customers{{{sel},window="7d"}})', ""),
    (
        "Retention, 30 days",
        'sum(engage_retention_retained_customers{{{sel},window="30d"}})'
        ' / sum(engage_retention_cohort_customers{{{sel},window="30d"}})',
        "",
    ),
    (
        "Prompted share",
        'sum(engage_clicks_total{{{sel},prompted="true"}}) / sum(engage_clicks_total{{{sel}}})',
        "",
    ),
    ("Events per second", "sum(rate(engage_events_consumed_total{{{sel}}}[1m]))", ""),
    (
        "Nudges delivered per second",
        # PromQL is written as Prometheus reads it: "delivered" is Status.DELIVERED's value.
        'sum(rate(engage_ritual_decisions_total{{{sel},status="delivered"}}[1m]))',
        "",
    ),
    (
        "Dead letters per second",
        "sum(rate(engage_dlq_messages_total{{{sel}}}[1m]))",
        "",
    ),
    (
        "End-to-end lag p99 (s)",
        "histogram_quantile(0.99, sum by (le) "
        "(rate(engage_end_to_end_lag_seconds_bucket{{{sel}}}[1m])))",
        "",
    ),
)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class ReportError(Exception):
    """A source that cannot be read; the message says which and why."""


class _SameOriginAuthorization(urllib.request.HTTPRedirectHandler):
    """Follows redirects, but drops `Authorization` when one leads to another origin (scheme,
    host or port): urllib would otherwise send the token to whatever host a redirect names."""

    def redirect_request(
        self, req: urllib.request.Request, fp: Any, code: int, msg: str, headers: Any, newurl: str
    ) -> urllib.request.Request | None:
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and _origin(new.full_url) != _origin(req.full_url):
            new.remove_header("Authorization")
        return new


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urllib.parse.urlsplit(url)
    default = {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, (parts.hostname or "").lower(), parts.port or default


def _opener() -> urllib.request.OpenerDirector:
    return urllib.request.build_opener(urllib.request.ProxyHandler({}), _SameOriginAuthorization())


def _get_json(url: str, token: str | None = None, timeout: float = 15) -> Any:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with _opener().open(request, timeout=timeout) as resp:
            return json.load(resp)
    except urllib.error.HTTPError as exc:
        raise ReportError(f"{url}: HTTP {exc.code}") from None
    except (OSError, ValueError) as exc:
        raise ReportError(f"{url}: {exc}") from None


def kpis_url(url: str) -> str:
    """The /kpis address from a worker's base URL or the /kpis URL itself."""
    url = url.rstrip("/")
    return url if url.endswith("/kpis") else f"{url}/kpis"


def fetch_kpis(url: str, token: str | None = None) -> dict[str, Any]:
    """One worker's GET /kpis."""
    body = _get_json(kpis_url(url), token)
    if not isinstance(body, dict):
        raise ReportError(f"{url}: not a KPI summary")
    return body


class Prometheus:
    """The few Prometheus HTTP API calls the report needs."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")

    def _api(self, path: str, **params: str) -> Any:
        body = _get_json(f"{self.url}{path}?{urllib.parse.urlencode(params)}")
        if body.get("status") != "success":
            raise ReportError(f"{self.url}{path}: {body.get('error', body)}")
        return body["data"]

    def samples(self, selector: str) -> Samples:
        """Every engage_* series matching `selector`, summed over the labels that tell workers
        apart (instance, job): the cluster's components."""
        data = self._api("/api/v1/query", query=f'{{__name__=~"engage_.+",{selector}}}')
        summed: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        for item in data["result"]:
            labels = dict(item["metric"])
            name = labels.pop("__name__")
            for drop in ("instance", "job"):
                labels.pop(drop, None)
            value = float(item["value"][1])
            if not math.isfinite(value):
                continue
            key = (name, tuple(sorted(labels.items())))
            summed[key] = summed.get(key, 0.0) + value
        values: dict[str, list[tuple[dict[str, str], float]]] = {}
        for (name, labels), value in summed.items():
            values.setdefault(name, []).append((dict(labels), value))
        return Samples(values)

    def trends(self, selector: str, *, start: float, end: float, step: float) -> list[Trend]:
        out = []
        for title, template, unit in TRENDS:
            data = self._api(
                "/api/v1/query_range",
                query=template.format(sel=selector),
                start=f"{start:.3f}",
                end=f"{end:.3f}",
                step=f"{step:g}",
            )
            points: list[tuple[float, float]] = []
            for series in data["result"][:1]:
                points = [(float(t), float(v)) for t, v in series["values"]]
            out.append(Trend(title, [(t, v) for t, v in points if math.isfinite(v)], unit))
        return out


def parse_range(text: str) -> float:
    """'90s', '30m', '1h', '2d' -> seconds."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"expected a duration like 30m, 1h or 2d, got {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def build(
    *,
    prometheus: str | None,
    kpis: str | None,
    selector: str = DEFAULT_SELECTOR,
    window_s: float = 3600.0,
    token: str | None = None,
    now: float | None = None,
) -> ReportData:
    """Fetch what the page needs from the sources given (at least one)."""
    if prometheus is None and kpis is None:
        raise ReportError("give --prometheus URL, --kpis URL or both")
    end = time.time() if now is None else now
    trends: list[Trend] = []
    sources = []
    note = ""
    if kpis is not None:
        summary = fetch_kpis(kpis, token)
        sources.append(kpis_url(kpis))
    if prometheus is not None:
        prom = Prometheus(prometheus)
        if kpis is None:
            summary = summary_of(prom.samples(selector), scope=f"cluster ({selector})")
        step = max(window_s / 240, 5.0)
        trends = prom.trends(selector, start=end - window_s, end=end, step=step)
        sources.append(f"{prometheus} ({selector})")
        if not any(t.series for t in trends):
            note = f"Prometheus has no samples for {selector} in the last {window_s:g} s."
    return ReportData(
        summary=summary,
        source=", ".join(sources),
        generated_at=datetime.fromtimestamp(end, UTC),
        trends=trends,
        note=note,
    )


def write(data: ReportData, out: Path) -> Path:
    """Write the page; returns its absolute path."""
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(data), encoding="utf-8")
    return out


def _parser() -> argparse.ArgumentParser:
    parser = command_parser(
        "report",
        "Write the KPIs, lift with intervals, decisions and pipeline health as one "
        "self-contained HTML file (inline SVG charts, nothing loaded at view time).",
    )
    parser.epilog = (
        f"{parser.epilog} ENGAGE_API_TOKEN, if set, is sent as the bearer token to /kpis "
        "(never to another host a redirect names)."
    )
    parser.add_argument(
        "--prometheus",
        metavar="URL",
        help="Prometheus base URL: cluster-wide figures and KPI trends",
    )
    parser.add_argument(
        "--kpis",
        metavar="URL",
        help="a worker's base URL or /kpis URL: that worker's snapshot (no trends)",
    )
    parser.add_argument("--out", default="report.html", type=Path, help="default: report.html")
    parser.add_argument(
        "--selector",
        default=DEFAULT_SELECTOR,
        help=f"Prometheus label matchers of the workers (default: {DEFAULT_SELECTOR})",
    )
    parser.add_argument(
        "--range",
        dest="window",
        default="1h",
        type=parse_range,
        help="how far back the trends go (default: 1h)",
    )
    parser.add_argument(
        "--backtest",
        metavar="SUMMARY.json",
        type=Path,
        help="add a Backtest section from `engage rules diff --out DIR` (DIR/summary.json); "
        "alone: a page of that section only",
    )
    return parser


def main(argv: list[str]) -> int:
    """`engage report`: 0 when the file is written, 1 when a source cannot be read, 2 on usage."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.prometheus is None and args.kpis is None and args.backtest is None:
        parser.error("give --prometheus URL, --kpis URL or both")
    backtest = None
    if args.backtest is not None:
        from stream.tools import backtest_report

        try:
            backtest = backtest_report.load(args.backtest)
        except backtest_report.BacktestError as exc:
            print(f"engage report: {exc}", file=sys.stderr)
            return 1
        if args.prometheus is None and args.kpis is None:
            print(backtest_report.write_page(backtest, args.out))
            return 0
    try:
        data = build(
            prometheus=args.prometheus,
            kpis=args.kpis,
            selector=args.selector,
            window_s=args.window,
            token=os.environ.get("ENGAGE_API_TOKEN") or None,
        )
    except ReportError as exc:
        print(f"engage report: {exc}", file=sys.stderr)
        return 1
    out = write(data, args.out)
    if backtest is not None:
        backtest_report.add_to(out, backtest)
    print(out)
    return 0
