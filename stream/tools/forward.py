"""`engage forward --url URL`: POST every delivered nudge to a webhook, at least once.

A small bridge for messaging systems that take HTTP rather than Kafka. It reads
`{namespace}.nudges` in its own consumer group and, per partition in order, POSTs each nudge of
the chosen audiences (`customer` by default: a `service_team` nudge never reaches a customer
webhook) with `Idempotency-Key: <nudge_id>`, the CloudEvents HTTP binary-mode headers (`ce-id`,
`ce-type`, ...) and a Standard Webhooks signature (`webhook-id`, `webhook-timestamp`,
`webhook-signature`) made with ENGAGE_WEBHOOK_SECRET. A 2xx answer is a delivery. Redirects
are never followed. Timeouts, connection errors, 3xx, 5xx, 408, 425 and 429 are retried with
capped exponential backoff (honouring Retry-After) until the nudge is delivered or, with
--max-age, too old to send. Any other 4xx is a refusal for good. A refused or expired nudge
goes, with its original key, value and headers plus a reason, to `{namespace}.forward-dlq`.
Offsets are committed only after a record was delivered, skipped (another audience) or
dead-lettered, so a crash re-sends (same Idempotency-Key) and never loses a nudge; a receiver
drops re-sends by that key.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from stream.cli import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, command_parser
from stream.core.cloudevents import http_headers
from stream.core.webhook import (
    AUDIENCES,
    DEFAULT_AUDIENCES,
    backoff_s,
    decode_secret,
    seconds_left,
    signed_headers,
    verdict,
)
from stream.topic_names import forward_dlq_topic, forward_group, nudges_topic

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
    audiences: frozenset[str] = DEFAULT_AUDIENCES
    max_age_s: float | None = None  # undelivered this long after decided_at: dead-lettered
    dlq_retention_ms: int | None = None  # ENGAGE_DLQ_RETENTION_DAYS, for a DLQ it creates
    # Secrets come from the environment, never argv, and never show in a repr or a log line.
    authorization: str | None = field(default=None, repr=False)  # ENGAGE_FORWARD_AUTHORIZATION
    secret: bytes | None = field(default=None, repr=False)  # ENGAGE_WEBHOOK_SECRET, decoded


@dataclass
class ForwardStats:
    """Counts of one run, by outcome (no ids: safe to log)."""

    delivered: int = 0
    dead_lettered: int = 0
    skipped: int = 0  # another audience: committed, never sent
    attempts: int = 0
    retries_by_cause: Counter[str] = field(default_factory=Counter)

    def line(self) -> str:
        causes = ", ".join(f"{k} {v}" for k, v in sorted(self.retries_by_cause.items()))
        return (
            f"forwarded {self.delivered}, dead-lettered {self.dead_lettered}, "
            f"skipped {self.skipped} of other audiences, "
            f"{self.attempts} HTTP attempts (retries: {causes or 'none'})"
        )


class Forwarder:
    """Consumer -> HTTP POST (with retries) -> commit; refusals to the forward DLQ."""

    def __init__(self, config: ForwardConfig, options: Any) -> None:
        from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

        self.config = config
        self.topic = nudges_topic(options.namespace)
        self.dlq_topic = forward_dlq_topic(options.namespace)
        self.stats = ForwardStats()
        kwargs = options.client_kwargs()
        self._options = options
        self._source = AIOKafkaConsumer(
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
        await self._source.start()
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.config.timeout_s)
        )

    async def stop(self) -> None:
        with contextlib.suppress(Exception):
            await self._source.stop()
        with contextlib.suppress(Exception):
            await self._producer.stop()
        if self._session is not None:
            await self._session.close()

    async def _ensure_dlq_topic(self) -> None:
        """The forward DLQ, with the nudges topic's partition count, if it is missing (with
        the DLQ retention when one is set; `engage topics` applies it to an existing one)."""
        from aiokafka.admin import AIOKafkaAdminClient, NewTopic
        from aiokafka.errors import TopicAlreadyExistsError

        admin = AIOKafkaAdminClient(**self._options.client_kwargs())
        await admin.start()
        try:
            described = await admin.describe_topics([self.topic])
            count = len(described[0].get("partitions") or []) or 1
            with contextlib.suppress(TopicAlreadyExistsError):
                retention = self.config.dlq_retention_ms
                configs = {} if retention is None else {"retention.ms": str(retention)}
                await admin.create_topics(
                    [NewTopic(self.dlq_topic, count, 1, topic_configs=configs)]
                )
        finally:
            await admin.close()

    async def run(self) -> None:
        """Forever: fetch, forward each partition's records in order, commit what is done."""
        while True:
            batch = await self._source.getmany(timeout_ms=1000)
            if batch:
                await asyncio.gather(
                    *(self._partition(tp, records) for tp, records in batch.items())
                )

    async def _partition(self, tp: Any, records: list[Any]) -> None:
        from aiokafka.errors import CommitFailedError, IllegalStateError
        from aiokafka.structs import OffsetAndMetadata

        for record in records:
            if tp not in self._source.assignment():
                return  # revoked meanwhile: its new owner re-sends from the committed offset
            await self._one(record)
            try:
                await self._source.commit({tp: OffsetAndMetadata(record.offset + 1, "")})
            except (CommitFailedError, IllegalStateError):
                log.warning("partition %s moved to another forwarder; it re-sends from there", tp)
                return

    async def _one(self, record: Any) -> None:
        """Deliver, skip or dead-letter one record; returns only when one of them happened."""
        body = _body(record.value)
        nudge_id = _header(record, "ce_id") or _text(body.get("nudge_id"))
        if nudge_id is None:
            await self._dead_letter(record, "unreadable", "no nudge_id in headers or value")
            return
        audience = _text(body.get("audience")) or _header(record, "ce_audience")
        if audience is None:
            await self._dead_letter(record, "unreadable", "no audience in value or headers")
            return
        if audience not in self.config.audiences:
            self.stats.skipped += 1
            return
        decided_at = _instant(_text(body.get("decided_at")) or _header(record, "ce_time"))
        payload = record.value or b""
        headers = http_headers(list(record.headers or []))
        headers["Idempotency-Key"] = nudge_id
        headers.setdefault("Content-Type", "application/json")
        headers.setdefault("ce-specversion", "1.0")
        headers.setdefault("ce-id", nudge_id)
        if self.config.authorization:
            headers["Authorization"] = self.config.authorization
        attempt = 0
        while True:
            # The forwarder is a tool, not a decision: its own wall clock says how old a nudge is.
            left = seconds_left(decided_at, now=datetime.now(UTC), max_age_s=self.config.max_age_s)
            if left <= 0:
                await self._dead_letter(
                    record,
                    "expired",
                    f"not delivered within {self.config.max_age_s:g} s of decided_at "
                    f"({attempt} attempts)",
                )
                return
            attempt += 1
            self.stats.attempts += 1
            if self.config.secret is not None:  # a fresh timestamp and signature per attempt
                headers.update(
                    signed_headers(
                        self.config.secret, msg_id=nudge_id, timestamp=int(time.time()),
                        body=payload,
                    )
                )  # fmt: skip
            status, retry_after, cause = await self._post(payload, headers)
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
            wait = max(min(wait, left), 0.0)  # an expiring nudge is dead-lettered on time
            redirect = " (a redirect: not followed)" if status and 300 <= status < 400 else ""
            log.warning(
                "nudge delivery attempt %d failed (%s%s), retrying in %.1f s",
                attempt, cause, redirect, wait,
            )  # fmt: skip
            await asyncio.sleep(wait)

    async def _post(
        self, body: bytes, headers: dict[str, str]
    ) -> tuple[int | None, float | None, str]:
        """(status or None, Retry-After seconds, cause label) of one POST."""
        import aiohttp

        try:
            async with self._session.post(
                self.config.url, data=body, headers=headers, allow_redirects=False
            ) as resp:
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


