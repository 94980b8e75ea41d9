"""Every labelled metric has a bounded set of label values, whatever the input (SPEC §5).

Hostile and varied traffic (persona events with every type and ritual, every hostile category,
thousands of made-up currencies, random ids everywhere an id goes, erasures, stored states from
before currencies were checked) goes through the real shell, engines and metrics; then each
labelled family of the worker's registry must hold no more distinct label values than
docs/metrics.md promises. A labelled metric added without a bound here fails the test.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import string
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import msgspec

from schemas.events import CLICK_ACTIONS, CONSENT_SCOPES, EVENT_TYPES, TOPIC_SUFFIX
from schemas.iso4217 import CURRENCIES
from schemas.nudges import STATUSES
from stream.adapter.sender import Sender
from stream.adapter.shell import BatchShell
from stream.core.clock import clock_for
from stream.core.engine import EngineConfig, Record
from stream.core.ingest import REASONS, Limits
from stream.core.partitioning import expected_partition
from stream.core.profile import QUADRANTS, STAGES
from stream.core.rituals import OUTCOMES
from stream.core.rules import Rules
from stream.core.state import UNREADABLE_REASONS, decode, encode
from stream.telemetry.kpis import (
    ACTIVE_WINDOWS,
    CLV_BANDS,
    CONSENT_SOURCE_LABELS,
    OTHER_CURRENCY,
    RETENTION_WINDOWS,
    SCORE_BANDS,
    SUPPRESSION_REASONS,
    Kpis,
    snapshot,
)
from stream.telemetry.metrics import PipelineMetrics
from stream.tools.emitter.simulation import SimConfig, Simulation
from stream.tools.hostile import CATEGORIES, generate
from tests.adapter.test_shell import OUTPUTS, _Producer, _Table, _Topic

NS = "mb"
PARTITIONS = 4
INPUTS = {f"{NS}.{suffix}": suffix for suffix in TOPIC_SUFFIX.values()}
CONTROL, ERASURES = f"{NS}.clock", f"{NS}.erasures"
START = datetime(2026, 3, 1, tzinfo=UTC)
N_TYPES = len(EVENT_TYPES)
RULES = Rules(version="bounds")

#: metric family -> label -> the most distinct values it may take (docs/metrics.md).
BOUNDS: dict[str, dict[str, int]] = {
    "engage_events_consumed": {"topic": len(INPUTS)},
    "engage_events_processed": {
        "topic": len(INPUTS) + 1,  # the inputs, and the erasures topic (dead letters)
        "type": N_TYPES + 1,  # the event types, and "unknown" for a dead letter
        "outcome": 3,  # folded, duplicate, dead_lettered
    },
    "engage_dlq_messages": {"reason": len(REASONS)},
    "engage_duplicate_events": {"type": N_TYPES},
    "engage_partition_clock_seconds": {"partition": PARTITIONS},
    "engage_watermark_lag_seconds": {"partition": PARTITIONS},
    "engage_consumer_lag_messages": {"topic": len(INPUTS), "partition": PARTITIONS},
    # rituals and rules versions: those of the rules file and the earlier versions it names
    "engage_ritual_decisions": {
        "ritual": len(RULES.ritual_names),
        "status": len(STATUSES),
        "rules_version": len(RULES.versions),
    },
    "engage_ritual_outcomes": {
        "ritual": len(RULES.ritual_names),
        "arm": 2,
        "outcome": len(OUTCOMES),
        "rules_version": len(RULES.versions),
    },
    "engage_erasures": {"found": 2},
    "engage_unreadable_states": {"reason": len(UNREADABLE_REASONS)},
    "engage_clicks": {"action": len(CLICK_ACTIONS), "prompted": 2},
    **{
        f"engage_retention_{name}_customers": {"window": len(RETENTION_WINDOWS)}
        for name in ("cohort", "retained", "acquired")
    },
    "engage_clv_estimate": {"currency": len(CURRENCIES) + 1},  # ISO 4217, and "other"
    "engage_customers_by_clv_band": {"currency": len(CURRENCIES) + 1, "band": len(CLV_BANDS)},
    "engage_nps_responses": {"category": 3},
    "engage_reviews": {"rating": 5},
    "engage_revenue": {"currency": len(CURRENCIES)},
    "engage_consent_opt_outs": {"scope": len(CONSENT_SCOPES), "source": len(CONSENT_SOURCE_LABELS)},
    "engage_consent_opt_ins": {"scope": len(CONSENT_SCOPES), "source": len(CONSENT_SOURCE_LABELS)},
    "engage_ritual_suppressions": {"reason": len(SUPPRESSION_REASONS)},
    "engage_active_customers": {"window": len(ACTIVE_WINDOWS)},
    "engage_customers_by_stage": {"stage": len(STAGES)},
    "engage_customers_by_quadrant": {"quadrant": len(QUADRANTS)},
    "engage_customers_by_score_band": {"band": len(SCORE_BANDS)},
}
#: Labels the client library adds to histogram and summary samples (bounded by their buckets).
LIBRARY_LABELS = {"le", "quantile"}


class _Log:
    """Records with broker-like offsets, on the partition murmur2 gives their key (or on a
    random one: a wrong_partition dead letter)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.next: dict[tuple[str, int], int] = {}
        self.at_ms = int(START.timestamp() * 1000)

    def record(self, topic: str, key: bytes | None, value: bytes | None) -> Record:
        p = expected_partition(key, PARTITIONS) if key else self.rng.randrange(PARTITIONS)
        offset = self.next.get((topic, p), 0)
        self.next[(topic, p)] = offset + 1
        return Record(topic, p, offset, self.at_ms, key, value)


