"""`engage forward --url URL`: POST every delivered nudge to a webhook, at least once.

A small bridge for messaging systems that take HTTP rather than Kafka. It reads
`{namespace}.nudges` in its own consumer group and, per partition in order, POSTs each nudge's
JSON body with `Idempotency-Key: <nudge_id>` and the CloudEvents HTTP binary-mode headers
(`ce-id`, `ce-type`, ...). A 2xx answer is a delivery. Timeouts, connection errors, 5xx, 408,
425 and 429 are retried with capped exponential backoff (honouring Retry-After) for as long as
it takes. Any other 4xx is a refusal for good: the record goes, with its original key, value
and headers plus a reason, to `{namespace}.forward-dlq`. Offsets are committed only after a
record was delivered or dead-lettered, so a crash re-sends (same Idempotency-Key) and never
loses a nudge; a receiver drops re-sends by that key.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from stream.cli import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, command_parser
from stream.core.cloudevents import http_headers
from stream.core.webhook import backoff_s, verdict

log = logging.getLogger("engage.forward")
_MESSAGE_LIMIT = 200


@dataclass(frozen=True)
class ForwardConfig:
    """What one forwarder does; the Kafka connection comes from the ENGAGE_ variables."""

    url: str
    group: str
    timeout_s: float = 10.0
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    authorization: str | None = None  # from ENGAGE_FORWARD_AUTHORIZATION, never argv


@dataclass
class ForwardStats:
    """Counts of one run, by outcome (no ids: safe to log)."""

    delivered: int = 0
    dead_lettered: int = 0
    attempts: int = 0
    retries_by_cause: Counter[str] = field(default_factory=Counter)

    def line(self) -> str:
        causes = ", ".join(f"{k} {v}" for k, v in sorted(self.retries_by_cause.items()))
        return (
            f"forwarded {self.delivered}, dead-lettered {self.dead_lettered}, "
            f"{self.attempts} HTTP attempts (retries: {causes or 'none'})"
        )


class Forwarder:
    """Consumer -> HTTP POST (with retries) -> commit; refusals to the forward DLQ."""

    def __init__(self, config: ForwardConfig, options: Any) -> None:
        from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

        self.config = config
        self.topic = f"{options.namespace}.nudges"
        self.dlq_topic = f"{options.namespace}.forward-dlq"
        self.stats = ForwardStats()
        kwargs = options.client_kwargs()
        self._options = options
        self._consumer = AIOKafkaConsumer(
            self.topic,
            group_id=config.group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=100,
            # A receiver outage blocks a partition on purpose (nothing is skipped): that must
            # not count as a dead consumer and cost the group its assignment.
            max_poll_interval_ms=24 * 3600 * 1000,
            **kwargs,
        )
        self._producer = AIOKafkaProducer(acks="all", enable_idempotence=True, **kwargs)
        self._session: Any = None

    async def start(self) -> None:
        import aiohttp

        await self._ensure_dlq_topic()
        await self._producer.start()
        await self._consumer.start()
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.config.timeout_s)
        )

    async def stop(self) -> None:
        with contextlib.suppress(Exception):
            await self._consumer.stop()
        with contextlib.suppress(Exception):
            await self._producer.stop()
        if self._session is not None:
            await self._session.close()

    async def _ensure_dlq_topic(self) -> None:
        """The forward DLQ, with the nudges topic's partition count, if it is missing."""
        from aiokafka.admin import AIOKafkaAdminClient, NewTopic
        from aiokafka.errors import TopicAlreadyExistsError

        admin = AIOKafkaAdminClient(**self._options.client_kwargs())
        await admin.start()
        try:
            described = await admin.describe_topics([self.topic])
            count = len(described[0].get("partitions") or []) or 1
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics([NewTopic(self.dlq_topic, count, 1)])
        finally:
            await admin.close()

    async def run(self) -> None:
        """Forever: fetch, forward each partition's records in order, commit what is done."""
        while True:
            batch = await self._consumer.getmany(timeout_ms=1000)
            if batch:
                await asyncio.gather(
                    *(self._partition(tp, records) for tp, records in batch.items())
                )

    async def _partition(self, tp: Any, records: list[Any]) -> None:
        from aiokafka.errors import CommitFailedError, IllegalStateError
        from aiokafka.structs import OffsetAndMetadata

        for record in records:
            if tp not in self._consumer.assignment():
                return  # revoked meanwhile: its new owner re-sends from the committed offset
            await self._one(record)
            try:
                await self._consumer.commit({tp: OffsetAndMetadata(record.offset + 1, "")})
            except (CommitFailedError, IllegalStateError):
                log.warning("partition %s moved to another forwarder; it re-sends from there", tp)
                return

    async def _one(self, record: Any) -> None:
        """Deliver or dead-letter one record; returns only when one of them happened."""
        headers = http_headers(list(record.headers or []))
        nudge_id = _header(record, "ce_id") or _nudge_id(record.value)
        if nudge_id is None:
            await self._dead_letter(record, "unreadable", "no nudge_id in headers or value")
            return
        headers["Idempotency-Key"] = nudge_id
        headers.setdefault("Content-Type", "application/json")
        headers.setdefault("ce-specversion", "1.0")
        headers.setdefault("ce-id", nudge_id)
        if self.config.authorization:
            headers["Authorization"] = self.config.authorization
        attempt = 0
        while True:
            attempt += 1
            self.stats.attempts += 1
            status, retry_after, cause = await self._post(record.value or b"", headers)
            outcome = verdict(status)
            if outcome == "delivered":
                self.stats.delivered += 1
                return
            if outcome == "refused":
                await self._dead_letter(record, "refused", f"HTTP {status} from the receiver")
                return
            self.stats.retries_by_cause[cause] += 1
            wait = backoff_s(
                attempt,
                initial_s=self.config.backoff_initial_s,
                max_s=self.config.backoff_max_s,
                retry_after_s=retry_after,
            )
            log.warning(
                "nudge delivery attempt %d failed (%s), retrying in %.1f s", attempt, cause, wait
            )
            await asyncio.sleep(wait)

    async def _post(
        self, body: bytes, headers: dict[str, str]
    ) -> tuple[int | None, float | None, str]:
        """(status or None, Retry-After seconds, cause label) of one POST."""
        import aiohttp

        try:
            async with self._session.post(self.config.url, data=body, headers=headers) as resp:
                await resp.read()
                retry_after = _retry_after(resp.headers.get("Retry-After"))
                return resp.status, retry_after, f"http_{resp.status}"
        except TimeoutError:
            return None, None, "timeout"
        except aiohttp.ClientError as exc:
            return None, None, type(exc).__name__

    async def _dead_letter(self, record: Any, reason: str, message: str) -> None:
        """The original key, value and headers, plus where it came from and why."""
        headers = [
            *list(record.headers or []),
            ("engage.original_topic", record.topic.encode()),
            ("engage.original_partition", str(record.partition).encode()),
            ("engage.original_offset", str(record.offset).encode()),
            ("engage.reason", reason.encode()),
            ("engage.message", message[:_MESSAGE_LIMIT].encode()),
        ]
        await self._producer.send_and_wait(
            self.dlq_topic, record.value, key=record.key, headers=headers
        )
        self.stats.dead_lettered += 1
        log.warning("nudge dead-lettered to %s: %s", self.dlq_topic, message)


