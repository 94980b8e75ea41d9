"""Counting what a run did, a progress bar while it runs, and the summary at the end.

Both go to stderr so that `--out -` can stream events to stdout. The bar is drawn only on a
terminal: in CI logs and containers it would be noise.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from stream.tools.emitter.actions import Planned
from stream.tools.emitter.reactions import Nudge
from stream.tools.emitter.simulation import DAY, Emitted, rfc3339_ms


@dataclass
class Stats:
    """Counters of one run (no customer ids: the summary is safe to paste anywhere).

    In Kafka mode events and bad messages are counted when Kafka acknowledges them, so the
    counts are what reached the topics; `unconfirmed` is what could not be sent in time.
    """

    seed: int | str = 0
    mode: str = "file"
    events_by_type: Counter[str] = field(default_factory=Counter)
    events_by_persona: Counter[str] = field(default_factory=Counter)
    bad_by_reason: Counter[str] = field(default_factory=Counter)
    nudges_by_ritual: Counter[str] = field(default_factory=Counter)
    reactions_by_ritual: Counter[str] = field(default_factory=Counter)
    nudges_ignored: int = 0  # unknown customer, repeated nudge_id, not delivered
    nudges_invalid: int = 0
    prompted_clicks: int = 0
    bytes: int = 0  # message values, without the file's newlines
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None
    last_sim_ms: int | None = None
    handed: int = 0  # Kafka mode: messages given to the producer (acked or not)
    unconfirmed: Counter[str] = field(default_factory=Counter)  # given up on, by cause
    resent: int = 0  # retries after a failed send

    @property
    def events(self) -> int:
        return sum(self.events_by_type.values())

    @property
    def bad(self) -> int:
        return sum(self.bad_by_reason.values())

    @property
    def elapsed(self) -> float:
        return (self.finished or time.monotonic()) - self.started

    def finish(self) -> None:
        """Stop the clock (idempotent: the first call wins)."""
        if self.finished is None:
            self.finished = time.monotonic()

    def settle(self, sink: Any) -> None:
        """Take the sink's final word on what it gave up on (idempotent)."""
        self.unconfirmed = Counter(getattr(sink, "unconfirmed", {}))
        self.resent = int(getattr(sink, "resent", 0))

    def event(self, item: Emitted, persona: str, size: int) -> None:
        self.events_by_type[item.type] += 1
        self.events_by_persona[persona] += 1
        self.bytes += size
        self.last_sim_ms = item.at_ms
        if "nudge_id" in item.event:
            self.prompted_clicks += 1

    def bad_message(self, reason: str, size: int) -> None:
        self.bad_by_reason[reason] += 1
        self.bytes += size

    def nudge(self, nudge: Nudge, plan: list[Planned] | None) -> None:
        """`plan` None: the nudge was ignored (not ours, a repeat, or not delivered)."""
        self.nudges_by_ritual[nudge.ritual] += 1
        if plan is None:
            self.nudges_ignored += 1
        elif plan:
            self.reactions_by_ritual[nudge.ritual] += 1

    def as_dict(self) -> dict[str, Any]:
        elapsed = self.elapsed
        return {
            "seed": self.seed,
            "mode": self.mode,
            "events": self.events,
            "bad_messages": self.bad,
            "elapsed_s": round(elapsed, 3),
            "messages_per_s": round((self.events + self.bad) / elapsed, 1) if elapsed else None,
            "bytes": self.bytes,
            "events_by_type": dict(sorted(self.events_by_type.items())),
            "events_by_persona": dict(sorted(self.events_by_persona.items())),
            "bad_by_reason": dict(sorted(self.bad_by_reason.items())),
            "nudges_received": dict(sorted(self.nudges_by_ritual.items())),
            "nudges_ignored": self.nudges_ignored,
            "nudges_invalid": self.nudges_invalid,
            "reactions": dict(sorted(self.reactions_by_ritual.items())),
            "prompted_clicks": self.prompted_clicks,
            "handed_to_producer": self.handed,
            "unconfirmed_messages": sum(self.unconfirmed.values()),
            "unconfirmed_by_cause": dict(sorted(self.unconfirmed.items())),
            "resent": self.resent,
        }


class ProgressBar:
    """Simulated-time progress; redraws at most ~10 times a second, cheap to call per event."""

    def __init__(self, start_ms: int, end_ms: int, *, enabled: bool, console: Console) -> None:
        self.enabled = enabled
        self._start_ms = start_ms
        self._days = max(1, round((end_ms - start_ms) / DAY))
        self._calls = 0
        self._next_redraw = 0.0
        self._progress = Progress(
            TextColumn("[bold]emit[/]"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("sim days  {task.fields[sim]}  {task.fields[events]} events"),
            TextColumn("{task.fields[rate]}/s"),
            TimeElapsedColumn(),
            console=console,
            disable=not enabled,
            transient=False,
        )
        self._task = self._progress.add_task("emit", total=self._days, sim="", events=0, rate=0)

    def __enter__(self) -> ProgressBar:
        if self.enabled:
            self._progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.enabled:
            self._progress.stop()

    def update(self, sim_ms: int, stats: Stats, *, force: bool = False) -> None:
        if not self.enabled:
            return
        self._calls += 1
        if not force and self._calls & 255:
            return
        now = time.monotonic()
        if not force and now < self._next_redraw:
            return
        self._next_redraw = now + 0.1
        elapsed = stats.elapsed or 1e-9
        self._progress.update(
            self._task,
            completed=min((sim_ms - self._start_ms) / DAY, self._days),
            sim=rfc3339_ms(sim_ms)[:16].replace("T", " "),
            events=f"{stats.events:,}",
            rate=f"{(stats.events + stats.bad) / elapsed:,.0f}",
        )


def print_summary(stats: Stats, console: Console, notes: list[str]) -> None:
    """The end-of-run summary: what was produced, what came back, how fast."""
    d = stats.as_dict()
    console.print(
        f"[bold]engage emit[/] ({d['mode']}, seed {d['seed']}): {d['events']:,} events, "
        f"{d['bad_messages']:,} bad messages, {d['bytes']:,} bytes in {d['elapsed_s']:.1f} s "
        f"({d['messages_per_s'] or 0:,.0f} messages/s)"
    )
    tables = [
        ("events by type", d["events_by_type"]),
        ("events by persona", d["events_by_persona"]),
        ("bad messages by reason", d["bad_by_reason"]),
        ("nudges received", d["nudges_received"]),
        ("nudges reacted to", d["reactions"]),
    ]
    for title, counts in tables:
        if not counts:
            continue
        table = Table(title=title, title_justify="left", show_header=False, box=None)
        table.add_column(style="cyan")
        table.add_column(justify="right")
        for name, count in counts.items():
            table.add_row(name, f"{count:,}")
        console.print(table)
    if stats.mode == "kafka":
        console.print(
            f"prompted clicks {stats.prompted_clicks:,}; nudges ignored {stats.nudges_ignored:,}"
            f"; unreadable nudge records {stats.nudges_invalid:,}"
        )
    if stats.resent or stats.unconfirmed:
        lost = sum(stats.unconfirmed.values())
        style = "bold red" if lost else "yellow"
        console.print(
            f"[{style}]{lost:,} messages could not be confirmed[/] (not counted above; they "
            f"may or may not have reached Kafka) after {stats.resent:,} re-sends"
            + (f": {', '.join(f'{k} {v:,}' for k, v in stats.unconfirmed.items())}" if lost else "")
        )
    for note in notes:
        console.print(f"[yellow]note:[/] {note}")
