"""The `engage` console script: one entry point, one sub-command per module.

Each sub-command lives in its own module exposing ``main(argv) -> int``; this file only
dispatches, so importing it stays cheap (Faust is imported only by the commands that run it).
"""

from __future__ import annotations

import importlib
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "worker": ("stream.adapter.worker", "run the stream-processing worker"),
    "topics": ("stream.adapter.topics", "create the input, output and DLQ topics if missing"),
    "devstack": ("stream.tools.devstack", "install and run Kafka, Redis and Prometheus locally"),
    "emit": ("stream.tools.emitter.cli", "produce synthetic customer traffic"),
    "replay": ("stream.tools.replay", "decide rituals over a JSONL file of events, in event time"),
    "project": ("stream.serving.projection", "the Redis profile projection: `project rebuild`"),
    "demo": ("stream.tools.demo", "run the end-to-end demo"),
    "report": ("stream.tools.report", "write the KPI report as one self-contained HTML file"),
}


def usage() -> str:
    lines = ["usage: engage COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in {"-h", "--help"}:
        print(usage())
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"engage: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
