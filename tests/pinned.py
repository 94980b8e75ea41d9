"""Decision files pinned from the code before the rituals became data (issue: rituals as data).

`decisions(events, rules)` replays a list of event JSON lines through the partition engines
in-process (replay mode, murmur2 partitions as production, a final instant a year after the
last event so every timer falls due) and returns the decision records, one JSON line each,
sorted by nudge_id: the same bytes a real `engage replay` writes for the same input.

The fixtures under tests/fixtures/pinned/ were written by `python -m tests.pinned write` on the
commit before the refactor; they must never be regenerated to make a test pass.
"""

from __future__ import annotations

import gzip
import json
import random
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from schemas.events import TOPIC_SUFFIX
from stream.core.clock import clock_for
from stream.core.driver import MemoryDriver
from stream.core.engine import EngineConfig, Record
from stream.core.ingest import Limits
from stream.core.partitioning import expected_partition
from stream.core.rules import Rules, load_rules
from stream.core.state import to_ms

HERE = Path(__file__).parent / "fixtures" / "pinned"
NS = "pin"
PARTITIONS = 4
CONTROL = f"{NS}.clock"
INPUTS = {f"{NS}.{suffix}": suffix for suffix in TOPIC_SUFFIX.values()}
WALL = 4_102_444_800_000  # 2100-01-01: nothing is "from the future"
YEAR_MS = 366 * 86_400_000
#: Rules that exercise more guardrail interplay than the defaults (legacy parameter keys).
STRESS_RULES = """
version: pinned-stress
rituals:
  post_purchase_welcome: {holdout_percent: 20}
  three_days_later: {holdout_percent: 5, delay: 30h}
  we_noticed: {holdout_percent: 15, inactivity: 9d}
  anniversary: {local_time: "22:30"}
  service_recovery: {holdout_percent: 10, nps_max: 7, rating_max: 3, csat_max: 3}
  referral_invite: {holdout_percent: 25, nps_min: 8, rating_min: 4, window: 20d}
  loyalty_milestone: {holdout_percent: 30}
guardrails:
  quiet_hours: {enabled: true, start: "19:30", end: "09:15"}
  frequency_cap: {window: 5d, max_delivered: 1, max_marketing: 1}
  lateness: 1h
"""
SEEDS = (1, 2, 3)


def decisions(
    lines: list[bytes], rules: Rules, *, batch: int = 700, final: int | None = None
) -> list[bytes]:
    """Every decision of an in-process replay of `lines`, sorted by nudge_id; the clocks end
    at `final` (default: a year after the last event)."""
    config = EngineConfig(
        rules, clock_for("replay", grace_ms=1000), INPUTS, CONTROL,
        Limits(max_future_skew=timedelta(days=365 * 200)),
    )  # fmt: skip
    driver = MemoryDriver(config)
    nxt: dict[tuple[str, int], int] = {}
    records: list[Record] = []
    last = 0
    for line in lines:
        evt = json.loads(line)
        topic = f"{NS}.{TOPIC_SUFFIX[evt['type']]}"
        p = expected_partition(evt["customer_id"].encode(), PARTITIONS)
        o = nxt.get((topic, p), 0)
        nxt[(topic, p)] = o + 1
        records.append(Record(topic, p, o, 0, evt["customer_id"].encode(), line))
        last = max(last, to_ms(_instant(evt["occurred_at"])))
    for i in range(0, len(records), batch):
        driver.pipe(records[i : i + batch], wall_ms=WALL)
    final = last + YEAR_MS if final is None else final
    declarations = []
    for p in range(PARTITIONS):
        ends = {t: nxt.get((t, p), 0) for t in INPUTS}
        body = {"kind": "replay", "replay_id": "pin", "ends": ends, "final": final}
        declarations.append(Record(CONTROL, p, 0, 0, None, json.dumps(body).encode()))
    driver.pipe(declarations, wall_ms=WALL)
    return [value for _, value in sorted(driver.decisions().items())]


