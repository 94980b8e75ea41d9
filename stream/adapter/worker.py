"""`engage worker`: create the topics, then run the Faust worker until stopped."""

from __future__ import annotations

import asyncio
import sys

from stream.cli import command_parser


def main(argv: list[str]) -> int:
    """Run one worker until SIGTERM/SIGINT; `--help` prints usage and starts nothing."""
    command_parser(
        "worker",
        "Create the topics if missing, then run the stream-processing worker until stopped "
        "(SIGTERM or Ctrl-C). It folds events into per-customer state, decides rituals, "
        "serves /customers, /kpis, /metrics, /healthz and /readyz, and projects profiles "
        "into Redis.",
    ).parse_args(argv)
    from aiokafka.errors import KafkaError

    from stream.adapter.app import create_app
    from stream.adapter.topics import TopicMismatch, ensure_topics
    from stream.core.rules import RulesError, load_rules
    from stream.kafka_client import KafkaAccessError, describe_error
    from stream.settings import load_settings

    settings = load_settings()
    try:
        rules = load_rules(settings.rules_file)  # before any I/O: a bad file fails fast
    except RulesError as exc:
        print(f"engage worker: {exc}", file=sys.stderr)
        return 2
    try:
        topics = asyncio.run(ensure_topics(settings))
    except TopicMismatch as exc:
        print(f"engage worker: {exc}", file=sys.stderr)
        return 1
    except (KafkaError, KafkaAccessError, OSError) as exc:
        print(f"engage worker: {describe_error(exc, settings)}", file=sys.stderr)
        return 1
    # The replication the topics were created with also goes to the topics Faust creates.
    settings = settings.model_copy(
        update={
            "replication_factor": topics.replication_factor,
            "min_insync_replicas": topics.min_insync_replicas,
        }
    )
    engage = create_app(settings, rules)
    engage.shell.collector.install()  # the process's collector: only a real worker's
    from faust import Worker

    worker = Worker(engage.app, loglevel=settings.log_level)
    # Faust's terminal spinner sets the root logger to DEBUG whenever the level is WARNING or
    # above, so every library debug call would build a log record: ~7 % of a worker's CPU.
    worker.spinner = None
    worker.execute_from_commandline()
    return 0
