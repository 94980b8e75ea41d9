"""The Redis profile projection (SPEC §6): profiles and segment sets for messaging systems.

Redis is a read model, never a source of truth: the `customers` table (its changelog) is. So
the worker must never wait for Redis. `RedisProjector.enqueue` only records "customer X now
has state S at clock C" in a dict (latest wins, one entry per customer, no I/O), and a
background loop writes what is pending in pipelined MULTI/EXEC batches. While Redis is down the
dict keeps the latest state of every changed customer and the loop retries with capped backoff;
when Redis is back it drains the dict. Each write is a pure function of (state, clock, rules),
so replaying the same writes gives the same content, and `rebuild` can recreate everything from
the changelog.

Keys (SPEC §6):

- `engage:profile:{customer_id}`: a hash, `profile_hash(view(state, clock))`.
- `engage:segment:stage:{stage}` and `engage:segment:quadrant:{quadrant}`: sets of customer
  ids; a customer is in exactly one set of each kind.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import logging
import sys
import time
from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from stream.profile import QUADRANTS, STAGES, view
from stream.rules import DEFAULT_RULES, ProfileRules, Rules
from stream.state import decode

log = logging.getLogger("engage")

PROFILE_PREFIX = "engage:profile:"
SEGMENT_PREFIX = "engage:segment:"
STAGE_KEYS: dict[str, str] = {s: f"{SEGMENT_PREFIX}stage:{s}" for s in STAGES}
QUADRANT_KEYS: dict[str, str] = {q: f"{SEGMENT_PREFIX}quadrant:{q}" for q in QUADRANTS}
SEGMENT_KEYS: frozenset[str] = frozenset({*STAGE_KEYS.values(), *QUADRANT_KEYS.values()})

# One Redis round trip is ~0.1 ms locally and a catch-up batch ~10-50 ms: sub-ms to seconds.
WRITE_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

Pending = tuple[bytes | None, int]  # (state bytes or None for "deleted", clock ms)


# --- the hash layout ---------------------------------------------------------------------------


def profile_key(customer_id: str) -> str:
    return f"{PROFILE_PREFIX}{customer_id}"


def profile_hash(profile: Mapping[str, Any]) -> dict[str, str]:
    """A profile (`stream.profile.view`) as Redis hash fields, all strings.

    Flat, so a messaging system can HGET one field without parsing anything:

    - nested dicts become dotted fields (`counts.click`, `click_actions.page_view`,
      `revenue_by_currency.EUR`); an empty dict gives no field (a missing count is zero);
    - None gives no field: HGET answers nil, the JSON null of the profile;
    - booleans are `true` / `false`, numbers their Python text (`42`, `37.45`), decimals the
      exact text the profile already holds (`"60.50"`), lists JSON.
    """
    fields: dict[str, str] = {}
    _flatten("", profile, fields)
    return fields


def _flatten(prefix: str, value: Mapping[str, Any], out: dict[str, str]) -> None:
    for name, item in value.items():
        field = f"{prefix}{name}"
        if item is None:
            continue
        if isinstance(item, Mapping):
            _flatten(f"{field}.", item, out)
        elif isinstance(item, bool):  # before int: bool is an int
            out[field] = "true" if item else "false"
        elif isinstance(item, str):
            out[field] = item
        elif isinstance(item, int | float):
            out[field] = repr(item)
        elif isinstance(item, list | tuple):
            out[field] = json.dumps(item, separators=(",", ":"))
        else:  # Decimal and the like: their exact text
            out[field] = str(item)


def read_profile(raw: bytes, clock_ms: int, rules: ProfileRules) -> dict[str, Any]:
    """The profile of a stored state, read at `clock_ms` but never before its last event.

    A partition clock can lag a customer's own events (a topic not read yet holds it back; in
    replay mode it is 0 until the replay is declared), and `view` at a clock far before the
    events overflows the engagement decay. The latest event is a floor that changes nothing
    when the clock is where it should be.
    """
    state = decode(raw)
    return view(state, max(clock_ms, state.last_seen), rules)


def _write_commands(pipe: Any, customer_id: str, profile: Mapping[str, Any]) -> None:
    """Queue the commands that make Redis hold exactly this profile for this customer.

    DEL + HSET (inside the caller's MULTI) drops fields the new profile no longer has; SREM
    from every other set of a kind keeps the customer in exactly one set per kind without
    having to know where it was before, which is what makes a write idempotent and safe to
    replay out of any history.
    """
    key = profile_key(customer_id)
    pipe.delete(key)
    pipe.hset(key, mapping=profile_hash(profile))
    _move(pipe, customer_id, "stage", STAGE_KEYS, str(profile["lifecycle_stage"]))
    _move(pipe, customer_id, "quadrant", QUADRANT_KEYS, str(profile["quadrant"]))


def _move(pipe: Any, customer_id: str, kind: str, keys: Mapping[str, str], current: str) -> None:
    for value, key in keys.items():
        if value != current:
            pipe.srem(key, customer_id)
    pipe.sadd(keys.get(current) or f"{SEGMENT_PREFIX}{kind}:{current}", customer_id)


def _delete_commands(pipe: Any, customer_id: str) -> None:
    """A customer the table no longer holds: no profile, in no segment."""
    pipe.delete(profile_key(customer_id))
    for key in SEGMENT_KEYS:
        pipe.srem(key, customer_id)


def _profile_rules(rules: Rules | ProfileRules | None) -> ProfileRules:
    """Accept the whole rules file (what the worker holds) or just its profile part."""
    if rules is None:
        return DEFAULT_RULES
    return rules.profile if isinstance(rules, Rules) else rules


def connect(redis_url: str, *, socket_timeout_s: float = 2.0) -> Any:
    """An asyncio Redis client; AUTH and TLS come from the URL (`rediss://user:pass@host/0`).

    redis-py's own retries are turned off (by default it retries 10 times with backoff inside
    one call): the projector has its own backoff, and a call must fail fast so the pending
    entries stay visible in the metrics instead of hiding in a stuck await. Query parameters
    of the URL (`?socket_timeout=5`) override these defaults.
    """
    from redis.asyncio import Redis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    return Redis.from_url(
        redis_url,
        socket_timeout=socket_timeout_s,
        socket_connect_timeout=socket_timeout_s,
        retry=Retry(NoBackoff(), 0),
    )


# --- the live projector -------------------------------------------------------------------------


class RedisProjector:
    """Writes changed profiles to Redis in the background; never blocks the stream.

    Use from the worker's event loop: `enqueue` after every `customers` table write, and run
    `run()` as a background task (or `start()` / `stop()`).
    """

    def __init__(
        self,
        redis_url: str,
        rules: Rules | ProfileRules | None = None,
        registry: CollectorRegistry | None = None,
        *,
        batch_size: int = 500,
        linger_s: float = 0.05,
        max_backoff_s: float = 1.0,
        socket_timeout_s: float = 2.0,
    ) -> None:
        self.redis_url = redis_url
        self.rules = _profile_rules(rules)
        self.batch_size = batch_size
        self.linger_s = linger_s  # lets a burst of updates to one customer coalesce
        self.max_backoff_s = max_backoff_s
        self.socket_timeout_s = socket_timeout_s
        self._pending: dict[str, Pending] = {}
        self._inflight: dict[str, Pending] = {}
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._client: Any = None
        self._failures = 0  # consecutive failed attempts, for backoff and log throttling
        r = registry if registry is not None else CollectorRegistry()
        self.registry = r
        self.write_seconds = Histogram(
            "engage_redis_write_seconds",
            "Time of one pipelined MULTI/EXEC batch of profile writes to Redis.",
            buckets=WRITE_BUCKETS,
            registry=r,
        )
        self.errors = Counter(
            "engage_redis_errors_total",
            "Failed Redis batch attempts (retried) and profile writes that could not be made.",
            registry=r,
        )
        self.pending_gauge = Gauge(
            "engage_redis_pending_customers",
            "Customers whose latest profile is not yet in Redis (including the batch in flight).",
            registry=r,
        )
        self.pending_gauge.set_function(lambda: len(self._pending) + len(self._inflight))

    # -- hot path --

    def enqueue(self, customer_id: str, state_bytes: bytes | None, clock_ms: int) -> None:
        """Record the customer's latest state (None: deleted). O(1), no I/O, never raises.

        A customer already pending is overwritten, so memory is one entry per changed customer
        however long Redis is away.
        """
        self._pending[customer_id] = (state_bytes, clock_ms)
        if self._wake is not None:
            self._wake.set()

    @property
    def pending(self) -> int:
        """Customers not yet written (including the batch in flight)."""
        return len(self._pending) + len(self._inflight)

    # -- the loop --

    async def run(self) -> None:
        """Write pending profiles until cancelled; Redis errors are retried, never raised."""
        self._wake = asyncio.Event()
        try:
            while True:
                if not self._pending:
                    self._wake.clear()
                    await self._wake.wait()
                    await asyncio.sleep(self.linger_s)
                try:
                    await self.flush()
                except Exception as exc:  # Redis down, timeout, failover, OOM: retry all
                    await self._failed(exc)
                else:
                    self._recovered()
        finally:
            self._wake = None
            await self._close()

    async def start(self) -> None:
        """Run the loop as a task of the current event loop."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self.run(), name="redis-projector")

    async def stop(self, timeout_s: float = 2.0) -> None:
        """Stop the loop, then try once more, for at most `timeout_s`, to write what is left."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._pending:
            try:
                await asyncio.wait_for(self.flush(), timeout_s)
            except Exception as exc:
                self.errors.inc()
                log.warning(
                    "redis projection: %d profiles not written at shutdown (%s); "
                    "`engage project rebuild` restores them",
                    self.pending,
                    _describe(exc),
                )
            finally:
                await self._close()

    async def flush(self) -> int:
        """Write everything pending now, in batches; returns the number of customers written.

        On a Redis error the batch in flight goes back to the pending dict (unless a newer
        state of the customer arrived meanwhile) and the error propagates.
        """
        written = 0
        while self._pending:
            keys = list(itertools.islice(self._pending, self.batch_size))
            self._inflight = {k: self._pending.pop(k) for k in keys}
            try:
                await self._write(self._inflight)
            except BaseException:
                for cid, entry in self._inflight.items():
                    self._pending.setdefault(cid, entry)
                raise
            finally:
                batch, self._inflight = len(self._inflight), {}
            written += batch
        return written

    async def _write(self, batch: Mapping[str, Pending]) -> None:
        if self._client is None:
            self._client = connect(self.redis_url, socket_timeout_s=self.socket_timeout_s)
        pipe = self._client.pipeline(transaction=True)
        for cid, (raw, clock) in batch.items():
            if raw is None:
                _delete_commands(pipe, cid)
                continue
            try:
                profile = read_profile(raw, clock, self.rules)
            except Exception:  # a state we cannot read: skip it, keep the others going
                self.errors.inc()
                log.exception("redis projection: cannot build the profile of one customer")
                continue
            _write_commands(pipe, cid, profile)
        started = time.perf_counter()
        results = await pipe.execute(raise_on_error=False)
        self.write_seconds.observe(time.perf_counter() - started)
        failed = [r for r in results if isinstance(r, Exception)]
        if failed:  # per-command errors (WRONGTYPE: someone else's key): not retryable
            self.errors.inc(len(failed))
            log.warning("redis projection: %d commands failed, first: %s", len(failed), failed[0])

    async def _failed(self, exc: BaseException) -> None:
        self.errors.inc()
        self._failures += 1
        if self._failures % 60 == 1:  # the first failure, then about once a minute
            log.warning(
                "redis projection: write failed (%s); %d profiles pending, retrying",
                _describe(exc),
                self.pending,
            )
        await self._close()  # a fresh connection for the next attempt
        delay = min(self.max_backoff_s, 0.05 * 2 ** min(self._failures - 1, 16))
        await asyncio.sleep(delay)

    def _recovered(self) -> None:
        if self._failures:
            log.warning("redis projection: writing again after %d failed attempts", self._failures)
        self._failures = 0

    async def _close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            # closing a broken connection may fail too; there is nothing left to do about it
            with contextlib.suppress(Exception):
                await client.aclose()


def _describe(exc: BaseException) -> str:
    """The error without the URL (which may carry a password)."""
    return f"{type(exc).__name__}: {exc}"[:200]


# --- rebuild ------------------------------------------------------------------------------------


def kafka_security(settings: Any) -> dict[str, Any]:
    """aiokafka client arguments for the configured SASL/SSL (SPEC §7); empty for plaintext."""
    if settings.security_protocol == "PLAINTEXT":
        return {}
    out: dict[str, Any] = {"security_protocol": settings.security_protocol}
    if settings.security_protocol.endswith("SSL"):
        from aiokafka.helpers import create_ssl_context

        out["ssl_context"] = create_ssl_context(
            cafile=settings.ssl_cafile,
            certfile=settings.ssl_certfile,
            keyfile=settings.ssl_keyfile,
        )
    if settings.security_protocol.startswith("SASL"):
        out["sasl_mechanism"] = settings.sasl_mechanism
        out["sasl_plain_username"] = settings.sasl_username
        out["sasl_plain_password"] = settings.sasl_password.get_secret_value()
    return out


def changelog_topic(settings: Any) -> str:
    return f"{settings.app_id}-customers-changelog"


async def read_changelog(settings: Any) -> dict[str, bytes]:
    """The latest value per customer in the `customers` changelog (tombstones drop the key).

    read_committed and `position` (not the last message's offset) decide the end, because an
    exactly-once changelog ends with transaction markers that are never delivered as messages.
    """
    from aiokafka import AIOKafkaConsumer, TopicPartition

    topic = changelog_topic(settings)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        **kafka_security(settings),
    )
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            await consumer._client.force_metadata_update()
            partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            raise LookupError(f"changelog topic {topic} not found (is ENGAGE_APP_ID right?)")
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        latest: dict[str, bytes] = {}
        remaining = {tp for tp in tps if ends[tp] > 0}
        while remaining:
            batch = await consumer.getmany(*remaining, timeout_ms=1000, max_records=10_000)
            for msgs in batch.values():
                for msg in msgs:
                    cid = msg.key.decode("utf-8")
                    if msg.value is None:
                        latest.pop(cid, None)
                    else:
                        latest[cid] = msg.value
            for tp in list(remaining):
                if await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
        return latest
    finally:
        await consumer.stop()


async def _snapshot(client: Any) -> tuple[set[str], dict[str, set[str]]]:
    """Profile ids and segment members in Redis now, before the changelog is read."""
    profiles = {
        key.decode("utf-8")[len(PROFILE_PREFIX) :]
        async for key in client.scan_iter(match=f"{PROFILE_PREFIX}*", count=1000)
    }
    segments: dict[str, set[str]] = {}
    async for raw_key in client.scan_iter(match=f"{SEGMENT_PREFIX}*", count=1000):
        key = raw_key.decode("utf-8")
        if key in SEGMENT_KEYS:
            segments[key] = {m.decode("utf-8") async for m in client.sscan_iter(key, count=1000)}
        else:
            segments[key] = set()  # a stage or quadrant the rules no longer have: deleted whole
    return profiles, segments


async def _in_batches(client: Any, commands: Iterable[tuple[str, tuple[Any, ...]]], n: int) -> None:
    it = iter(commands)
    while chunk := list(itertools.islice(it, n)):
        pipe = client.pipeline(transaction=False)
        for name, args in chunk:
            getattr(pipe, name)(*args)
        await pipe.execute()


async def rebuild(
    settings: Any,
    redis_url: str,
    clock_ms: int | None = None,
    *,
    rules: Rules | ProfileRules | None = None,
    batch_size: int = 500,
) -> int:
    """Recreate the projection from the `customers` changelog; returns the profiles written.

    Profiles are read at `clock_ms` (default: the wall clock). Redis keeps serving during the
    rebuild: every customer is overwritten in place (DEL + HSET in one MULTI), and only then
    are profiles and segment members the changelog no longer has removed. What is removed is
    decided from a snapshot taken *before* the changelog is read, so a customer a live worker
    creates meanwhile is never removed. Use one Redis database per deployment: everything under
    `engage:profile:*` and `engage:segment:*` is considered ours.
    """
    from stream.clock import wall_now
    from stream.rules import load_rules
    from stream.state import to_ms

    profile_rules = _profile_rules(rules if rules is not None else load_rules(settings.rules_file))
    clock = clock_ms if clock_ms is not None else to_ms(wall_now())
    client = connect(redis_url, socket_timeout_s=30.0)
    try:
        before_profiles, before_segments = await _snapshot(client)
        states = await read_changelog(settings)
        items = list(states.items())
        for i in range(0, len(items), batch_size):
            pipe = client.pipeline(transaction=True)
            for cid, raw in items[i : i + batch_size]:
                _write_commands(pipe, cid, read_profile(raw, clock, profile_rules))
            await pipe.execute()
        stale: list[tuple[str, tuple[Any, ...]]] = [
            ("delete", (profile_key(cid),)) for cid in sorted(before_profiles - states.keys())
        ]
        for key, members in sorted(before_segments.items()):
            if key not in SEGMENT_KEYS:
                stale.append(("delete", (key,)))
            else:
                stale += [("srem", (key, m)) for m in sorted(members - states.keys())]
        await _in_batches(client, stale, batch_size)
        return len(states)
    finally:
        await client.aclose()


# --- command line -------------------------------------------------------------------------------


def main(argv: list[str]) -> int:
    """`engage project rebuild [--clock-ms MS]`."""
    parser = argparse.ArgumentParser(
        prog="engage project",
        description="The Redis profile projection (SPEC §6).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    rb = sub.add_parser(
        "rebuild",
        help="rewrite every profile and segment set from the customers table's changelog",
    )
    rb.add_argument(
        "--clock-ms",
        type=int,
        default=None,
        help="read the profiles at this instant (epoch ms; default: now)",
    )
    args = parser.parse_args(argv)

    from stream.settings import load_settings

    settings = load_settings()
    started = time.monotonic()
    try:
        count = asyncio.run(rebuild(settings, settings.redis_url.get_secret_value(), args.clock_ms))
    except Exception as exc:
        print(f"engage project rebuild: {_describe(exc)}", file=sys.stderr)
        return 1
    elapsed = time.monotonic() - started
    print(f"rebuilt {count} profiles from {changelog_topic(settings)} in {elapsed:.1f} s")
    return 0
