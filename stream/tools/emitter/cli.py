"""`engage emit`: synthetic customer traffic, into Kafka or a JSON-lines file.

Kafka mode (default) produces to `{ns}.clicks`, `{ns}.purchases`, ... on ENGAGE_BROKER, paced
at `--speed` simulated seconds per wall second, and reacts to the nudges the processor
delivers on `{ns}.nudges` (the closed loop). `--out FILE` writes the same bytes to a file as
fast as possible instead: with the same `--seed`, `--start` and other arguments the file is
identical byte for byte (pass `--start`: its default depends on today's date).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from rich.console import Console

from schemas.events import TOPIC_SUFFIX
from stream.cli import command_parser, fail
from stream.kafka_client import KafkaOptions
from stream.tools.emitter.faults import FILE_REASONS, MAX_FRACTION, REASONS, FaultMixer
from stream.tools.emitter.report import ProgressBar, Stats, print_summary
from stream.tools.emitter.runner import run_file, run_kafka
from stream.tools.emitter.simulation import SimConfig, Simulation
from stream.tools.emitter.sink import FileSink, KafkaSink, MissingTopics, NudgeListener
from stream.tools.emitter.wire import topic

#: The processor dead-letters events this far ahead of its wall clock (SPEC §1).
_FUTURE_SKEW = timedelta(minutes=5)


def parse_start(text: str, days: float, now: datetime) -> datetime:
    """`--start`: RFC 3339 with an offset, a date (midnight UTC), or `now`.

    Without `--start` the run ends now: simulated time never runs ahead of the wall clock.
    The default is rounded down to the minute, for readable timestamps.
    """
    if text == "":
        begin = now - timedelta(days=days)
        return begin.replace(second=0, microsecond=0)
    if text == "now":
        return now
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"--start {text!r}: not an RFC 3339 timestamp") from None
    if len(text) == 10:  # a date
        return moment.replace(tzinfo=UTC)
    if moment.tzinfo is None:
        raise ValueError(f"--start {text!r}: needs an offset, e.g. Z or +02:00")
    return moment.astimezone(UTC)


def _positive(kind: type[int] | type[float]) -> Callable[[str], int | float]:
    """An argparse type: a number > 0."""

    def check(text: str) -> int | float:
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value

    return check


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 <= value <= MAX_FRACTION:
        raise argparse.ArgumentTypeError(f"must be within 0..{MAX_FRACTION}, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser(
        "emit",
        __doc__.split("\n\n")[0] if __doc__ else "",
        epilog=(
            "Environment: ENGAGE_BROKER (kafka://127.0.0.1:9092), ENGAGE_TOPIC_NAMESPACE "
            "(engage), ENGAGE_SECURITY_PROTOCOL, ENGAGE_SASL_MECHANISM/USERNAME/PASSWORD, "
            "ENGAGE_SSL_CAFILE/CERTFILE/KEYFILE. In file mode only the bad messages a file can "
            f"carry are written ({', '.join(FILE_REASONS)}): key_mismatch needs a Kafka key and "
            "future_timestamp depends on the wall clock."
        ),
    )
    parser.add_argument(
        "--customers",
        type=_positive(int),
        default=1000,
        metavar="N",
        help="simulated customers (default 1000)",
    )
    parser.add_argument(
        "--days", type=_positive(float), default=90.0, help="simulated days (default 90)"
    )
    parser.add_argument(
        "--start",
        default="",
        metavar="RFC3339",
        help="simulated start: timestamp with offset, a date, or 'now' (default: now minus --days)",
    )
    parser.add_argument(
        "--speed",
        type=_positive(float),
        default=86400.0,
        help="simulated seconds per wall second in Kafka mode (default 86400: a day per second)",
    )
    parser.add_argument(
        "--rate",
        type=_positive(float),
        default=None,
        help="cap on messages per wall second in Kafka mode",
    )
    parser.add_argument(
        "--seed", default=None, help="makes the run reproducible (default: random, printed)"
    )
    parser.add_argument(
        "--out",
        default=None,
        metavar="FILE.jsonl",
        help="write JSON lines to FILE ('-' = stdout) instead of producing",
    )
    parser.add_argument(
        "--bad-fraction",
        type=_fraction,
        default=0.0,
        metavar="F",
        help="share of malformed messages, one kind per DLQ reason (default 0)",
    )
    parser.add_argument(
        "--browse",
        type=_positive(float),
        default=1.0,
        metavar="F",
        help="scale browsing sessions by F (0.2: a fifth of the clicks, same purchases, reviews "
        "and surveys; lighter traffic for demos on small machines)",
    )
    parser.add_argument(
        "--prefix", default="cust", help="customer ids are PREFIX-000001, ... (default cust)"
    )
    parser.add_argument(
        "--no-feedback",
        action="store_true",
        help="Kafka mode: do not read the nudges topic (no closed loop)",
    )
    parser.add_argument(
        "--connect-timeout",
        type=_positive(float),
        default=60.0,
        metavar="S",
        help="wait this long for the broker (default 60)",
    )
    parser.add_argument(
        "--send-timeout",
        type=_positive(float),
        default=300.0,
        metavar="S",
        help="Kafka mode: keep re-sending a message through a broker outage for this long, "
        "then report it as unconfirmed and exit 1 (default 300)",
    )
    parser.add_argument(
        "--summary-json", default=None, metavar="FILE", help="also write the summary as JSON"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar, no summary")
    return parser  # fmt: skip


def _seed(text: str | None) -> int | str:
    if text is None:
        return int.from_bytes(os.urandom(4), "big")
    return int(text) if text.lstrip("-").isdigit() else text


def main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    console = Console(stderr=True)
    now = datetime.now(UTC)
    try:
        start = parse_start(args.start, args.days, now)
        seed = _seed(args.seed)
        config = SimConfig(args.customers, args.days, start, seed, args.prefix, args.browse)
    except ValueError as exc:
        parser.error(str(exc))
    file_mode = args.out is not None
    stats = Stats(seed=seed, mode="file" if file_mode else "kafka")
    mixer = FaultMixer(seed, args.bad_fraction, file_mode=file_mode)
    notes: list[str] = []
    if file_mode and args.bad_fraction:
        skipped = sorted(set(REASONS) - set(FILE_REASONS))
        notes.append(f"file mode: {', '.join(skipped)} cannot be written to a file, skipped")
    sim = Simulation(config)
    show = not args.quiet and console.is_terminal
    bar = ProgressBar(sim.start_ms, sim.end_ms, enabled=show, console=console)
    if file_mode:
        try:
            sink = FileSink(args.out)
        except OSError as exc:
            return fail("emit", f"cannot write {args.out}: {exc.strerror or exc}")
        try:
            with bar:
                run_file(sim, sink, mixer, stats, bar)
        finally:
            sink.close()
            stats.finish()
        if not args.quiet:
            print_summary(stats, console, notes)
        _write_summary(args.summary_json, stats)
        return 0
    try:
        options = KafkaOptions.from_env()
    except ValueError as exc:
        console.print(f"engage emit: invalid configuration: {exc}")
        return 2
    end = start + timedelta(days=args.days)
    if end > now + _FUTURE_SKEW:
        notes.append(
            "the run ends after the wall clock: from when simulated time catches up, events "
            "are paced in real time (the processor rejects events from the future)"
        )
    code = 0
    try:
        code = asyncio.run(_kafka(sim, options, mixer, stats, bar, args))
    except KeyboardInterrupt:
        code = 130
    finally:
        stats.finish()
        if not args.quiet:
            print_summary(stats, console, notes)
        _write_summary(args.summary_json, stats)
    return code


def _write_summary(path: str | None, stats: Stats) -> None:
    """The summary as JSON, for scripts and tests (the same figures as the printed one)."""
    if path:
        with open(path, "w", encoding="utf-8") as out:
            json.dump(stats.as_dict(), out, indent=2)
            out.write("\n")


async def _kafka(
    sim: Simulation,
    options: KafkaOptions,
    mixer: FaultMixer,
    stats: Stats,
    bar: ProgressBar,
    args: argparse.Namespace,
) -> int:
    """Kafka mode; SIGTERM (docker stop) ends the run as cleanly as Ctrl-C does."""
    from aiokafka.errors import KafkaError

    from stream.kafka_client import KafkaAccessError, describe_error

    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    if task is not None:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGTERM, task.cancel)
    sink = KafkaSink(options, send_timeout_s=args.send_timeout)
    interrupted = False
    listener = None if args.no_feedback else NudgeListener(options)
    inputs = [topic(options.namespace, kind) for kind in TOPIC_SUFFIX]
    try:
        await sink.start(args.connect_timeout)
        wanted = inputs + ([listener.topic] if listener is not None else [])
        partitions = await sink.wait_for_topics(wanted, args.connect_timeout)
        if listener is not None:
            await listener.start(partitions[listener.topic], args.connect_timeout)
        with bar:
            await run_kafka(
                sim, sink, mixer, listener, stats, bar, speed=args.speed, rate=args.rate
            )
        return 1 if stats.unconfirmed else 0
    except MissingTopics as exc:
        print(f"engage emit: {exc}", file=sys.stderr)
        return 2
    except (KafkaError, KafkaAccessError) as exc:
        print(f"engage emit: {describe_error(exc, options)}", file=sys.stderr)
        return 1
    except asyncio.CancelledError:
        interrupted = True
        return 143
    finally:
        stats.finish()
        if listener is not None:
            with contextlib.suppress(Exception):
                await listener.stop()
        with contextlib.suppress(Exception):
            # interrupted: give in-flight sends a few seconds, then report the rest
            await sink.stop(timeout_s=10.0 if interrupted else None)
        stats.settle(sink)
