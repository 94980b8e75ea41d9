"""The "Backtest" section of `engage report`: a rules change replayed over history.

`engage rules diff OLD NEW --out DIR` writes DIR/summary.json; `engage report --backtest
DIR/summary.json` adds this section to the KPI page (or, without a KPI source, writes a page of
its own): the two versions, what changed per ritual and status, delivered volume per day before
and after as a chart, guardrail pressure and lift before and after. Pure HTML built with the
report's own primitives (`stream.tools.charts`), every value escaped.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from stream.tools.charts import (
    _CHECK,
    _CSS,
    ACCENT,
    MUTED,
    _e,
    _interval,
    _no_data,
    _rect,
    _svg,
    _text,
    _tile,
    fmt,
)

BEFORE, AFTER = "#b0bec5", ACCENT
BY_STATUS_HEAD = (
    "ritual", "status", "before", "after", "added", "removed", "changed from", "changed to"
)  # fmt: skip


class BacktestError(Exception):
    """A summary file that cannot be read or is not one of `engage rules diff`."""


def daily_chart(days: list[dict[str, Any]], width: int = 1000, height: int = 220) -> str:
    """Delivered nudges per day, before (grey) and after (blue): two bars per day."""
    title = "Delivered per day, before and after"
    if not days:
        return _svg("backtest-daily", width, 120, _no_data(width, 120, "deliveries"), title)
    left, right, top, bottom = 50, 10, 30, 30
    plot_w, plot_h = width - left - right, height - top - bottom
    peak = max(max(int(d["old"]), int(d["new"])) for d in days) or 1
    step = plot_w / len(days)
    bar = max(step * 0.42, 0.5)
    body = [
        _rect(left, 8, 12, 12, BEFORE),
        _text(left + 16, 18, "before", size=11),
        _rect(left + 80, 8, 12, 12, AFTER),
        _text(left + 96, 18, "after", size=11),
        _text(left - 6, top + 4, fmt(peak), size=10, fill=MUTED, anchor="end"),
        _text(left - 6, top + plot_h, "0", size=10, fill=MUTED, anchor="end"),
        _text(left, height - 8, days[0]["day"], size=10, fill=MUTED),
        _text(width - right, height - 8, days[-1]["day"], size=10, fill=MUTED, anchor="end"),
    ]
    for i, d in enumerate(days):
        old, new = int(d["old"]), int(d["new"])
        x = left + i * step
        tip = f"{d['day']}: {old} before, {new} after"
        for offset, n, colour in ((0.0, old, BEFORE), (bar, new, AFTER)):
            h = plot_h * n / peak
            body.append(_rect(x + offset, top + plot_h - h, bar, h, colour, tip))
    return _svg("backtest-daily", width, height, body, title)


def _table(head: tuple[str, ...], rows: list[tuple[object, ...]], empty: str) -> str:
    if not rows:
        return f'<p class="note">{_e(empty)}</p>'
    out = "<table><tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr>"
    for row in rows:
        out += "<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>"
    return out + "</table>"


def section(s: dict[str, Any]) -> str:
    """The Backtest section of a summary.json (KeyError/TypeError on another shape)."""
    old, new, hist, ch, p = s["old"], s["new"], s["history"], s["changes"], s["pressure"]
    where = hist.get("file") or f"topics of {hist.get('namespace')} since {hist.get('since')}"
    dead = hist.get("dead_lettered") or {}
    dead_text = ", ".join(f"{k} {v}" for k, v in dead.items()) or "none"
    tiles = [
        _tile("Decisions", f"{fmt(old['decisions'])} → {fmt(new['decisions'])}"),
        _tile("Added / removed", f"{fmt(ch['added'])} / {fmt(ch['removed'])}"),
        _tile("Changed", fmt(ch["changed"]), f"{fmt(ch['unchanged'])} unchanged"),
        _tile("Customers affected", fmt(s["customers_affected"])),
        _tile("Delivered", f"{fmt(old['delivered'])} → {fmt(new['delivered'])}"),
        _tile(
            "Frequency cap",
            f"{fmt(p['frequency_cap']['old'])} → {fmt(p['frequency_cap']['new'])}",
            "suppressed, before → after",
        ),
        _tile(
            "Quiet hours",
            f"{fmt(p['quiet_hours_deferred']['old'])} → {fmt(p['quiet_hours_deferred']['new'])}",
            "deferred, before → after",
        ),
    ]
    by_status = [
        (r["ritual"], r["status"], r["old"], r["new"], r["added"], r["removed"],
         r["changed_from"], r["changed_to"])
        for r in s["by_ritual_status"]
    ]  # fmt: skip
    moves = [(t["ritual"], t["old_status"], t["new_status"], t["count"]) for t in s["transitions"]]
    before = {(r["ritual"], r["outcome"]): r for r in s["lift"]["old"]}
    after = {(r["ritual"], r["outcome"]): r for r in s["lift"]["new"]}
    lift_rows = []
    for key in sorted(before.keys() | after.keys()):
        a, b = before.get(key), after.get(key)
        lift_rows.append(
            (
                key[0],
                key[1],
                _interval(a["difference"], signed=True) if a else "–",
                _interval(b["difference"], signed=True) if b else "–",
                b["verdict"] if b else "–",
            )
        )
    return (
        f'<section data-section="backtest"><h2>Backtest: {_e(old["version"])} → '
        f"{_e(new['version'])}</h2>"
        f'<p class="note">{_e(old["rules_file"])} → {_e(new["rules_file"])}, replayed over '
        f"{_e(fmt(hist['events']))} events ({_e(where)}; {_e(hist['partitions'])} partitions; "
        f"{_e(hist.get('from') or '–')} to {_e(hist.get('until') or '–')}); invalid events "
        f"skipped: {_e(dead_text)}.</p>"
        f'<div class="tiles">{"".join(tiles)}</div>'
        f"<h2>Delivered per day</h2>{daily_chart(s['daily_delivered'])}"
        "<h2>Decisions per ritual and status</h2>"
        + _table(BY_STATUS_HEAD, by_status, "No decisions on either side.")
        + "<h2>Changed decisions: status before → after</h2>"
        + _table(("ritual", "before", "after", "decisions"), moves, "No decision changed.")
        + "<h2>Lift: treated − held out (95 % interval), before and after</h2>"
        + _table(
            ("ritual", "outcome", "before", "after", "verdict after"),
            lift_rows,
            "The history holds no ritual with both treated and held-out decisions.",
        )
        + "</section>"
    )


def load(path: Path) -> str:
    """The section of a summary.json, or BacktestError saying why there is none."""
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise BacktestError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except ValueError:
        raise BacktestError(f"{path}: not JSON") from None
    try:
        return section(summary)
    except (KeyError, TypeError, ValueError, AttributeError):
        raise BacktestError(f"{path}: not a summary.json of `engage rules diff`") from None


def add_to(page: Path, html_section: str) -> None:
    """Append the section to a report page already written (before the end of its main)."""
    text = page.read_text(encoding="utf-8")
    head, sep, tail = text.rpartition("</main>")
    page.write_text(head + html_section + sep + tail if sep else text + html_section, "utf-8")


def write_page(html_section: str, out: Path, *, now: datetime | None = None) -> Path:
    """A page of the section alone (no KPI source given); returns its absolute path."""
    when = (now or datetime.now(UTC)).astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>engage backtest, {_e(when)}</title><style>{_CSS}</style></head><body>"
        f"<header><h1>engage: rules backtest</h1><p>{_e(when)}</p></header>"
        f"<main>{html_section}</main><script>{_CHECK}</script></body></html>",
        encoding="utf-8",
    )
    return out
