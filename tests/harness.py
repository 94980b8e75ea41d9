"""Integration-test tools: real workers as subprocesses, real Kafka clients.

The worker process and the Kafka clients live in `stream.tools.processes` (the benchmarks use
them too, and a benchmark imports no test); this module re-exports them for the tests and
keeps what only tests need: `ROOT` (this repository) and `produce_events`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from stream.tools.processes import (
    Worker,
    free_port,
    produce,
    read_all,
    table_state,
    unique,
    wait_for,
)

__all__ = [
    "ROOT",
    "Worker",
    "free_port",
    "produce",
    "produce_events",
    "read_all",
    "table_state",
    "unique",
    "wait_for",
]

ROOT = Path(__file__).resolve().parent.parent


def produce_events(bootstrap: str, namespace: str, events: Iterable[dict[str, Any]]) -> None:
    """Send event dicts to their event topics, keyed by customer_id."""
    from schemas.events import TOPIC_SUFFIX

    produce(
        bootstrap,
        [
            (
                f"{namespace}.{TOPIC_SUFFIX[e['type']]}",
                e["customer_id"].encode(),
                json.dumps(e).encode(),
            )
            for e in events
        ],
    )