def _made_up_currencies(n: int) -> list[str]:
    iso = set(CURRENCIES)
    codes = ("".join(c) for c in itertools.product(string.ascii_uppercase, repeat=3))
    return list(itertools.islice((c for c in codes if c not in iso), n))


def _hostile_traffic(log: _Log, rng: random.Random, customers: list[str]) -> list[Record]:
    """Purchases in 3,000 made-up and every real currency, clicks of every action with
    random ids, every hostile category, erasure requests good and bad."""
    at = START + timedelta(days=20)
    out: list[Record] = []

    def send(ev: dict[str, Any]) -> None:
        topic = f"{NS}.{TOPIC_SUFFIX[ev['type']]}"
        cid = ev["customer_id"]
        out.append(log.record(topic, cid.encode(), json.dumps(ev).encode()))

    def base(kind: str, n: int) -> dict[str, Any]:
        cid = rng.choice(customers) if n % 2 else f"x-{rng.getrandbits(64):x}"
        return {
            "event_id": f"h-{kind}-{n}",
            "customer_id": cid,
            "type": kind,
            "occurred_at": (at + timedelta(seconds=n)).isoformat(),
        }

    currencies = [*_made_up_currencies(3000), *CURRENCIES, "eur", "EURO", "", "€"]
    for n, code in enumerate(currencies):
        send(
            base("purchase", n)
            | {
                "order_id": f"o-{rng.getrandbits(40)}",
                "amount": "12.50",
                "currency": code,
                "items": 1,
            }
        )
    for n in range(2000):
        action = rng.choice([*CLICK_ACTIONS, "hover", "PAGE_VIEW", ""])
        ids = {"session_id": f"s-{rng.getrandbits(64):x}"}
        if n % 3 == 0:
            ids["nudge_id"] = f"{rng.getrandbits(256):064x}"
        send(base("click", n) | {"action": action, **ids})
    for n in range(400):
        send(
            base("survey", n)
            | {"survey": rng.choice(["nps", "csat", "ces", "sus"]), "score": rng.randrange(-2, 13)}
        )
        send(
            base("review", n)
            | {
                "review_id": f"r-{n}",
                "rating": rng.randrange(0, 8),
                "channel": rng.choice(["site", "social", "tv"]),
            }
        )
        send(
            base("consent", n)
            | {
                "scope": rng.choice(["marketing", "all", "sms"]),
                "status": rng.choice(["opted_in", "opted_out"]),
                "source": rng.choice(["support", "import", "fax", None]),
            }
        )
    samples = [
        {
            "event_id": f"s-{k}",
            "customer_id": rng.choice(customers),
            "type": k,
            "occurred_at": at.isoformat(),
            "action": "page_view",
        }
        for k in EVENT_TYPES
    ]
    for item in generate(len(CATEGORIES) * 3, samples, seed="bounds", wall_now=at, heavy_cap=1):
        out.append(log.record(f"{NS}.{item.topic_suffix}", item.key, item.value))
    for n, cid in enumerate(customers[:40]):
        request = {"request_id": f"req-{n}", "customer_id": cid, "requested_at": at.isoformat()}
        out.append(log.record(ERASURES, cid.encode(), json.dumps(request).encode()))
    out.append(log.record(ERASURES, b"k", b"{not json"))
    return out


