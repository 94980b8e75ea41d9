"""The report's page: KPI figures and charts as one self-contained HTML file (pure, no I/O).

Every chart is inline SVG generated here, so the file needs nothing at view time: no network,
no CDN, no chart library. A few lines of inline script only check, in the browser that opens
it, that every chart was laid out with a non-empty drawing, and record the result on the page
(`data-drawn` on each chart, `data-report-status` on the body), which is what the headless
Chromium test reads.

Input is the KPI summary (the shape of `GET /kpis`, see `stream.telemetry.kpis.summary`) and,
when the data came from Prometheus, KPI trends as lists of (unix time, value).
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from schemas.nudges import RITUALS
from stream.core.vocabulary import Status

Series = list[tuple[float, float]]

QUADRANT_GRID = (  # rows: engaged, not engaged; columns: negative, neutral, positive
    ("engaged", ("critic", "engaged_neutral", "advocate")),
    ("not engaged", ("detached", "passive", "quiet_loyalist")),
)
SENTIMENTS = ("negative", "neutral", "positive")
FUNNEL = ("new", "active", "reactivated", "at_risk", "dormant")
STATUS_COLOURS = {
    Status.DELIVERED: "#2e7d32",
    Status.HELD_OUT: "#90a4ae",
    Status.SUPPRESSED: "#f9a825",
    Status.EXPIRED: "#c62828",
    Status.CANCELLED: "#8d6e63",
}
STAGE_COLOURS = {
    "new": "#42a5f5",
    "active": "#2e7d32",
    "reactivated": "#26a69a",
    "at_risk": "#f9a825",
    "dormant": "#9e9e9e",
}
INK, MUTED, GRID, ACCENT = "#263238", "#607d8b", "#e0e6ea", "#1565c0"


@dataclass
class Trend:
    """One KPI over time."""

    title: str
    series: Series
    unit: str = ""


@dataclass
class ReportData:
    """What the page shows."""

    summary: dict[str, Any]
    source: str
    generated_at: datetime
    trends: list[Trend] = field(default_factory=list)
    note: str = ""


# --- SVG primitives ----------------------------------------------------------------------------


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _svg(name: str, width: int, height: int, body: Iterable[str], title: str) -> str:
    return (
        f'<svg class="chart" data-chart="{_e(name)}" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" role="img" aria-label="{_e(title)}" '
        f'xmlns="http://www.w3.org/2000/svg" font-family="system-ui, sans-serif">'
        + "".join(body)
        + "</svg>"
    )


def _text(
    x: float,
    y: float,
    text: object,
    *,
    size: int = 12,
    fill: str = INK,
    anchor: str = "start",
    weight: str = "normal",
) -> str:
    return (
        f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" fill="{fill}" '
        f'text-anchor="{anchor}" font-weight="{weight}">{_e(text)}</text>'
    )


def _rect(x: float, y: float, w: float, h: float, fill: str, title: str = "") -> str:
    tip = f"<title>{_e(title)}</title>" if title else ""
    return (
        f'<rect x="{x:.1f}" y="{y:.1f}" width="{max(w, 0):.1f}" height="{max(h, 0):.1f}" '
        f'fill="{fill}">{tip}</rect>'
    )


def _line(
    x1: float, y1: float, x2: float, y2: float, stroke: str = GRID, width: float = 1, dash: str = ""
) -> str:
    extra = f' stroke-dasharray="{dash}"' if dash else ""
    return (
        f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" stroke="{stroke}" '
        f'stroke-width="{width}"{extra}/>'
    )


def _no_data(width: int, height: int, what: str) -> list[str]:
    return [
        _rect(0, 0, width, height, "#f5f7f8"),
        _text(width / 2, height / 2, f"no {what} yet", size=13, fill=MUTED, anchor="middle"),
    ]


def fmt(value: float | None, digits: int = 1, suffix: str = "") -> str:
    """A number for people: thousands separated, None as a dash."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if abs(value) >= 1000:
        return f"{value:,.0f}{suffix}"
    if float(value).is_integer():
        return f"{value:.0f}{suffix}"
    return f"{value:.{digits}f}{suffix}"


