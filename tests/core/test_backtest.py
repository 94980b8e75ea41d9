"""The backtest of a rules change (`engage rules diff`): both rule sets over one history,
in-process, and what differs.

Unit tests run the in-process engine on small hand-made histories; the integration tests prove
that the in-process pass decides exactly what a real `engage replay` on the broker decides, and
that `--from-topics` reads the production topics without writing or committing anything.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from stream.core.backtest import History, PassResult, compare, run_pass
from stream.core.clock import wall_ms
from stream.core.rules import DEFAULT_RULES_FILE, load_rules
from stream.tools.replay import canonical_lines, run_replay
from stream.tools.rules import main
from tests.factory import event
from tests.harness import unique

ROOT = Path(__file__).resolve().parents[2]


def bucket(customer_id: str, ritual: str) -> int:
    """The holdout bucket as the rules define it (first 8 bytes of SHA-256, mod 100)."""
    digest = hashlib.sha256(f"{customer_id}|{ritual}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % 100


def rules_variant(path: Path, *, version: str, holdout: tuple[str, float] | None = None) -> Path:
    """The packaged rules under another version, optionally one ritual's holdout changed."""
    data = yaml.safe_load(DEFAULT_RULES_FILE.read_text(encoding="utf-8"))
    data["version"] = version
    if holdout is not None:
        ritual, percent = holdout
        entries = data["rituals"]
        entry = (
            entries[ritual]
            if isinstance(entries, dict)
            else next(e for e in entries if e.get("name") == ritual)
        )
        entry["holdout_percent"] = percent
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def write_events(path: Path, events: list[dict[str, Any]], extra: list[bytes] = ()) -> Path:
    lines = [json.dumps(e).encode() for e in events] + list(extra)
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def run_diff(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["diff", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def purchases(n: int) -> list[dict[str, Any]]:
    """n customers, each with one first purchase at noon UTC (no quiet hours)."""
    return [
        event("purchase", f"bt-{i}", occurred_at="2026-01-05T12:00:00Z", tz="UTC",
              order_id=f"o-{i}", event_id=f"p-{i}")
        for i in range(n)
    ]  # fmt: skip


# --- unit: the comparison ------------------------------------------------------------------------


def test_identical_rules_give_zero_differences(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = rules_variant(tmp_path / "old.yaml", version="v-old")
    new = rules_variant(tmp_path / "new.yaml", version="v-new")
    events = write_events(tmp_path / "e.jsonl", purchases(30))
    code, out, err = run_diff(
        capsys, str(old), str(new), "--events", str(events), "--out", str(tmp_path / "o"),
        "--jobs", "1",
    )  # fmt: skip
    assert code == 0, err
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["changes"] == {"added": 0, "removed": 0, "changed": 0, "unchanged": 30}
    assert summary["customers_affected"] == 0
    assert (tmp_path / "o" / "diff.jsonl").read_text() == ""
    assert (summary["old"]["version"], summary["new"]["version"]) == ("v-old", "v-new")
    assert "v-old -> v-new" in out


def test_a_holdout_change_changes_exactly_the_customers_between_the_two_percentages(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ritual = "post_purchase_welcome"
    old = rules_variant(tmp_path / "old.yaml", version="v1", holdout=(ritual, 10))
    new = rules_variant(tmp_path / "new.yaml", version="v2", holdout=(ritual, 50))
    events = purchases(60)
    path = write_events(tmp_path / "e.jsonl", events)
    # ends before any timer (three days later, inactivity, anniversary) falls due
    code, _, err = run_diff(
        capsys, str(old), str(new), "--events", str(path), "--out", str(tmp_path / "o"),
        "--until", "2026-01-06T00:00:00Z",
    )  # fmt: skip
    assert code == 0, err
    buckets = {e["customer_id"]: bucket(e["customer_id"], ritual) for e in events}
    moved = sorted(c for c, b in buckets.items() if 10 <= b < 50)
    held_before = sum(1 for b in buckets.values() if b < 10)
    held_after = sum(1 for b in buckets.values() if b < 50)
    assert moved and held_before < held_after < 60  # the id set exercises all three ranges
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["changes"] == {
        "added": 0, "removed": 0, "changed": len(moved), "unchanged": 60 - len(moved),
    }  # fmt: skip
    assert summary["customers_affected"] == len(moved)
    cells = {(r["ritual"], r["status"]): r for r in summary["by_ritual_status"]}
    assert cells[(ritual, "held_out")]["old"] == held_before
    assert cells[(ritual, "held_out")]["new"] == held_after
    assert cells[(ritual, "held_out")]["changed_to"] == len(moved)
    assert cells[(ritual, "delivered")]["changed_from"] == len(moved)
    assert summary["transitions"] == [
        {"ritual": ritual, "old_status": "delivered", "new_status": "held_out",
         "count": len(moved)}
    ]  # fmt: skip
    assert summary["daily_delivered"] == [
        {"day": "2026-01-05", "old": 60 - held_before, "new": 60 - held_after}
    ]
    diff = [json.loads(line) for line in (tmp_path / "o" / "diff.jsonl").read_text().splitlines()]
    assert sorted(d["old"]["customer_id"] for d in diff) == moved
    for d in diff:
        assert d["change"] == "changed"
        assert (d["old"]["status"], d["new"]["status"]) == ("delivered", "held_out")
        assert d["new"]["explanation"]["holdout_bucket"] == buckets[d["old"]["customer_id"]]
        assert (d["old"]["rules_version"], d["new"]["rules_version"]) == ("v1", "v2")
    assert [d["nudge_id"] for d in diff] == sorted(d["nudge_id"] for d in diff)


def _decision(nid: str, cid: str, status: str, *, reason: str = "eligible",
              at: str = "2026-01-05T12:00:00.000Z", **facts: Any) -> tuple[str, bytes]:
    record = {
        "nudge_id": nid, "ritual": "three_days_later", "rules_version": "x", "customer_id": cid,
        "anchor": nid, "due_at": at, "decided_at": at, "status": status, "reason": reason,
        "audience": "customer", "category": "care", "promotional": False, "tz": "UTC",
        "explanation": {"source_event_id": "e", **facts},
    }
    return nid, json.dumps(record, sort_keys=True, separators=(",", ":")).encode()


def test_compare_counts_added_removed_changed_and_guardrail_pressure() -> None:
    old = PassResult("a", dict([
        _decision("n1", "c1", "delivered"),
        _decision("n2", "c2", "delivered"),  # removed
        _decision("n3", "c3", "suppressed", reason="frequency_cap"),  # changed: delivered
        _decision("n4", "c4", "delivered", deferred_from="2026-01-04T22:00:00.000Z"),  # same
        _decision("n5", "c5", "delivered", at="2026-01-06T08:00:00.000Z"),  # changed: later
    ]), Counter(), None)  # fmt: skip
    new = PassResult("b", dict([
        _decision("n1", "c1", "delivered"),
        _decision("n3", "c3", "delivered"),
        _decision("n4", "c4", "delivered", deferred_from="2026-01-04T22:00:00.000Z"),
        _decision("n5", "c5", "delivered", at="2026-01-07T08:00:00.000Z"),
        _decision("n6", "c1", "held_out", reason="holdout"),  # added
    ]), Counter(), None)  # fmt: skip
    diff, summary = compare(old, new, history={}, old_file="o", new_file="n")
    assert [(d["nudge_id"], d["change"]) for d in diff] == [
        ("n2", "removed"), ("n3", "changed"), ("n5", "changed"), ("n6", "added"),
    ]  # fmt: skip
    assert diff[0]["new"] is None and diff[3]["old"] is None
    assert summary["changes"] == {"added": 1, "removed": 1, "changed": 2, "unchanged": 2}
    assert summary["customers_affected"] == 4  # c1 (added), c2, c3, c5
    assert summary["pressure"]["frequency_cap"] == {"old": 1, "new": 0}
    assert summary["pressure"]["quiet_hours_deferred"] == {"old": 1, "new": 1}
    assert summary["daily_delivered"] == [
        {"day": "2026-01-05", "old": 3, "new": 3},
        {"day": "2026-01-06", "old": 1, "new": 0},
        {"day": "2026-01-07", "old": 0, "new": 1},
    ]
    assert (summary["old"]["delivered"], summary["new"]["delivered"]) == (4, 4)


def test_lift_with_intervals_where_both_arms_have_decisions() -> None:
    # the engine counts per rules version (a file with effective_from has two): summed
    counts: Counter[tuple[str, ...]] = Counter({
        ("outcome", "r", "treated", "decided", "v1"): 70,
        ("outcome", "r", "treated", "decided", "v2"): 30,
        ("outcome", "r", "treated", "came_back", "v1"): 40,
        ("outcome", "r", "treated", "came_back", "v2"): 20,
        ("outcome", "r", "held_out", "decided", "v1"): 50,
        ("outcome", "r", "held_out", "came_back", "v1"): 10,
        ("outcome", "only_treated", "treated", "decided", "v1"): 5,
    })  # fmt: skip
    _, summary = compare(
        PassResult("a", {}, counts, None), PassResult("b", {}, Counter(), None),
        history={}, old_file="o", new_file="n",
    )  # fmt: skip
    [row] = summary["lift"]["old"]
    assert (row["ritual"], row["outcome"]) == ("r", "came_back")
    assert (row["treated"], row["treated_successes"], row["held_out"]) == (100, 60, 50)
    assert row["difference"]["estimate"] == pytest.approx(0.4)
    assert 0 < row["difference"]["lower"] < 0.4 < row["difference"]["upper"]
    assert row["verdict"] == "significant"
    assert summary["lift"]["new"] == []


def test_two_runs_give_the_same_bytes_in_parallel_or_not(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = emit(tmp_path / "e.jsonl", customers=40, days=45, seed=7, bad=0.02)
    assert len(lines) > 2000
    old = rules_variant(tmp_path / "old.yaml", version="v1")
    new = rules_variant(tmp_path / "new.yaml", version="v2", holdout=("three_days_later", 40))
    outs = []
    for i, jobs in enumerate(("2", "2", "1")):
        out = tmp_path / f"out{i}"
        code, _, err = run_diff(
            capsys, str(old), str(new), "--events", str(tmp_path / "e.jsonl"),
            "--out", str(out), "--jobs", jobs,
        )  # fmt: skip
        assert code == 0, err
        outs.append(((out / "diff.jsonl").read_bytes(), (out / "summary.json").read_bytes()))
    assert outs[0] == outs[1] == outs[2]
    summary = json.loads(outs[0][1])
    assert summary["changes"]["changed"] > 0
    assert summary["history"]["dead_lettered"]  # the emitter's bad messages, counted


# --- hostile input -------------------------------------------------------------------------------


def test_invalid_lines_are_dead_lettered_counted_and_skipped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rules = rules_variant(tmp_path / "r.yaml", version="v1")
    bad = [b"not json", b"{}", b'{"type":"click"}', b"[1,2]", b"\xff\xfe{", b"null",
           b'{"type":"purchase","customer_id":"bt-0","occurred_at":"yesterday"}',
           b'{"type":"click","customer_id":7,"event_id":"x","occurred_at":"2026-01-05T12:00:00Z"}',
           b"{" + b"x" * 70_000]  # fmt: skip
    path = write_events(tmp_path / "e.jsonl", purchases(5), bad)
    code, _, err = run_diff(
        capsys, str(rules), str(rules), "--events", str(path), "--out", str(tmp_path / "o")
    )
    assert code == 0, err
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert sum(summary["history"]["dead_lettered"].values()) == len(bad)
    assert summary["history"]["events"] == 5 + len(bad)
    assert summary["old"]["decisions"] == 5  # the five welcomes, nothing from the bad lines


def _one_line_error(code: int, err: str, expected_code: int, *words: str) -> None:
    assert code == expected_code, err
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err
    for word in words:
        assert word in err


def test_hostile_arguments_and_files_give_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = rules_variant(tmp_path / "good.yaml", version="v1")
    events = write_events(tmp_path / "e.jsonl", purchases(2))
    broken = tmp_path / "broken.yaml"
    broken.write_text("version: [unclosed\n", encoding="utf-8")
    invalid = tmp_path / "invalid.yaml"
    invalid.write_text('version: "x"\nrituals: 12\nnonsense: true\n', encoding="utf-8")
    cases = [
        ((str(good), str(good), "--events", str(tmp_path / "missing.jsonl")), "missing.jsonl"),
        ((str(good), str(good), "--events", str(tmp_path)), "directory"),
        ((str(tmp_path / "none.yaml"), str(good), "--events", str(events)), "none.yaml"),
        ((str(good), str(broken), "--events", str(events)), "broken.yaml"),
        ((str(good), str(invalid), "--events", str(events)), "invalid.yaml"),
        ((str(good), str(good), "--from-topics", "--since", "ninety days"), "--since"),
        ((str(good), str(good), "--from-topics", "--since", "0d"), "--since"),
        ((str(good), str(good), "--events", str(events), "--until", "tomorrow"), "--until"),
        ((str(good), str(good), "--events", str(events), "--until", "2026-01-01T00:00"), "--until"),
        ((str(good), str(good), "--events", str(events), "--partitions", "0"), "--partitions"),
        ((str(good), str(good), "--events", str(events), "--partitions", "x"), "--partitions"),
    ]
    for args, word in cases:
        code, _, err = run_diff(capsys, *args)
        _one_line_error(code, err, 2, word)


def test_the_console_script_never_shows_a_traceback(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "stream", "rules", "diff", str(DEFAULT_RULES_FILE),
         str(tmp_path / "nope.yaml"), "--events", str(tmp_path / "nope.jsonl")],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    _one_line_error(done.returncode, done.stderr, 2, "nope.yaml")


def test_an_empty_history_is_a_backtest_of_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rules = rules_variant(tmp_path / "r.yaml", version="v1")
    (tmp_path / "e.jsonl").write_bytes(b"\n\n")
    code, out, err = run_diff(capsys, str(rules), str(rules), "--events", str(tmp_path / "e.jsonl"))
    assert code == 0, err
    assert "over 0 events" in out


# --- the report section --------------------------------------------------------------------------


def test_report_backtest_section_escapes_and_draws(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from stream.tools import report

    ritual = "post_purchase_welcome"
    old = rules_variant(tmp_path / "old<b>.yaml", version="v1")
    new = rules_variant(tmp_path / "new.yaml", version="v2", holdout=(ritual, 50))
    path = write_events(tmp_path / "e.jsonl", purchases(40))
    code, _, err = run_diff(
        capsys, str(old), str(new), "--events", str(path), "--out", str(tmp_path / "o")
    )
    assert code == 0, err
    # A summary file is input like any other: whatever it says is shown as text.
    summary = tmp_path / "o" / "summary.json"
    data = json.loads(summary.read_text())
    data["old"]["version"] = "<script>alert(1)</script>"
    data["by_ritual_status"][0]["ritual"] = '<img src=x onerror="alert(2)">'
    summary.write_text(json.dumps(data), encoding="utf-8")
    page = tmp_path / "page.html"
    assert report.main(["--backtest", str(summary), "--out", str(page)]) == 0
    html = page.read_text(encoding="utf-8")
    assert "<script>alert(1)</script>" not in html and "<img" not in html and "<b>" not in html
    assert "Backtest: &lt;script&gt;alert(1)&lt;/script&gt; → v2" in html
    assert "old&lt;b&gt;.yaml" in html
    assert 'data-chart="backtest-daily"' in html and "<rect" in html
    assert "2026-01-05: " in html  # a day's bar, with both figures in its tooltip

    (tmp_path / "bad.json").write_text('{"old": 1}', encoding="utf-8")
    capsys.readouterr()
    code = report.main(["--backtest", str(tmp_path / "bad.json"), "--out", str(page)])
    _one_line_error(code, capsys.readouterr().err, 1, "not a summary.json")


def emit(path: Path, *, customers: int, days: int, seed: int, bad: float = 0.0) -> list[bytes]:
    """A persona traffic file from the emitter (`engage emit --out`)."""
    subprocess.run(
        [sys.executable, "-m", "stream", "emit", "--customers", str(customers), "--days",
         str(days), "--start", "2025-06-01T00:00:00Z", "--seed", str(seed), "--bad-fraction",
         str(bad), "--out", str(path), "--quiet"],
        check=True, cwd=ROOT,
    )  # fmt: skip
    return path.read_bytes().splitlines()


# --- integration: the in-process pass is `engage replay` -----------------------------------------


@pytest.mark.integration
@pytest.mark.timeout(900)
def test_in_process_pass_equals_a_real_replay_byte_for_byte(bootstrap: str, tmp_path: Path) -> None:
    from stream.settings import Settings

    lines = emit(tmp_path / "events.jsonl", customers=120, days=75, seed=23, bad=0.01)[:25_000]
    until = int(datetime(2025, 9, 1, tzinfo=UTC).timestamp() * 1000)
    ns = unique("bt")
    settings = Settings(broker=f"kafka://{bootstrap}", app_id=ns, topic_namespace=ns, partitions=4)
    real = list(canonical_lines(run_replay(lines, settings=settings, until=until, workers=2)))

    history = History("backtest", 4, wall_ms())
    for line in lines:
        if line.strip():
            history.add_line(line)
    result = run_pass(history, load_rules(), wall_ms=wall_ms(), until=until)
    records = sorted(
        (json.loads(raw) for raw in result.decisions.values()),
        key=lambda d: (d["customer_id"], d["decided_at"], d["ritual"], d["anchor"]),
    )
    mine = list(canonical_lines(records))
    assert len(real) > 300
    assert mine == real
    # the engine's own bytes are already the canonical line (what diff.jsonl carries)
    assert all(result.decisions[json.loads(line)["nudge_id"]] == line.encode() for line in mine)
    dead = sum(n for k, n in result.counts.items() if k[0] == "dlq")
    assert dead > 0  # the bad lines were dead-lettered, as the workers did


# --- integration: --from-topics reads production topics and writes nothing ----------------------


async def _topics_and_offsets(bootstrap: str, prefix: str) -> tuple[dict[str, int], list[str]]:
    """Every topic of a namespace with the sum of its end offsets, and the consumer groups
    named like the backtest's that hold committed offsets."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        names = sorted(t for t in await admin.list_topics() if t.startswith(prefix))
        described = await admin.describe_topics(names)
        groups = [g[0] for g in await admin.list_consumer_groups()]
        committed = [
            g for g in groups
            if g.startswith("engage-backtest-") and await admin.list_consumer_group_offsets(g)
        ]  # fmt: skip
    finally:
        await admin.close()
    reader = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await reader.start()
    try:
        tps = [TopicPartition(d["topic"], p["partition"]) for d in described
               for p in d["partitions"]]  # fmt: skip
        ends = await reader.end_offsets(tps) if tps else {}
    finally:
        await reader.stop()
    totals = {name: 0 for name in names}
    for tp, end in ends.items():
        totals[tp.topic] += end
    return totals, committed


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_from_topics_reads_the_input_topics_and_writes_and_commits_nothing(
    bootstrap: str, tmp_path: Path
) -> None:
    import asyncio
    import os

    from stream.adapter.topics import ensure_topics
    from stream.settings import Settings
    from tests.harness import produce_events

    ns = unique("btt")
    settings = Settings(broker=f"kafka://{bootstrap}", app_id=ns, topic_namespace=ns, partitions=3)
    asyncio.run(ensure_topics(settings))
    events = purchases(25)
    for i in range(25):
        events.append(event("review", f"bt-{i}", occurred_at="2026-01-09T12:00:00Z",
                            order_id=f"o-{i}", rating=1 + i % 5, event_id=f"r-{i}"))  # fmt: skip
        events.append(event("click", f"bt-{i}", occurred_at="2026-01-09T13:00:00Z",
                            event_id=f"c-{i}"))  # fmt: skip
    events.sort(key=lambda e: e["occurred_at"])
    produce_events(bootstrap, ns, events)
    before = asyncio.run(_topics_and_offsets(bootstrap, f"{ns}."))
    assert sum(before[0][settings.input_topics[t]] for t in ("purchase", "review", "click")) == 75

    old = rules_variant(tmp_path / "old.yaml", version="v1")
    new = rules_variant(tmp_path / "new.yaml", version="v2", holdout=("three_days_later", 60))
    env = {**os.environ, "ENGAGE_BROKER": f"kafka://{bootstrap}", "ENGAGE_TOPIC_NAMESPACE": ns}
    common = [sys.executable, "-m", "stream", "rules", "diff", str(old), str(new)]
    done = subprocess.run(
        [*common, "--from-topics", "--since", "1d", "--out", str(tmp_path / "topics")],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=240,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    after = asyncio.run(_topics_and_offsets(bootstrap, f"{ns}."))
    assert after[0] == before[0], "the backtest wrote to a topic or created one"
    assert after[1] == [], f"consumer groups with committed offsets: {after[1]}"

    # The same events from a file, on as many partitions: the same decisions and differences.
    path = write_events(tmp_path / "e.jsonl", events)
    done = subprocess.run(
        [*common, "--events", str(path), "--partitions", "3", "--out", str(tmp_path / "file")],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=240,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    topics = json.loads((tmp_path / "topics" / "summary.json").read_text())
    from_file = json.loads((tmp_path / "file" / "summary.json").read_text())
    assert topics["history"]["events"] == 75 and topics["history"]["partitions"] == 3
    assert topics["history"]["source"] == "topics" and topics["history"]["namespace"] == ns
    assert topics["changes"]["changed"] > 0
    for key in ("changes", "by_ritual_status", "daily_delivered", "pressure", "lift"):
        assert topics[key] == from_file[key], key
    assert (tmp_path / "topics" / "diff.jsonl").read_bytes() == (
        tmp_path / "file" / "diff.jsonl"
    ).read_bytes()
