"""How long `engage rules diff` takes over 90 days of history: 1,000,000 events (goal: < 3 min).

    .venv/bin/python bench/backtest.py
    .venv/bin/python bench/backtest.py --events 200000 --compare-jobs

Generates the history once with the emitter's persona simulation (`engage emit --out`, seeded,
browsing scaled down so that a million events hold about ten thousand customers and their
purchases, reviews, surveys, support contacts and loyalty events), kept in `--dir` for later
runs, then times the command end to end (start-up, reading, both passes, comparison, files) for
the packaged rules against a copy whose `three_days_later` holdout is 20 % instead of 10 %.
`--compare-jobs` also times the two passes one after the other (`--jobs 1`) instead of in two
processes. Needs no broker. Prints the machine's load average too: the machine is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from stream.core.rules import DEFAULT_RULES_FILE  # noqa: E402

GOAL_S = 180.0
START = "2025-06-01T00:00:00Z"
BROWSE = 0.3  # a fifth-ish of the clicks: ~105 events per customer over 90 days
EVENTS_PER_CUSTOMER_DAY = 1.1


def history(path: Path, *, events: int, days: int, seed: int) -> int:
    """Write the first `events` lines of a persona run to `path` (reused when it is there)."""
    if path.exists():
        with path.open("rb") as fh:
            have = sum(1 for _ in fh)
        if have == events:
            return have
    customers = max(int(events / (days * EVENTS_PER_CUSTOMER_DAY) * 1.1), 10)
    while True:
        raw = path.with_suffix(".full")
        subprocess.run(
            [sys.executable, "-m", "stream", "emit", "--customers", str(customers), "--days",
             str(days), "--start", START, "--seed", str(seed), "--browse", str(BROWSE),
             "--out", str(raw), "--quiet"],
            check=True, cwd=ROOT,
        )  # fmt: skip
        with raw.open("rb") as src:
            lines = [line for _, line in zip(range(events), src, strict=False)]
        if len(lines) == events:
            path.write_bytes(b"".join(lines))
            raw.unlink()
            return events
        customers = int(customers * events / max(len(lines), 1) * 1.1) + 1


def modified_rules(path: Path) -> Path:
    """The packaged rules with `three_days_later` held out at 20 % and a new version."""
    data = yaml.safe_load(DEFAULT_RULES_FILE.read_text(encoding="utf-8"))
    data["version"] = f"{data['version']}-bench"
    entries = data["rituals"]
    entry = (
        entries["three_days_later"]
        if isinstance(entries, dict)
        else next(e for e in entries if e.get("name") == "three_days_later")
    )
    entry["holdout_percent"] = 20
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def run(events: Path, new: Path, out: Path, jobs: int) -> tuple[float, str, dict[str, object]]:
    """Seconds for one `engage rules diff`, its timing line and its summary."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "stream", "rules", "diff", str(DEFAULT_RULES_FILE), str(new),
         "--events", str(events), "--out", str(out), "--jobs", str(jobs)],
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    took = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"engage rules diff failed: {done.stderr.strip()}")
    timing = next((ln for ln in done.stderr.splitlines() if ln.startswith("timings:")), "")
    return took, timing, json.loads((out / "summary.json").read_text(encoding="utf-8"))


def main() -> int:
    """Generate (or reuse) the history, time the backtest, print the figure against the goal."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--seed", type=int, default=90)
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "engage-bench")
    parser.add_argument(
        "--compare-jobs", action="store_true", help="also time --jobs 1 (passes one by one)"
    )
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    events = args.dir / f"history-{args.events}-{args.days}d-{args.seed}.jsonl"
    started = time.perf_counter()
    n = history(events, events=args.events, days=args.days, seed=args.seed)
    print(f"history: {n:,} events in {events} ({time.perf_counter() - started:.0f} s to make)")
    new = modified_rules(args.dir / "rules-modified.yaml")
    load = os.getloadavg()[0]
    for jobs in (2, 1) if args.compare_jobs else (2,):
        took, timing, s = run(events, new, args.dir / f"out-{jobs}", jobs)
        ch = s["changes"]
        print(
            f"backtest --jobs {jobs}: {took:.1f} s for {n:,} events x 2 rule sets "
            f"({n / took:,.0f} events/s per rule set; goal < {GOAL_S:.0f} s: "
            f"{'met' if took < GOAL_S else 'MISSED'})"
        )
        print(f"  {timing}")
        print(
            f"  decisions {s['old']['decisions']:,} -> {s['new']['decisions']:,}: "
            f"changed {ch['changed']:,}, added {ch['added']:,}, removed {ch['removed']:,}; "
            f"customers affected {s['customers_affected']:,}"
        )
    print(f"load average (1 min) {load:.2f} before, {os.getloadavg()[0]:.2f} after, "
          f"on {os.cpu_count()} cores")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