def pct(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{100 * value:.{digits}f} %"


# --- charts -----------------------------------------------------------------------------------


def trend_chart(trend: Trend, width: int = 300, height: int = 150) -> str:
    """A small line chart of one KPI over time, its latest value in the title."""
    pts = [(t, v) for t, v in trend.series if math.isfinite(v)]
    name = f"trend-{trend.title}"
    if len(pts) < 2:
        return _svg(name, width, height, _no_data(width, height, "trend"), trend.title)
    left, right, top, bottom = 44, 10, 24, 22
    t0, t1 = pts[0][0], pts[-1][0]
    lo, hi = min(v for _, v in pts), max(v for _, v in pts)
    if hi == lo:
        lo, hi = lo - 1, hi + 1
    span_t = (t1 - t0) or 1.0

    def x(t: float) -> float:
        return left + (t - t0) / span_t * (width - left - right)

    def y(v: float) -> float:
        return top + (hi - v) / (hi - lo) * (height - top - bottom)

    body = [_text(4, 15, trend.title, size=12, weight="600")]
    body.append(
        _text(
            width - 4,
            15,
            fmt(pts[-1][1], 2, trend.unit),
            size=12,
            anchor="end",
            fill=ACCENT,
            weight="600",
        )
    )
    for v in (lo, (lo + hi) / 2, hi):
        body.append(_line(left, y(v), width - right, y(v)))
        body.append(_text(left - 4, y(v) + 4, fmt(v, 2), size=9, fill=MUTED, anchor="end"))
    for t, anchor in ((t0, "start"), (t1, "end")):
        label = datetime.fromtimestamp(t, UTC).strftime("%H:%M UTC" if anchor == "end" else "%H:%M")
        body.append(_text(x(t), height - 6, label, size=9, fill=MUTED, anchor=anchor))
    path = " ".join(
        f"{'M' if i == 0 else 'L'}{x(t):.1f},{y(v):.1f}" for i, (t, v) in enumerate(pts)
    )
    body.append(f'<path d="{path}" fill="none" stroke="{ACCENT}" stroke-width="2"/>')
    return _svg(name, width, height, body, trend.title)


def quadrant_heatmap(quadrants: dict[str, float], width: int = 540, height: int = 230) -> str:
    """Engaged x sentiment as a 2 x 3 heat map: darker = more customers."""
    total = sum(quadrants.values())
    if not total:
        return _svg("quadrants", width, height, _no_data(width, height, "customers"), "Quadrants")
    left, top, cw, ch = 96, 28, (width - 100) / 3, (height - 40) / 2
    peak = max(quadrants.values()) or 1
    body = []
    for j, feeling in enumerate(SENTIMENTS):
        body.append(_text(left + (j + 0.5) * cw, 18, feeling, size=11, fill=MUTED, anchor="middle"))
    for i, (row, names) in enumerate(QUADRANT_GRID):
        body.append(
            _text(left - 8, top + (i + 0.5) * ch + 4, row, size=11, fill=MUTED, anchor="end")
        )
        for j, name in enumerate(names):
            n = quadrants.get(name, 0)
            share = n / peak
            fill = _blend("#e3f2fd", "#0d47a1", share)
            ink = "#ffffff" if share > 0.55 else INK
            x0, y0 = left + j * cw, top + i * ch
            body.append(_rect(x0 + 1, y0 + 1, cw - 2, ch - 2, fill, f"{name}: {n:.0f}"))
            body.append(
                _text(
                    x0 + cw / 2,
                    y0 + ch / 2 - 4,
                    name.replace("_", " "),
                    size=12,
                    fill=ink,
                    anchor="middle",
                    weight="600",
                )
            )
            body.append(
                _text(
                    x0 + cw / 2,
                    y0 + ch / 2 + 14,
                    f"{n:.0f} ({100 * n / total:.0f} %)",
                    size=11,
                    fill=ink,
                    anchor="middle",
                )
            )
    return _svg("quadrants", width, height, body, "Quadrants: engaged x sentiment")


def funnel(stages: dict[str, float], width: int = 420, height: int = 230) -> str:
    """Lifecycle stages as centred bars, widest first in lifecycle order."""
    total = sum(stages.values())
    if not total:
        return _svg("funnel", width, height, _no_data(width, height, "customers"), "Lifecycle")
    peak = max(stages.values()) or 1
    row = (height - 10) / len(FUNNEL)
    label_w = 90
    usable = width - label_w - 70
    body = []
    for i, stage in enumerate(FUNNEL):
        n = stages.get(stage, 0)
        w = max(usable * n / peak, 2 if n else 0)
        y0 = 5 + i * row
        cx = label_w + usable / 2
        body.append(
            _text(
                label_w - 8,
                y0 + row / 2 + 4,
                stage.replace("_", " "),
                size=11,
                fill=MUTED,
                anchor="end",
            )
        )
        body.append(
            _rect(cx - w / 2, y0 + 4, w, row - 8, STAGE_COLOURS[stage], f"{stage}: {n:.0f}")
        )
        body.append(
            _text(
                label_w + usable + 8,
                y0 + row / 2 + 4,
                f"{n:.0f} ({100 * n / total:.0f} %)",
                size=11,
            )
        )
    return _svg("funnel", width, height, body, "Lifecycle funnel")


def decisions_chart(decisions: dict[str, dict[str, float]], width: int = 1000) -> str:
    """Ritual decisions by status: one stacked bar per ritual, with a legend."""
    rituals = [r for r in RITUALS if r in decisions] + [r for r in decisions if r not in RITUALS]
    statuses = [*Status, *sorted({s for d in decisions.values() for s in d} - set(Status))]
    row, top, label_w = 26, 30, 170
    height = top + row * max(len(rituals), 1) + 10
    totals = {r: sum(decisions[r].values()) for r in rituals}
    if not any(totals.values()):
        return _svg("decisions", width, 120, _no_data(width, 120, "decisions"), "Decisions")
    peak = max(totals.values())
    usable = width - label_w - 70
    body = []
    x = label_w
    for status in statuses:
        colour = STATUS_COLOURS.get(status, "#5c6bc0")
        body.append(_rect(x, 8, 12, 12, colour))
        body.append(_text(x + 16, 18, status.replace("_", " "), size=11))
        x += 24 + 7 * len(status)
    for i, ritual in enumerate(rituals):
        y0 = top + i * row
        body.append(
            _text(
                label_w - 8,
                y0 + row / 2 + 4,
                ritual.replace("_", " "),
                size=11,
                fill=MUTED,
                anchor="end",
            )
        )
        x = label_w
        for status in statuses:
            n = decisions[ritual].get(status, 0)
            if not n:
                continue
            w = usable * n / peak
            colour = STATUS_COLOURS.get(status, "#5c6bc0")
            body.append(_rect(x, y0 + 4, w, row - 8, colour, f"{ritual} {status}: {n:.0f}"))
            x += w
        body.append(_text(x + 6, y0 + row / 2 + 4, f"{totals[ritual]:.0f}", size=11))
    return _svg("decisions", width, height, body, "Ritual decisions by status")


def lift_chart(
    lift: dict[str, dict[str, dict[str, Any]]], outcome: str = "came_back", width: int = 1000
) -> str:
    """A forest plot: per ritual, treated minus held-out rate with its 95 % interval (Newcombe),
    the counts and the verdict."""
    rows = [(r, lift[r][outcome]) for r in RITUALS if r in lift and outcome in lift[r]]
    rows = [(r, x) for r, x in rows if x["treated"] or x["held_out"]]
    if not rows:
        return _svg(f"lift-{outcome}", width, 120, _no_data(width, 120, "decisions"), "Lift")
    row, top, label_w, plot_w = 34, 34, 170, 300
    height = top + row * len(rows) + 26
    x0 = label_w + 10

    def x(d: float) -> float:  # difference -1..1 -> pixels
        return x0 + (d + 1) / 2 * plot_w

    body = [
        _text(x0, 14, "treated − held-out rate, 95 % interval", size=11, fill=MUTED),
        _text(x0 + plot_w + 20, 14, "treated", size=11, fill=MUTED),
        _text(x0 + plot_w + 110, 14, "held out", size=11, fill=MUTED),
        _text(x0 + plot_w + 200, 14, "verdict", size=11, fill=MUTED),
    ]
    for d in (-1, -0.5, 0, 0.5, 1):
        body.append(
            _line(
                x(d),
                top - 6,
                x(d),
                top + row * len(rows),
                GRID if d else MUTED,
                1,
                "" if d == 0 else "3,3",
            )
        )
        body.append(
            _text(
                x(d),
                top + row * len(rows) + 16,
                f"{d:+.1f}" if d else "0",
                size=9,
                fill=MUTED,
                anchor="middle",
            )
        )
    for i, (ritual, item) in enumerate(rows):
        yc = top + i * row + row / 2
        diff = item["difference"]
        body.append(
            _text(label_w - 8, yc + 4, ritual.replace("_", " "), size=11, fill=MUTED, anchor="end")
        )
        significant = item["verdict"] == "significant"
        colour = "#2e7d32" if significant else ACCENT
        if diff["lower"] is not None:
            body.append(_line(x(diff["lower"]), yc, x(diff["upper"]), yc, colour, 3))
            body.append(
                f'<circle cx="{x(diff["estimate"]):.1f}" cy="{yc:.1f}" r="5" fill="{colour}">'
                f"<title>{_e(ritual)}: {diff['estimate']:+.3f} "
                f"({diff['lower']:+.3f} to {diff['upper']:+.3f})</title></circle>"
            )
        t, h = item["treated_rate"], item["held_out_rate"]
        body.append(
            _text(
                x0 + plot_w + 20, yc + 4, f"{pct(t['estimate'], 0)} of {item['treated']}", size=11
            )
        )
        body.append(
            _text(
                x0 + plot_w + 110, yc + 4, f"{pct(h['estimate'], 0)} of {item['held_out']}", size=11
            )
        )
        verdict = item["verdict"].replace(" customers needed for this effect", " needed")
        if len(verdict) > 40:  # the table below the plot has it whole
            verdict = verdict[:39] + "…"
        body.append(
            _text(
                x0 + plot_w + 200,
                yc + 4,
                verdict,
                size=11,
                fill="#2e7d32" if significant else INK,
                weight="600" if significant else "normal",
            )
        )
    return _svg(f"lift-{outcome}", width, height, body, f"Lift per ritual ({outcome})")


def bars(
    name: str, values: dict[str, float], title: str, width: int = 420, colour: str = "#c62828"
) -> str:
    """Horizontal bars of a few labelled counts (zeros shown as a dash)."""
    items = list(values.items())
    row, label_w = 22, 130
    height = 10 + row * max(len(items), 1)
    if not items:
        return _svg(name, width, 80, _no_data(width, 80, title.lower()), title)
    peak = max(values.values()) or 1
    usable = width - label_w - 60
    body = []
    for i, (label, n) in enumerate(items):
        y0 = 5 + i * row
        body.append(
            _text(
                label_w - 8,
                y0 + row / 2 + 4,
                label.replace("_", " "),
                size=11,
                fill=MUTED,
                anchor="end",
            )
        )
        body.append(_rect(label_w, y0 + 4, usable * n / peak, row - 8, colour, f"{label}: {n}"))
        body.append(_rect(label_w, y0 + row - 4, usable, 1, GRID))
        body.append(
            _text(label_w + usable * n / peak + 6, y0 + row / 2 + 4, fmt(n) if n else "–", size=11)
        )
    return _svg(name, width, height, body, title)


def _blend(low: str, high: str, share: float) -> str:
    a = [int(low[i : i + 2], 16) for i in (1, 3, 5)]
    b = [int(high[i : i + 2], 16) for i in (1, 3, 5)]
    mix = [round(x + (y - x) * max(0.0, min(share, 1.0))) for x, y in zip(a, b, strict=True)]
    return "#" + "".join(f"{c:02x}" for c in mix)


# --- the page ---------------------------------------------------------------------------------


def _tile(label: str, value: str, hint: str = "") -> str:
    tip = f'<div class="hint">{_e(hint)}</div>' if hint else ""
    return f'<div class="tile"><div class="label">{_e(label)}</div><div class="value">{_e(value)}</div>{tip}</div>'  # noqa: E501


def tiles(s: dict[str, Any]) -> list[str]:
    """The headline figures, one tile each."""
    retention = s.get("retention", {})
    clv = s.get("clv", {})
    ctr = s.get("nudge_click_through", {})
    clicked = sum(a.get("treated", {}).get("clicked", 0) for a in ctr.values())
    delivered = sum(a.get("treated", {}).get("decided", 0) for a in ctr.values())
    interactions = s.get("interactions", {})
    social = s.get("social_engagement", {})
    out = [
        _tile("NPS", fmt(s.get("nps")), f"{sum(s.get('nps_responses', {}).values()):.0f} answers"),
        _tile("CSAT", fmt(s.get("csat_percent"), 1, " %")),
        _tile("CES", fmt(s.get("ces_mean"), 2), "mean, 1..7 (higher = easier)"),
        _tile("First-contact resolution", pct(s.get("first_contact_resolution_ratio"))),
        _tile("Customers", fmt(s.get("customers"))),
        _tile("Stickiness (DAU/MAU)", pct(s.get("stickiness"))),
    ]
    for w in ("30d", "90d"):
        r = retention.get(w, {})
        out.append(
            _tile(
                f"Retention {w}",
                pct(r.get("retention_rate")),
                f"churn {pct(r.get('churn_rate'))} of {fmt(r.get('cohort'))}",
            )
        )
    for currency, c in sorted(clv.items(), key=lambda kv: -(kv[1].get("customers") or 0))[:2]:
        out.append(
            _tile(
                f"Mean CLV ({currency})",
                fmt(c.get("mean"), 2),
                f"{fmt(c.get('customers'))} buyers, sum {fmt(c.get('sum'))}",
            )
        )
    out += [
        _tile(
            "Nudge click-through",
            pct(clicked / delivered if delivered else None),
            f"{clicked:.0f} of {delivered:.0f} delivered",
        ),
        _tile(
            "Prompted share",
            pct(interactions.get("prompted_share")),
            f"of {fmt(interactions.get('clicks'))} clicks",
        ),
        _tile("Mean dwell time", fmt(s.get("dwell_seconds_mean"), 1, " s")),
        _tile(
            "Social",
            f"{fmt(social.get('share'))} / {fmt(social.get('comment'))}",
            "shares / comments",
        ),
    ]
    return out


_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;color:#263238;margin:0;
background:#f4f6f8}
header{background:#263238;color:#fff;padding:18px 28px}header h1{margin:0;font-size:22px}
header p{margin:4px 0 0;color:#b0bec5;font-size:13px}
main{padding:18px 28px;max-width:1240px}
section{background:#fff;border-radius:8px;padding:14px 18px;margin:0 0 16px;
box-shadow:0 1px 2px rgba(0,0,0,.08)}
h2{font-size:15px;margin:0 0 10px;color:#37474f}
.tiles{display:grid;grid-template-columns:repeat(auto-fill,minmax(170px,1fr));gap:10px}
.tile{background:#f7f9fa;border-radius:6px;padding:10px 12px}
.tile .label{font-size:12px;color:#607d8b}.tile .value{font-size:22px;font-weight:600}
.tile .hint{font-size:11px;color:#90a4ae}
.row{display:flex;flex-wrap:wrap;gap:16px}.row>section{flex:1 1 400px}
.grid{display:flex;flex-wrap:wrap;gap:8px}.note{font-size:12px;color:#607d8b;margin:6px 0 0}
svg.chart{max-width:100%;height:auto}
table{border-collapse:collapse;font-size:12px}td,th{padding:3px 8px;text-align:right}
td:last-child,th:last-child{text-align:left}
th{color:#607d8b;font-weight:500}td:first-child,th:first-child{text-align:left}
"""

# Runs in the browser that opens the page: marks each chart drawn when it was laid out with a
# non-empty bounding box, and records any script error, for people and for the Chromium test.
_CHECK = """
(function(){
  var errors=[];
  window.addEventListener('error',function(e){errors.push(String(e.message));});
  function check(){
    var charts=document.querySelectorAll('svg.chart'),drawn=0;
    charts.forEach(function(svg){
      var box=svg.getBBox(),marks=svg.querySelectorAll('rect,path,circle,line').length;
      var ok=box.width>0&&box.height>0&&marks>0;
      svg.setAttribute('data-drawn',ok?'true':'false');
      svg.setAttribute('data-marks',String(marks));
      if(ok){drawn++;}
    });
    document.body.setAttribute('data-charts',String(charts.length));
    document.body.setAttribute('data-charts-drawn',String(drawn));
    document.body.setAttribute('data-errors',String(errors.length));
    document.body.setAttribute('data-report-status',
      errors.length===0&&drawn===charts.length?'ok':'failed');
  }
  if(document.readyState==='loading'){document.addEventListener('DOMContentLoaded',check);}
  else{check();}
})();
"""


def render(data: ReportData) -> str:
    """The whole page as one string."""
    s = data.summary
    pipeline = s.get("pipeline", {})
    scope = s.get("scope", "worker")
    when = data.generated_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
    if data.trends:
        trends = '<div class="grid">' + "".join(trend_chart(t) for t in data.trends) + "</div>"
    else:
        trends = (
            '<p class="note">A single snapshot from one worker\'s /kpis: no history to draw. '
            "Run <code>engage report --prometheus URL</code> for trends.</p>"
        )
    lift = s.get("lift", {})
    lag = pipeline.get("end_to_end_lag_seconds", {})
    dead = {k: v for k, v in pipeline.get("dead_letters", {}).items()}
    consumed = pipeline.get("consumed") or 0
    health = [
        _tile("Consumed", fmt(consumed)),
        _tile(
            "Dead-lettered",
            fmt(sum(dead.values())),
            pct(sum(dead.values()) / consumed if consumed else None, 2) + " of consumed",
        ),
        _tile("Duplicates", fmt(pipeline.get("duplicates"))),
        _tile("Late events", fmt(pipeline.get("late_events"))),
        _tile("Lag p50 / p99", f"{fmt(lag.get('p50'), 3)} / {fmt(lag.get('p99'), 3)} s"),
        _tile("Watermark lag (max)", fmt(pipeline.get("watermark_lag_seconds_max"), 1, " s")),
    ]
    lift_table = _lift_table(lift)
    by_version = s.get("lift_by_rules_version") or {}
    versions = "".join(
        f"<h3>rules version {_e(version)}</h3>{_lift_table(lift_of)}"
        for version, lift_of in sorted(by_version.items())
    )
    sections = [
        f'<section><h2>Headline KPIs</h2><div class="tiles">{"".join(tiles(s))}</div></section>',
        f"<section><h2>KPI trends</h2>{trends}</section>",
        '<div class="row">'
        f"<section><h2>Quadrants (engaged × sentiment)</h2>"
        f"{quadrant_heatmap(s.get('quadrants', {}))}</section>"
        f"<section><h2>Lifecycle funnel</h2>{funnel(s.get('lifecycle_stages', {}))}</section>"
        "</div>",
        "<section><h2>Ritual decisions by status</h2>"
        f"{decisions_chart(s.get('ritual_decisions', {}))}</section>",
        "<section><h2>Lift per ritual: did the customer come back within 7 days?</h2>"
        f"{lift_chart(lift, 'came_back')}"
        '<p class="note">Rates with Wilson intervals, the difference with Newcombe\'s hybrid '
        "score interval, the ratio with the Katz log interval (95 %). <em>significant</em>: the "
        "difference's interval excludes 0; otherwise the held-out customers still needed for "
        "80 % power to detect the observed effect.</p>"
        f"{lift_table}</section>",
        "<section><h2>Lift per rules version</h2>"
        '<p class="note">Each decision counts for the version of the rules that made it '
        "(<code>rules_version</code>), so a rule change can be judged on its own customers.</p>"
        f"{versions or NO_DECISIONS}</section>",
        '<div class="row">'
        "<section><h2>Pipeline health</h2>"
        f'<div class="tiles">{"".join(health)}</div></section>'
        "<section><h2>Dead letters by reason</h2>"
        f"{bars('dlq', dead, 'Dead letters')}</section>"
        "</div>",
    ]
    note = f'<p class="note">{_e(data.note)}</p>' if data.note else ""
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>engage report, {_e(when)}</title><style>{_CSS}</style></head><body>"
        f"<header><h1>engage: customer engagement report</h1>"
        f"<p>{_e(when)} · source {_e(data.source)} · scope {_e(scope)}</p></header>"
        f"<main>{note}{''.join(sections)}</main><script>{_CHECK}</script></body></html>"
    )


NO_DECISIONS = '<p class="note">No treated or held-out decisions yet.</p>'


def _lift_table(lift: dict[str, Any]) -> str:
    """The lift of every ritual and outcome with decisions in either arm, as an HTML table."""
    lift_rows = []
    for ritual in [*RITUALS, *(r for r in lift if r not in RITUALS)]:
        for outcome, item in lift.get(ritual, {}).items():
            if not (item["treated"] or item["held_out"]):
                continue
            d, r = item["difference"], item["ratio"]
            lift_rows.append(
                "<tr>"
                + "".join(
                    f"<td>{_e(c)}</td>"
                    for c in (
                        ritual,
                        outcome,
                        f"{item['treated_successes']}/{item['treated']}",
                        f"{item['held_out_successes']}/{item['held_out']}",
                        _interval(d, signed=True),
                        _interval(r, ratio=True),
                        item["verdict"],
                    )
                )
                + "</tr>"
            )
    return (
        "<table><tr><th>ritual</th><th>outcome</th><th>treated</th><th>held out</th>"
        "<th>difference (95 % CI)</th><th>ratio (95 % CI)</th><th>verdict</th></tr>"
        + "".join(lift_rows)
        + "</table>"
        if lift_rows
        else NO_DECISIONS
    )


def _interval(item: dict[str, Any], *, signed: bool = False, ratio: bool = False) -> str:
    est, lo, hi = item.get("estimate"), item.get("lower"), item.get("upper")
    if est is None or lo is None or hi is None:
        return "–"
    f = "{:+.3f}" if signed else "{:.2f}"
    text = f"{f.format(est)} ({f.format(lo)} to {f.format(hi)})"
    if ratio and item.get("corrected"):
        text += " *"
    return text
