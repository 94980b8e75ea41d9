"""A bare Faust agent over the input topics, for the throughput benchmark's reference rows.

    python bench/faust_bare.py MODE APP_ID NAMESPACE EVENTS PARTITIONS RESULT_FILE PORT

MODE `noop` only counts events; `table` also writes one table key per event (the event's key,
a small value), which is one changelog record each. Both use the worker's Kafka client settings
(`stream.adapter.kafka.faust_options`), so the comparison with `engage worker` is like for like.
When EVENTS have been seen the agent writes the seconds from the first to the last to
RESULT_FILE, then the process's CPU seconds over the same span; the benchmark then stops the
process.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import faust

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from schemas.events import TOPIC_SUFFIX  # noqa: E402
from stream.kafka_client import faust_options  # noqa: E402
from stream.settings import Settings  # noqa: E402

RAW = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw"}


def main() -> None:
    """Run the bare agent until the benchmark stops it."""
    mode, app_id, namespace, events, partitions, result, port = sys.argv[1:8]
    n, parts = int(events), int(partitions)
    settings = Settings(app_id=app_id, topic_namespace=namespace, partitions=parts)
    app = faust.App(
        app_id,
        store="memory://",
        topic_partitions=parts,
        web_port=int(port),
        web_in_thread=False,
        **faust_options(settings),
    )
    topics = [f"{namespace}.{s}" for s in TOPIC_SUFFIX.values()]
    source = app.topic(*topics, partitions=parts, **RAW)
    table = (
        app.Table("bare", default=None, partitions=parts, key_type=bytes, value_type=bytes)
        if mode == "table"
        else None
    )

    @app.agent(source, concurrency=1)
    async def bare(stream: faust.StreamT) -> None:
        seen, first, first_cpu = 0, 0.0, 0.0
        async for event in stream.events():
            if not first:
                first, first_cpu = time.perf_counter(), time.process_time()
            if table is not None:
                table[event.key] = b"1"
            seen += 1
            if seen == n:
                elapsed, cpu = time.perf_counter() - first, time.process_time() - first_cpu
                Path(result).write_text(f"{elapsed:.6f} {cpu:.6f}")

    from faust import Worker

    worker = Worker(app, loglevel="warning")
    worker.spinner = None
    worker.execute_from_commandline()


if __name__ == "__main__":
    main()