def _label_values(registry: Any) -> dict[str, dict[str, set[str]]]:
    """family -> label -> the distinct values its samples carry."""
    out: dict[str, dict[str, set[str]]] = {}
    for family in registry.collect():
        for sample in family.samples:
            for label, value in sample.labels.items():
                if label not in LIBRARY_LABELS:
                    out.setdefault(family.name, {}).setdefault(label, set()).add(value)
    return out


def test_every_label_set_stays_within_its_documented_bound() -> None:
    rng = random.Random(20)
    metrics = PipelineMetrics(rules=RULES)
    kpis = Kpis(metrics.registry)
    customers, control = _Table(), _Table()
    rules = RULES
    config = EngineConfig(
        rules,
        clock_for("follow", grace_ms=1000),
        INPUTS,
        CONTROL,
        Limits(max_future_skew=timedelta(days=3650)),
        erasures_topic=ERASURES,
        namespace=NS,
        partitions=PARTITIONS,
    )
    app = SimpleNamespace(consumer=SimpleNamespace(_committed_offset={}), producer=_Producer())
    shell = BatchShell(
        app=app,
        config=config,
        customers=customers,
        control=control,  # type: ignore[arg-type]
        topics={n: _Topic(n) for n in OUTPUTS},
        metrics=metrics,
        kpis=kpis,
        sender=Sender(app),
    )
    log = _Log(rng)

    persona = [
        log.record(
            f"{NS}.{TOPIC_SUFFIX[e.type]}", e.customer_id.encode(), json.dumps(e.event).encode()
        )
        for e in Simulation(SimConfig(150, 30, START, 20))
    ]
    known = sorted({r.key.decode() for r in persona if r.key})
    records = [*persona, *_hostile_traffic(log, rng, known)]
    for i in range(0, len(records), 500):
        asyncio.run(shell.handle_records(records[i : i + 500]))

    # States stored before currencies were checked: made-up codes in the profile's money.
    for n, (key, raw) in enumerate(list(customers.data.items())[:60]):
        state = decode(raw)
        if state.currency is not None and state.currency in state.money:
            code = _made_up_currencies(60)[n]
            money = {code: state.money[state.currency]}
            customers.data[key] = encode(msgspec.structs.replace(state, currency=code, money=money))
    clock = max(e.time.clock for e in shell.engines.values())
    states = [decode(raw) for raw in customers.data.values()]
    kpis.publish(snapshot(states, clock, rules.profile))

    seen = _label_values(metrics.registry)
    # The traffic does reach the metrics (the test would pass vacuously otherwise).
    assert len(seen["engage_revenue"]["currency"]) >= 10
    assert OTHER_CURRENCY in seen["engage_clv_estimate"]["currency"]
    assert len(seen["engage_dlq_messages"]["reason"]) == len(REASONS)
    assert seen["engage_ritual_decisions"]["ritual"]
    unbounded = sorted(set(seen) - set(BOUNDS))
    assert not unbounded, f"labelled metrics without a documented bound: {unbounded}"
    over = {
        (name, label): len(values)
        for name, labels in seen.items()
        for label, values in labels.items()
        if len(values) > BOUNDS[name].get(label, 0)
    }
    assert not over, f"label sets beyond their bound: {over}"
    assert seen["engage_revenue"]["currency"] <= set(CURRENCIES)
    assert seen["engage_clv_estimate"]["currency"] <= {*CURRENCIES, OTHER_CURRENCY}
