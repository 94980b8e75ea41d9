"""`engage rules`: check a rules file, or diff two against history (the backtest).

    engage rules check rules.yaml
    engage rules diff OLD.yaml NEW.yaml --events history.jsonl --out backtest/
    engage rules diff OLD.yaml NEW.yaml --from-topics --since 90d --out backtest/

`diff` decides the same history twice, once per rules file, with the in-process engine in
event time (what `engage replay` does on the broker, without a broker), and reports what the
change would have done: decisions added, removed and changed per ritual and status, delivered
volume per day, customers affected, frequency-cap and quiet-hours pressure, lift with its
intervals, and (with `--out DIR`) every differing decision with both versions in
`DIR/diff.jsonl` and the summary in `DIR/summary.json`.

The history is a JSON-lines file of events (`--events`, the input of `engage replay`) or the
input topics from `--since` ago to their current end (`--from-topics`), read with a consumer
group of its own that commits nothing; nothing is written to any topic, table or Redis.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import re
import sys
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from stream.cli import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, SETTINGS_EPILOG, command_parser
from stream.core.backtest import (
    History,
    PassResult,
    compare,
    diff_lines,
    dumps,
    history_facts,
    run_pass,
)
from stream.core.clock import wall_ms
from stream.core.ingest import Limits
from stream.core.rules import Rules, RulesError, load_rules
from stream.core.state import to_ms

_SINCE = re.compile(r"(\d+(?:\.\d+)?)(m|h|d|w)")
_UNIT_S = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class Usage(Exception):
    """A usage or configuration problem: one line on stderr, exit 2."""


class Failure(Exception):
    """The backtest could not run (Kafka, a worker bug): one line on stderr, exit 1."""


# --- arguments -----------------------------------------------------------------------------------


def parse_since(text: str) -> timedelta:
    """'90d', '12h', '30m', '2w' -> a positive duration."""
    match = _SINCE.fullmatch(text.strip())
    if not match or float(match.group(1)) <= 0:
        raise Usage(f"--since {text!r}: expected a duration like 90d, 12h, 30m or 2w")
    return timedelta(seconds=float(match.group(1)) * _UNIT_S[match.group(2)])


def parse_until(text: str) -> int:
    """`--until`: an RFC 3339 instant with an offset -> epoch ms."""
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise Usage(f"--until {text!r}: not an RFC 3339 timestamp") from None
    if moment.tzinfo is None:
        raise Usage(f"--until {text!r}: needs an offset, e.g. Z or +02:00")
    return to_ms(moment)


def parse_partitions(text: str | None) -> int | None:
    """`--partitions`: a whole number 1..1024 (what `engage topics` accepts), or None."""
    if text is None:
        return None
    try:
        value = int(text)
    except ValueError:
        raise Usage(f"--partitions {text!r}: not a whole number") from None
    if not 1 <= value <= 1024:
        raise Usage(f"--partitions {text!r}: must be within 1..1024")
    return value


def read_rules(path: str) -> Rules:
    """A rules file, or Usage with its problems on one line."""
    if not Path(path).is_file():
        raise Usage(f"{path}: no such rules file")
    try:
        return load_rules(path)
    except RulesError as exc:  # each problem as FILE:LINE:COL: message
        first, more = exc.problems[0].strip(), len(exc.problems) - 1
        hint = f" (and {more} more: engage rules check {path})" if more else ""
        raise Usage(first + hint) from None


def _settings() -> Any:
    from pydantic import ValidationError

    from stream.settings import Settings

    try:
        return Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise Usage(f"invalid configuration: {where}: {first['msg']}") from None


# --- history -------------------------------------------------------------------------------------


def history_from_file(path: str, *, partitions: int, wall: int, limits: Limits) -> History:
    """A JSON-lines file as `engage replay` would produce it (blank lines skipped)."""
    history = History("backtest", partitions, wall, limits.max_future_skew)
    try:
        with open(path, "rb") as fh:
            add = history.add_line
            for line in fh:
                line = line.rstrip(b"\n")
                if line.strip():
                    add(line)
    except IsADirectoryError:
        raise Usage(f"{path}: is a directory, not a JSON-lines file") from None
    except FileNotFoundError:
        raise Usage(f"{path}: no such events file") from None
    except OSError as exc:
        raise Usage(f"{path}: cannot read: {exc.strerror or exc}") from None
    return history


async def history_from_topics(
    settings: Any, *, since: timedelta, partitions: int | None, wall: int, limits: Limits
) -> tuple[History, str]:
    """The input topics from `since` ago to their end now, as a History (and the group id).

    Only reads: the topics are checked with the admin client first (a metadata request for a
    missing topic would make a broker that auto-creates topics create it), the consumer is
    assigned its partitions (no group membership), never commits and stops at the end offsets
    read at the start. Records keep their topic, key and, with the topics' own partition count,
    their partition; they are fed in the order the log appended them (timestamp, then topic).
    """
    from aiokafka import TopicPartition

    from stream.kafka_client import admin, check_access, consumer

    await check_access(settings)
    topics = list(settings.input_topics.values())
    client = admin(settings)
    await client.start()
    try:
        present = set(await client.list_topics())
        missing = [t for t in topics if t not in present]
        if missing:
            raise Failure(
                f"input topics missing: {', '.join(missing)} (is ENGAGE_TOPIC_NAMESPACE right?)"
            )
        described = await client.describe_topics(topics)
    finally:
        await client.close()
    counts = {d["topic"]: len(d["partitions"]) for d in described}
    if len(set(counts.values())) != 1:
        raise Failure(f"the input topics are not co-partitioned: {counts}")
    own = next(iter(counts.values()))
    group = f"engage-backtest-{uuid.uuid4().hex}"
    reader = consumer(settings, group_id=group, enable_auto_commit=False)
    await reader.start()
    rank = {t: i for i, t in enumerate(topics)}
    got: list[tuple[int, int, int, int, str, bytes | None, bytes | None]] = []
    try:
        tps = [TopicPartition(t, p) for t in topics for p in range(own)]
        reader.assign(tps)
        since_ms = wall - int(since.total_seconds() * 1000)
        found = await reader.offsets_for_times({tp: since_ms for tp in tps})
        ends = await reader.end_offsets(tps)
        remaining = set()
        for tp in tps:
            at = found.get(tp)
            start = at.offset if at is not None else ends[tp]
            if start < ends[tp]:
                reader.seek(tp, start)
                remaining.add(tp)
        while remaining:
            batch = await reader.getmany(*remaining, timeout_ms=1000, max_records=20_000)
            for tp, msgs in batch.items():
                for m in msgs:
                    if m.offset < ends[tp]:
                        got.append((m.timestamp, rank[tp.topic], tp.partition, m.offset,
                                    tp.topic, m.key, m.value))  # fmt: skip
            for tp in list(remaining):
                if await reader.position(tp) >= ends[tp]:
                    remaining.discard(tp)
    finally:
        await reader.stop()
    n = partitions or own
    history = History(settings.topic_namespace, n, wall, limits.max_future_skew)
    for _ts, _rank, partition, _offset, topic, key, value in sorted(got, key=lambda g: g[:4]):
        history.add_message(topic, key, value, partition=partition if n == own else None)
    return history, group


# --- the passes ----------------------------------------------------------------------------------


def _child(conn: Any, job: Callable[[], PassResult]) -> None:
    try:
        conn.send(("ok", job()))
    except Exception as exc:  # reported by the parent as one line
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()


def run_passes(jobs: list[Callable[[], PassResult]], *, parallel: bool) -> list[PassResult]:
    """Run the passes, each in a process of its own when `parallel` (fork: the children share
    the history already read); one failing pass fails the backtest."""
    if not parallel:
        return [job() for job in jobs]
    ctx = multiprocessing.get_context("fork")
    pipes, procs = [], []
    for job in jobs:
        receive, send = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_child, args=(send, job), daemon=True)
        proc.start()
        send.close()
        pipes.append(receive)
        procs.append(proc)
    results = []
    try:
        for receive in pipes:
            try:
                kind, value = receive.recv()
            except EOFError:
                raise Failure("a backtest pass died (out of memory?)") from None
            if kind != "ok":
                raise Failure(f"a backtest pass failed: {value}")
            results.append(value)
    finally:
        for proc in procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
    return results


# --- output --------------------------------------------------------------------------------------


def _interval(item: dict[str, Any]) -> str:
    d = item["difference"]
    if d["estimate"] is None or d["lower"] is None:
        return "–"
    return f"{d['estimate']:+.3f} ({d['lower']:+.3f} to {d['upper']:+.3f})"


def print_summary(console: Console, summary: dict[str, Any]) -> None:
    """The summary for people: what changed, where, and what it does to volume and lift."""
    old, new, hist, ch = summary["old"], summary["new"], summary["history"], summary["changes"]
    console.print(
        f"[bold]Backtest {old['version']} -> {new['version']}[/bold] over {hist['events']:,} "
        f"events ({hist['partitions']} partitions, {hist['from'] or '-'} to {hist['until'] or '-'})"
    )
    dead = hist["dead_lettered"]
    if dead:
        listed = ", ".join(f"{reason} {n}" for reason, n in dead.items())
        console.print(f"{sum(dead.values()):,} invalid events skipped (dead-lettered: {listed})")
    console.print(
        f"decisions {old['decisions']:,} -> {new['decisions']:,}: added {ch['added']:,}, "
        f"removed {ch['removed']:,}, changed {ch['changed']:,}, unchanged {ch['unchanged']:,}; "
        f"customers affected {summary['customers_affected']:,}; delivered "
        f"{old['delivered']:,} -> {new['delivered']:,}"
    )
    table = Table(title="Decisions per ritual and status")
    for col in ("ritual", "status", "old", "new", "added", "removed", "changed from", "changed to"):
        table.add_column(col, justify="left" if col in {"ritual", "status"} else "right")
    for row in summary["by_ritual_status"]:
        table.add_row(row["ritual"], row["status"], *(f"{row[k]:,}" for k in (
            "old", "new", "added", "removed", "changed_from", "changed_to")))  # fmt: skip
    console.print(table)
    days = summary["daily_delivered"]
    if days:
        differ = [d for d in days if d["old"] != d["new"]]
        peak_old = max(days, key=lambda d: (d["old"], d["day"]))
        peak_new = max(days, key=lambda d: (d["new"], d["day"]))
        console.print(
            f"delivered per day: {len(days)} days, {len(differ)} differ; busiest day "
            f"{peak_old['day']} {peak_old['old']:,} before, {peak_new['day']} "
            f"{peak_new['new']:,} after"
        )
    p = summary["pressure"]
    console.print(
        f"guardrail pressure: frequency cap {p['frequency_cap']['old']:,} -> "
        f"{p['frequency_cap']['new']:,} suppressed; quiet hours "
        f"{p['quiet_hours_deferred']['old']:,} -> {p['quiet_hours_deferred']['new']:,} deferred"
    )
    lifts = {(r["ritual"], r["outcome"]): r for r in summary["lift"]["old"]}
    news = {(r["ritual"], r["outcome"]): r for r in summary["lift"]["new"]}
    if lifts or news:
        table = Table(title="Lift (treated - held out, 95 % interval)")
        for col in ("ritual", "outcome", "before", "after", "verdict after"):
            table.add_column(col)
        for key in sorted(lifts.keys() | news.keys()):
            a, b = lifts.get(key), news.get(key)
            table.add_row(
                key[0],
                key[1],
                _interval(a) if a else "–",
                _interval(b) if b else "–",
                b["verdict"] if b else "–",
            )
        console.print(table)


def write_out(directory: Path, diff: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    """DIR/diff.jsonl and DIR/summary.json, canonical JSON (same input, same bytes)."""
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / "diff.jsonl").open("w", encoding="utf-8") as fh:
        for line in diff_lines(diff):
            fh.write(line + "\n")
    (directory / "summary.json").write_text(dumps(summary) + "\n", encoding="utf-8")


# --- commands ------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = command_parser("rules", "Check a rules file, or diff two against history (backtest).")
    sub = parser.add_subparsers(dest="action", required=True, metavar="{check,diff}")

    def add(name: str, text: str) -> argparse.ArgumentParser:
        return sub.add_parser(
            name, help=text, description=text, epilog=SETTINGS_EPILOG, prog=f"engage rules {name}"
        )

    check = add("check", "validate a rules file: every problem as FILE:LINE:COL: message")
    check.add_argument("file", help="the rules file (YAML)")
    diff = add("diff", "replay two rules files over the same history and compare the decisions")
    diff.add_argument("old", help="the rules file in force")
    diff.add_argument("new", help="the changed rules file")
    source = diff.add_mutually_exclusive_group(required=True)
    source.add_argument("--events", metavar="FILE.jsonl", help="history: JSON lines of events")
    source.add_argument(
        "--from-topics",
        action="store_true",
        help="history: the input topics of ENGAGE_TOPIC_NAMESPACE from --since ago to now",
    )
    diff.add_argument("--since", default="90d", help="with --from-topics (default: 90d)")
    diff.add_argument(
        "--until",
        metavar="RFC3339",
        help="move every clock to this instant at the end (default: the last event's time)",
    )
    diff.add_argument(
        "--partitions",
        metavar="N",
        help="partition the history as N partitions (default: the topics' count with "
        "--from-topics, else ENGAGE_PARTITIONS, 8)",
    )
    diff.add_argument("--out", metavar="DIR", type=Path, help="write diff.jsonl and summary.json")
    diff.add_argument(
        "--jobs",
        type=int,
        choices=(1, 2),
        default=2,
        help="2: the two passes in two processes at once (default); 1: one after the other",
    )
    return parser


def check(path: str) -> int:
    """`engage rules check FILE`: problems on stderr (exit 2), or `FILE: ok`."""
    from stream.core.rules import check_rules_file

    problems = check_rules_file(path)
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        return EXIT_USAGE
    print(f"{path}: ok")
    return EXIT_OK


def diff(args: argparse.Namespace, console: Console, log: Console) -> int:
    """`engage rules diff`: both passes, the comparison, the summary and the files."""
    old_rules, new_rules = read_rules(args.old), read_rules(args.new)
    until = parse_until(args.until) if args.until else None
    partitions = parse_partitions(args.partitions)
    since = parse_since(args.since) if args.from_topics else None
    settings = _settings()
    limits = Limits(
        max_message_bytes=settings.max_message_bytes,
        max_future_skew=timedelta(seconds=settings.max_future_skew_s),
    )
    wall = wall_ms()
    started = time.perf_counter()
    if args.from_topics:
        from aiokafka.errors import KafkaError

        from stream.kafka_client import KafkaAccessError, describe_error

        assert since is not None
        try:
            history, group = asyncio.run(
                history_from_topics(
                    settings, since=since, partitions=partitions, wall=wall, limits=limits
                )
            )
        except (KafkaError, KafkaAccessError, OSError) as exc:
            raise Failure(describe_error(exc, settings)) from None
        source = {"source": "topics", "namespace": settings.topic_namespace,
                  "since": args.since}  # fmt: skip
        log.print(f"read {history.events:,} events from {settings.topic_namespace} (group {group})")
    else:
        history = history_from_file(
            args.events, partitions=partitions or settings.partitions, wall=wall, limits=limits
        )
        source = {"source": "events", "file": args.events}
    read_s = time.perf_counter() - started

    def job(rules: Rules) -> Callable[[], PassResult]:
        return lambda: run_pass(history, rules, wall_ms=wall, until=until, limits=limits)

    started = time.perf_counter()
    old, new = run_passes([job(old_rules), job(new_rules)], parallel=args.jobs == 2)
    pass_s = time.perf_counter() - started
    started = time.perf_counter()
    facts = {**source, **history_facts(history, old)}
    changes, summary = compare(old, new, history=facts, old_file=args.old, new_file=args.new)
    if args.out is not None:
        try:
            write_out(args.out, changes, summary)
        except OSError as exc:
            raise Failure(f"{args.out}: cannot write: {exc.strerror or exc}") from None
    compare_s = time.perf_counter() - started
    print_summary(console, summary)
    if args.out is not None:
        console.print(f"wrote {args.out / 'diff.jsonl'} and {args.out / 'summary.json'}")
    log.print(
        f"timings: read {read_s:.1f} s, passes {pass_s:.1f} s "
        f"({'2 processes' if args.jobs == 2 else 'one after the other'}), "
        f"compare and write {compare_s:.1f} s"
    )
    return EXIT_OK


def main(argv: list[str]) -> int:
    """`engage rules check|diff`; exit 0 ok, 1 failure, 2 usage or invalid input."""
    args = _parser().parse_args(argv)
    if args.action == "check":
        return check(args.file)
    # Piped to a file, rich would wrap the tables at 80 columns.
    console = Console() if sys.stdout.isatty() else Console(width=160)
    log = Console(stderr=True)
    try:
        return diff(args, console, log)
    except Usage as exc:
        print(f"engage rules diff: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Failure as exc:
        print(f"engage rules diff: {exc}", file=sys.stderr)
        return EXIT_FAILURE