def _body(value: bytes | None) -> dict[str, Any]:
    """The record's JSON object, or {} when it is not one (then the headers must do)."""
    try:
        body = json.loads(value or b"")
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _instant(text: str | None) -> datetime | None:
    """`decided_at` as an aware datetime; None when absent or unreadable (it cannot expire)."""
    if text is None:
        return None
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


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


def _retention_ms(days: str | None) -> int | None:
    """ENGAGE_DLQ_RETENTION_DAYS as retention.ms (the worker's settings read it the same way)."""
    if not days:
        return None
    value = float(days)
    if not value > 0:
        raise ValueError(days)
    return int(value * 86_400_000)


def _audiences(text: str) -> frozenset[str]:
    import argparse

    chosen = frozenset(part.strip() for part in text.split(",") if part.strip())
    unknown = chosen - set(AUDIENCES)
    if not chosen or unknown:
        raise argparse.ArgumentTypeError(
            f"expected a comma-separated list of {', '.join(AUDIENCES)}, got {text!r}"
        )
    return chosen


def main(argv: list[str]) -> int:
    """Run until SIGTERM/Ctrl-C; 0 on a clean stop, 1 on a Kafka failure, 2 on bad usage."""
    parser = command_parser("forward", __doc__.split("\n\n")[1] if __doc__ else "")
    parser.add_argument("--url", required=True, help="the webhook (http:// or https://)")
    parser.add_argument(
        "--group", help="Kafka consumer group (default: {namespace}.forward)", default=None
    )
    parser.add_argument(
        "--audience",
        type=_audiences,
        default=DEFAULT_AUDIENCES,
        help=f"which nudges to send, comma-separated from {', '.join(AUDIENCES)} (default: "
        "customer); the others are skipped",
    )
    parser.add_argument(
        "--max-age",
        type=_positive,
        default=None,
        help="seconds after its decided_at past which an undelivered nudge is dead-lettered "
        "(reason expired) instead of retried (default: retried for as long as it takes)",
    )
    parser.add_argument("--timeout", type=_positive, default=10.0, help="seconds per POST")
    parser.add_argument("--backoff-initial", type=_positive, default=0.5, help="seconds")
    parser.add_argument("--backoff-max", type=_positive, default=30.0, help="seconds")
    parser.add_argument(
        "--unsigned",
        action="store_true",
        help="send without the webhook-signature headers (only for a receiver that cannot "
        "verify them; by default ENGAGE_WEBHOOK_SECRET is required)",
    )
    parser.epilog = (
        f"{parser.epilog} ENGAGE_WEBHOOK_SECRET (base64, optionally prefixed whsec_, as "
        "Standard Webhooks writes it) signs every request. ENGAGE_FORWARD_AUTHORIZATION, if "
        "set, is sent as the Authorization header (e.g. 'Bearer ...')."
    )
    args = parser.parse_args(argv)
    if not args.url.startswith(("http://", "https://")):
        parser.error("--url must start with http:// or https://")
    secret_text = os.environ.get("ENGAGE_WEBHOOK_SECRET") or None
    secret = None
    if secret_text is not None:
        try:
            secret = decode_secret(secret_text)
        except ValueError as exc:
            print(f"engage forward: ENGAGE_WEBHOOK_SECRET {exc}", file=sys.stderr)
            return EXIT_USAGE
    elif not args.unsigned:
        print(
            "engage forward: set ENGAGE_WEBHOOK_SECRET to sign the requests "
            "(or pass --unsigned for a receiver that cannot verify signatures)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    from stream.kafka_client import KafkaOptions

    try:
        options = KafkaOptions.from_env()
    except ValueError as exc:
        print(f"engage forward: invalid configuration: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        retention_ms = _retention_ms(os.environ.get("ENGAGE_DLQ_RETENTION_DAYS"))
    except ValueError:
        print("engage forward: ENGAGE_DLQ_RETENTION_DAYS must be a number > 0", file=sys.stderr)
        return EXIT_USAGE
    config = ForwardConfig(
        url=args.url,
        group=args.group or forward_group(options.namespace),
        timeout_s=args.timeout,
        backoff_initial_s=args.backoff_initial,
        backoff_max_s=args.backoff_max,
        audiences=args.audience,
        max_age_s=args.max_age,
        dlq_retention_ms=retention_ms,
        authorization=os.environ.get("ENGAGE_FORWARD_AUTHORIZATION") or None,
        secret=secret,
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
        log.info(
            "forwarding %s (audience %s) to the webhook (group %s%s)",
            forwarder.topic, "/".join(sorted(config.audiences)), config.group,
            "" if config.secret else ", unsigned",
        )  # fmt: skip
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