def _header(record: Any, name: str) -> str | None:
    for key, value in record.headers or []:
        if key == name:
            return value.decode("utf-8", "replace")
    return None


def _nudge_id(value: bytes | None) -> str | None:
    """A record without CloudEvents headers (an older worker): the id from the JSON body."""
    import json

    try:
        body = json.loads(value or b"")
    except ValueError:
        return None
    nudge_id = body.get("nudge_id") if isinstance(body, dict) else None
    return nudge_id if isinstance(nudge_id, str) and nudge_id else None


def _retry_after(value: str | None) -> float | None:
    """Retry-After in seconds (the HTTP-date form is treated as absent)."""
    try:
        return max(float(value), 0.0) if value is not None else None
    except ValueError:
        return None


def _positive(text: str) -> float:
    import argparse

    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def main(argv: list[str]) -> int:
    """Run until SIGTERM/Ctrl-C; 0 on a clean stop, 1 on a Kafka failure, 2 on bad usage."""
    parser = command_parser("forward", __doc__.split("\n\n")[1] if __doc__ else "")
    parser.add_argument("--url", required=True, help="the webhook (http:// or https://)")
    parser.add_argument(
        "--group", help="Kafka consumer group (default: {namespace}.forward)", default=None
    )
    parser.add_argument("--timeout", type=_positive, default=10.0, help="seconds per POST")
    parser.add_argument("--backoff-initial", type=_positive, default=0.5, help="seconds")
    parser.add_argument("--backoff-max", type=_positive, default=30.0, help="seconds")
    parser.epilog = (
        f"{parser.epilog} ENGAGE_FORWARD_AUTHORIZATION, if set, is sent as the Authorization "
        "header (e.g. 'Bearer ...')."
    )
    args = parser.parse_args(argv)
    if not args.url.startswith(("http://", "https://")):
        parser.error("--url must start with http:// or https://")
    from stream.tools.emitter.sink import KafkaOptions

    try:
        options = KafkaOptions.from_env()
    except ValueError as exc:
        print(f"engage forward: invalid configuration: {exc}", file=sys.stderr)
        return EXIT_USAGE
    config = ForwardConfig(
        url=args.url,
        group=args.group or f"{options.namespace}.forward",
        timeout_s=args.timeout,
        backoff_initial_s=args.backoff_initial,
        backoff_max_s=args.backoff_max,
        authorization=os.environ.get("ENGAGE_FORWARD_AUTHORIZATION") or None,
    )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    return asyncio.run(_serve(config, options))


async def _serve(config: ForwardConfig, options: Any) -> int:
    from aiokafka.errors import KafkaError

    forwarder = Forwarder(config, options)
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    if task is not None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, task.cancel)
    started = time.monotonic()
    try:
        await forwarder.start()
        log.info("forwarding %s to the webhook (group %s)", forwarder.topic, config.group)
        await forwarder.run()
        return EXIT_OK
    except asyncio.CancelledError:
        return EXIT_OK
    except KafkaError as exc:
        print(f"engage forward: Kafka error: {exc!r}", file=sys.stderr)
        return EXIT_FAILURE
    finally:
        await forwarder.stop()
        log.info("%s in %.1f s", forwarder.stats.line(), time.monotonic() - started)
