"""The backtest of a rules change (`engage rules diff`): both rule sets over one history.

Pure: the shell reads the history (a JSON-lines file or the input topics), the rules files and
the wall clock, and hands them here. Three steps:

1. `History` lays the events out on partitions exactly as production would: each event to the
   topic of its type, keyed by its `customer_id` (the producer's key), on the partition Kafka's
   default key partitioner (murmur2) gives that key, with offsets in arrival order per
   topic-partition. Unreadable lines are kept: the engine dead-letters them as a worker would.
2. `run_pass` runs one rule set through the in-process engine (`MemoryDriver`) with the replay
   time policy: every partition gets a replay declaration (where each of its topics ends and the
   instant to end at), then its records in order, so the clock reaches the end of the history
   and every timer due by then fires, as `engage replay` would. The decisions are the bytes the
   worker writes to the decisions topic.
3. `compare` matches the two passes' decisions by `nudge_id` and summarises the difference.

The same history and rules give the same result on any machine: nothing here reads a clock.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from schemas.events import EVENT_TYPES, TOPIC_SUFFIX
from schemas.nudges import STATUSES
from stream.core.clock import clock_for
from stream.core.driver import MemoryDriver
from stream.core.engine import EngineConfig, Record
from stream.core.ingest import Limits
from stream.core.lift import lift
from stream.core.partitioning import expected_partition, murmur2
from stream.core.rules import Rules
from stream.core.state import to_ms
from stream.core.vocabulary import Status

#: The fields whose difference makes a decision "changed" (same nudge_id on both sides).
COMPARED = ("status", "reason", "decided_at", "explanation")
#: Records per engine batch (the worker's order of magnitude; results do not depend on it).
BATCH = 2000


class _Route(msgspec.Struct):
    """The few fields routing reads (msgspec skips the rest of the document)."""

    type: str | None = None
    customer_id: str | None = None
    occurred_at: datetime | None = None  # msgspec parses RFC 3339 (a naive one is refused)


_ROUTE = msgspec.json.Decoder(_Route)


def topics_of(namespace: str) -> dict[str, str]:
    """Event type -> input topic of a namespace, in event-type order."""
    return {kind: f"{namespace}.{TOPIC_SUFFIX[kind]}" for kind in EVENT_TYPES}


def _instant(text: object) -> int | None:
    """Epoch ms of an RFC 3339 timestamp with an offset, or None."""
    if not isinstance(text, str):
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        return None
    return to_ms(moment.astimezone(UTC))


@dataclass
class History:
    """Events laid out on the partitions of a namespace as the input topics would hold them.

    `add_line` takes a line of a JSON-lines file exactly as `engage replay` produces it (topic by
    `type`, key the `customer_id`; an unreadable line goes to the clicks topic without a key, to
    be dead-lettered); `add_message` takes a message read from a topic (its own topic and key).
    `wall_ms` and `max_future_skew` bound the default end instant the way the worker bounds
    event times: an event the worker would reject as from the future does not move the end of
    the history.
    """

    namespace: str
    partitions: int
    wall_ms: int
    max_future_skew: timedelta = timedelta(minutes=5)
    records: dict[int, list[Record]] = field(default_factory=dict)
    offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    events: int = 0
    first_at: int | None = None
    last_at: int | None = None

    def __post_init__(self) -> None:
        if self.partitions < 1:
            raise ValueError("a topic has at least one partition")
        self.topics = topics_of(self.namespace)
        self._latest = self.wall_ms + int(self.max_future_skew.total_seconds() * 1000)

    def add_line(self, line: bytes) -> None:
        """One line of a JSON-lines file (without its newline)."""
        topics = self.topics
        try:
            route = _ROUTE.decode(line)
            kind, cid, moment = route.type, route.customer_id, route.occurred_at
            key = cid.encode() if cid else None
            at = to_ms(moment) if moment is not None and moment.tzinfo is not None else None
        except (msgspec.DecodeError, msgspec.ValidationError):
            kind, key, occurred = self._route_slowly(line)
            at = _instant(occurred)
        topic = topics.get(kind, topics["click"]) if isinstance(kind, str) else topics["click"]
        self.add(topic, key, line, at=at)

    @staticmethod
    def _route_slowly(line: bytes) -> tuple[object, bytes | None, object]:
        """What `engage replay` does with a line the fast decoder refuses (a number as the
        customer id, invalid JSON, ...): the same topic and key it would produce it with."""
        try:
            data = json.loads(line)
            kind = data.get("type")
            key = str(data.get("customer_id", "")).encode() or None
            return kind, key, data.get("occurred_at")
        except (ValueError, AttributeError):
            return None, None, None

    def add_message(
        self, topic: str, key: bytes | None, value: bytes | None, *, partition: int | None = None
    ) -> None:
        """One message read from an input topic, with its own key (and partition, when the
        history has the topics' partition count)."""
        at = None
        if value is not None:
            try:
                moment = _ROUTE.decode(value).occurred_at
                if moment is not None and moment.tzinfo is not None:
                    at = to_ms(moment)
            except (msgspec.DecodeError, msgspec.ValidationError):
                at = None
        self.add(topic, key, value, partition=partition, at=at)

    def add(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        *,
        partition: int | None = None,
        at: int | None = None,
    ) -> None:
        """One record of `topic`; its partition is the key's (murmur2) unless given. A record
        without a key goes to a partition chosen by a hash of its value (the producer's choice
        is random; the worker dead-letters it wherever it lands)."""
        if partition is None:
            if key is not None:
                partition = expected_partition(key, self.partitions)
            else:
                partition = (murmur2(value or b"") & 0x7FFFFFFF) % self.partitions
        where = (topic, partition)
        offset = self.offsets.get(where, 0)
        self.offsets[where] = offset + 1
        part = self.records.get(partition)
        if part is None:
            part = self.records[partition] = []
        part.append(Record(topic, partition, offset, at or 0, key, value))
        self.events += 1
        if at is not None and at <= self._latest:
            if self.first_at is None or at < self.first_at:
                self.first_at = at
            if self.last_at is None or at > self.last_at:
                self.last_at = at

    def ends(self, partition: int) -> dict[str, int]:
        """Where each input topic of a partition ends (its replay declaration)."""
        return {t: self.offsets.get((t, partition), 0) for t in self.topics.values()}


@dataclass
class PassResult:
    """One rule set over the history: its decisions and the counts the comparison needs."""

    version: str
    decisions: dict[str, bytes]  # nudge_id -> the decision record as the worker writes it
    counts: Counter[tuple[str, ...]]  # dlq, duplicate, late and outcome counts
    until: int | None


def run_pass(
    history: History,
    rules: Rules,
    *,
    wall_ms: int,
    until: int | None = None,
    limits: Limits | None = None,
    batch: int = BATCH,
) -> PassResult:
    """Decide the whole history with one rule set, in event time (the replay policy).

    `until` is the instant every partition's clock moves to once its records are read (default:
    the latest event time of the history), so timers due by then fire. `wall_ms` is the wall
    clock the worker would check event times against (events from the future are dead-letters).
    """
    ns = history.namespace
    final = until if until is not None else history.last_at
    config = EngineConfig(
        rules=rules,
        clock=clock_for("replay"),
        inputs={topic: topic.rsplit(".", 1)[-1] for topic in history.topics.values()},
        control_topic=f"{ns}.clock",
        erasures_topic=f"{ns}.erasures",
        namespace=ns,
        partitions=history.partitions,
        limits=limits or Limits(max_future_skew=history.max_future_skew),
    )
    driver = MemoryDriver(config)
    for p in range(history.partitions):
        declaration = {
            "kind": "replay",
            "replay_id": "backtest",
            "ends": history.ends(p),
            "final": final,
        }
        body = json.dumps(declaration).encode()
        driver.pipe([Record(config.control_topic, p, 0, 0, None, body)], wall_ms=wall_ms)
        part = history.records.get(p, [])
        for i in range(0, len(part), batch):
            driver.pipe(part[i : i + batch], wall_ms=wall_ms)
        engine = driver.engine(p)
        if not engine.time.replay_done:  # a bug, never the input's fault: say so loudly
            raise RuntimeError(f"partition {p} did not reach the end of the history")
        # The partition is done: nothing of it is read again, so free its memory.
        driver.engines.pop(p, None)
    counts: Counter[tuple[str, ...]] = Counter(
        {k: n for k, n in driver.counts.items() if k[0] in {"dlq", "duplicate", "late", "outcome"}}
    )
    return PassResult(rules.version, driver.decisions(), counts, final)


# --- the comparison --------------------------------------------------------------------------


def _differs(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    return any(old.get(f) != new.get(f) for f in COMPARED)


def _day(record: Mapping[str, Any]) -> str:
    return str(record["decided_at"])[:10]


def _deferred(record: Mapping[str, Any]) -> bool:
    explanation = record.get("explanation")
    return isinstance(explanation, dict) and "deferred_from" in explanation


def _capped(record: Mapping[str, Any]) -> bool:
    return record["status"] == Status.SUPPRESSED and record["reason"] == "frequency_cap"


def _status_order(status: str) -> tuple[int, str]:
    return (STATUSES.index(status) if status in STATUSES else len(STATUSES), status)


def lift_table(counts: Counter[tuple[str, ...]]) -> list[dict[str, Any]]:
    """Per ritual and outcome: treated vs held-out rates, difference and ratio with their
    intervals and a verdict (`stream.core.lift`), from a pass's outcome counts; only for the
    rituals the history holds both treated and held-out decisions of (no comparison otherwise).
    A file with `effective_from` makes decisions of two versions in one pass: they are summed,
    the pass's lift as a whole."""
    outcomes: dict[tuple[str, str, str], int] = {}
    for key, n in counts.items():
        if key[0] == "outcome":  # ("outcome", ritual, arm, outcome[, rules version]): summed
            cell = (key[1], key[2], key[3])
            outcomes[cell] = outcomes.get(cell, 0) + n
    rituals = sorted({r for r, _, _ in outcomes})
    names = sorted({o for _, _, o in outcomes if o != "decided"})
    rows = []
    for ritual in rituals:
        treated = outcomes.get((ritual, "treated", "decided"), 0)
        held = outcomes.get((ritual, "held_out", "decided"), 0)
        if not (treated and held):
            continue
        for outcome in names:
            result = lift(
                outcomes.get((ritual, "treated", outcome), 0),
                treated,
                outcomes.get((ritual, "held_out", outcome), 0),
                held,
            )
            rows.append({"ritual": ritual, "outcome": outcome, **result.to_dict()})
    return rows


def _iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    return (
        datetime.fromtimestamp(ms / 1000, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def compare(
    old: PassResult,
    new: PassResult,
    *,
    history: Mapping[str, Any],
    old_file: str,
    new_file: str,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(every differing decision, the summary). Decisions are matched by `nudge_id`; one is
    `changed` when its status, reason, decided_at or explanation differ. Both outputs are
    sorted, so the same passes give the same JSON bytes."""
    o = {nid: json.loads(raw) for nid, raw in old.decisions.items()}
    n = {nid: json.loads(raw) for nid, raw in new.decisions.items()}
    diff: list[dict[str, Any]] = []
    for nid in sorted(o.keys() | n.keys()):
        a, b = o.get(nid), n.get(nid)
        if a is None:
            change = "added"
        elif b is None:
            change = "removed"
        elif _differs(a, b):
            change = "changed"
        else:
            continue
        diff.append({"nudge_id": nid, "change": change, "old": a, "new": b})

    # per ritual and status
    cells: dict[tuple[str, str], Counter[str]] = {}

    def cell(ritual: str, status: str) -> Counter[str]:
        c = cells.get((ritual, status))
        if c is None:
            c = cells[(ritual, status)] = Counter()
        return c

    for rec in o.values():
        cell(rec["ritual"], rec["status"])["old"] += 1
    for rec in n.values():
        cell(rec["ritual"], rec["status"])["new"] += 1
    transitions: Counter[tuple[str, str, str]] = Counter()
    totals: Counter[str] = Counter()
    for item in diff:
        a, b = item["old"], item["new"]
        totals[item["change"]] += 1
        if item["change"] == "added":
            cell(b["ritual"], b["status"])["added"] += 1
        elif item["change"] == "removed":
            cell(a["ritual"], a["status"])["removed"] += 1
        else:
            cell(a["ritual"], a["status"])["changed_from"] += 1
            cell(b["ritual"], b["status"])["changed_to"] += 1
            transitions[(a["ritual"], a["status"], b["status"])] += 1
    fields = ("old", "new", "added", "removed", "changed_from", "changed_to")
    by_ritual_status = [
        {"ritual": ritual, "status": status, **{f: cells[(ritual, status)][f] for f in fields}}
        for ritual, status in sorted(cells, key=lambda k: (k[0], _status_order(k[1])))
    ]

    # delivered volume per UTC day
    daily: dict[str, Counter[str]] = {}
    for side, records in (("old", o), ("new", n)):
        for rec in records.values():
            if rec["status"] == Status.DELIVERED:
                daily.setdefault(_day(rec), Counter())[side] += 1
    daily_delivered = [
        {"day": day, "old": daily[day]["old"], "new": daily[day]["new"]} for day in sorted(daily)
    ]

    # guardrail pressure
    pressure: dict[str, Counter[str]] = {}
    for side, records in (("old", o), ("new", n)):
        for rec in records.values():
            ritual = rec["ritual"]
            c = pressure.setdefault(ritual, Counter())
            if _capped(rec):
                c[f"frequency_cap_{side}"] += 1
            if _deferred(rec):
                c[f"quiet_hours_{side}"] += 1
    kinds = ("frequency_cap_old", "frequency_cap_new", "quiet_hours_old", "quiet_hours_new")
    pressure_rows = [
        {"ritual": ritual, **{k: pressure[ritual][k] for k in kinds}}
        for ritual in sorted(pressure)
        if any(pressure[ritual][k] for k in kinds)
    ]

    affected = {(item["old"] or item["new"])["customer_id"] for item in diff}
    delivered = {
        side: sum(1 for rec in records.values() if rec["status"] == Status.DELIVERED)
        for side, records in (("old", o), ("new", n))
    }
    summary = {
        "old": {"rules_file": old_file, "version": old.version, "decisions": len(o),
                "delivered": delivered["old"]},
        "new": {"rules_file": new_file, "version": new.version, "decisions": len(n),
                "delivered": delivered["new"]},
        "history": {**history, "until": _iso(old.until)},
        "changes": {
            "added": totals["added"],
            "removed": totals["removed"],
            "changed": totals["changed"],
            "unchanged": len(o.keys() & n.keys()) - totals["changed"],
        },
        "customers_affected": len(affected),
        "by_ritual_status": by_ritual_status,
        "transitions": [
            {"ritual": r, "old_status": a, "new_status": b, "count": c}
            for (r, a, b), c in sorted(transitions.items())
        ],
        "daily_delivered": daily_delivered,
        "pressure": {
            "frequency_cap": {"old": sum(p["frequency_cap_old"] for p in pressure_rows),
                              "new": sum(p["frequency_cap_new"] for p in pressure_rows)},
            "quiet_hours_deferred": {"old": sum(p["quiet_hours_old"] for p in pressure_rows),
                                     "new": sum(p["quiet_hours_new"] for p in pressure_rows)},
            "by_ritual": pressure_rows,
        },
        "lift": {"old": lift_table(old.counts), "new": lift_table(new.counts)},
    }  # fmt: skip
    return diff, summary


def history_facts(history: History, result: PassResult) -> dict[str, Any]:
    """What the summary says of the history itself: its size, span and the records a worker
    would not fold (dead letters by reason, duplicates)."""
    dead: dict[str, int] = {}
    duplicates = 0
    for key, n in result.counts.items():
        if key[0] == "dlq":
            dead[key[1]] = dead.get(key[1], 0) + n
        elif key[0] == "duplicate":
            duplicates += n
    return {
        "events": history.events,
        "partitions": history.partitions,
        "from": _iso(history.first_at),
        "dead_lettered": dict(sorted(dead.items())),
        "duplicates": duplicates,
        "late": result.counts.get(("late",), 0),
    }


def dumps(value: Any) -> str:
    """The canonical JSON of the backtest's files: sorted keys, no spaces."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def diff_lines(diff: Iterable[dict[str, Any]]) -> Iterable[str]:
    """diff.jsonl, one differing decision per line (already sorted by nudge_id)."""
    for item in diff:
        yield dumps(item)