def _instant(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def persona_events(seed: int) -> list[bytes]:
    """The pinned persona traffic of one seed (`engage emit --customers 40 --days 420 --start
    2025-01-01T00:00:00Z --browse 0.05 --seed N --out`), one JSON object per line."""
    return gzip.decompress((HERE / f"persona-{seed}.jsonl.gz").read_bytes()).splitlines()


def mixed_events(seed: int, n: int = 400) -> list[bytes]:
    """Dense hand-mixed traffic: every trigger and cancellation, time zones, consent, late
    events and same-instant ties, for a few customers."""
    rng = random.Random(seed)
    kinds = [
        ("click", {"action": "page_view"}),
        ("click", {"action": "search"}),
        ("purchase", {}),
        ("purchase", {}),
        ("review", {"rating": 1}),
        ("review", {"rating": 5}),
        ("review", {"rating": 3, "order_id": None}),
        ("survey", {"survey": "nps", "score": 10}),
        ("survey", {"survey": "nps", "score": 2}),
        ("survey", {"survey": "csat", "score": 1}),
        ("support_contact", {"status": "opened", "complaint": True}),
        ("support_contact", {"status": "opened", "complaint": False}),
        ("support_contact", {"status": "resolved", "complaint": True}),
        ("loyalty", {"action": "tier_changed", "tier": "silver"}),
        ("loyalty", {"action": "tier_changed", "tier": "gold"}),
        ("consent", {"scope": "marketing", "status": "opted_out"}),
        ("consent", {"scope": "all", "status": "opted_in"}),
    ]
    zones = [None, "Europe/Berlin", "America/New_York", "Asia/Tokyo", "Australia/Sydney"]
    base = to_ms(_instant("2025-02-27T20:00:00Z"))
    out, t = [], base
    orders: list[str] = []
    for i in range(n):
        t += int(rng.expovariate(1 / (2.5 * 86_400_000))) if rng.random() > 0.1 else 0
        kind, fields = rng.choice(kinds)
        cust = f"mix-{seed}-{rng.randrange(5)}"
        evt: dict = {
            "event_id": f"m{seed}-{i}",
            "customer_id": cust,
            "type": kind,
            "occurred_at": _iso(t - (rng.randrange(3) * 86_400_000 if rng.random() < 0.05 else 0)),
        }
        zone = rng.choice(zones) if rng.random() < 0.2 else None
        if zone:
            evt["tz"] = zone
        fields = dict(fields)
        if kind == "purchase":
            order = f"o{seed}-{i}"
            orders.append(order)
            evt.update(order_id=order, amount="19.90", currency="EUR", items=1)
        elif kind == "review":
            evt.update(review_id=f"r{i}", channel="site", rating=fields["rating"])
            if "order_id" not in fields and orders:
                evt["order_id"] = rng.choice(orders)
        elif kind == "support_contact":
            evt.update(contact_id=f"k{i}", ticket_id=f"t{seed}-{rng.randrange(4)}",
                       channel="chat", **fields)  # fmt: skip
        else:
            evt.update(fields)
        out.append(json.dumps(evt, separators=(",", ":")).encode())
    return out


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def cases() -> dict[str, tuple[list[bytes], str | None]]:
    """Pinned case name -> (events, rules text or None for the packaged rules)."""
    out: dict[str, tuple[list[bytes], str | None]] = {}
    for seed in SEEDS:
        out[f"persona-{seed}"] = (persona_events(seed), None)
        out[f"persona-{seed}-stress"] = (persona_events(seed), STRESS_RULES)
    for seed in range(12):
        out[f"mixed-{seed}"] = (mixed_events(seed), None)
        out[f"mixed-{seed}-stress"] = (mixed_events(seed), STRESS_RULES)
    return out


def rules_of(text: str | None, tmp: Path) -> Rules:
    """The packaged rules, or a rules file with `text`."""
    if text is None:
        return load_rules()
    path = tmp / "rules.yaml"
    path.write_text(text)
    return load_rules(path)


def main(argv: list[str]) -> int:
    """`python -m tests.pinned write`: (re)write the pinned decision files (never to make a
    failing test pass: only from the code the pins are meant to freeze)."""
    import tempfile

    if argv != ["write"]:
        print("usage: python -m tests.pinned write", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        for name, (events, text) in cases().items():
            lines = decisions(events, rules_of(text, Path(tmp)))
            data = b"".join(line + b"\n" for line in lines)
            (HERE / f"{name}.decisions.jsonl.gz").write_bytes(gzip.compress(data, mtime=0))
            print(name, len(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
