"""The Redis profile projection (SPEC §6): profiles and segment sets for messaging systems.

Redis is a read model, never a source of truth: the `customers` table (its changelog) is. So
the worker must never wait for Redis. `RedisProjector.enqueue` only records "customer X now
has state S at clock C" in a dict (latest wins, one entry per customer, no I/O), and a
background loop writes what is pending in pipelined batches (one atomic Lua script call per
customer). While Redis is down the dict keeps the latest state of every changed customer and
the loop retries with capped backoff; when Redis is back it drains the dict. Each write is a
pure function of (state, clock, rules), so replaying the same writes gives the same content,
and `engage project rebuild` (`stream.serving.rebuild`) can recreate everything from the
changelog.

Keys (SPEC §6):

- `engage:profile:{customer_id}`: a hash, `profile_hash(view(state, clock))`.
- `engage:segment:stage:{stage}` and `engage:segment:quadrant:{quadrant}`: sets of customer
  ids; a customer is in exactly one set of each kind.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import msgspec
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from stream.core.profile import QUADRANTS, STAGES, view
from stream.core.rules import DEFAULT_RULES, ProfileRules, Rules
from stream.core.state import MS_PER_DAY, CustomerState, Peek, decode

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
    """A profile (`stream.core.profile.view`) as Redis hash fields, all strings.

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
    # Exact-type checks first: this runs for every field of every profile written.
    for name, item in value.items():
        kind = type(item)
        if kind is str:
            out[prefix + name] = item
        elif item is None:
            continue
        elif kind is bool:
            out[prefix + name] = "true" if item else "false"
        elif kind is int or kind is float:
            out[prefix + name] = repr(item)
        elif isinstance(item, Mapping):
            _flatten(f"{prefix}{name}.", item, out)
        elif isinstance(item, bool):
            out[prefix + name] = "true" if item else "false"
        elif isinstance(item, int):  # an int subclass (IntEnum...): its number
            out[prefix + name] = str(int(item))
        elif isinstance(item, float):
            out[prefix + name] = repr(float(item))
        elif isinstance(item, list | tuple):
            out[prefix + name] = json.dumps(item, separators=(",", ":"))
        else:  # Decimal, str subclasses and the like: their text
            out[prefix + name] = str(item)


def read_profile(raw: bytes, clock_ms: int, rules: ProfileRules) -> dict[str, Any]:
    """The profile of a stored state, read at `clock_ms` but never before its last event.

    A partition clock can lag a customer's own events (a topic not read yet holds it back; in
    replay mode it is 0 until the replay is declared), and `view` at a clock far before the
    events overflows the engagement decay. The latest event is a floor that changes nothing
    when the clock is where it should be.
    """
    state = decode(raw)
    return view(state, max(clock_ms, state.last_seen), rules)


# One customer's write, atomic on the server: a reader never sees the hash between DEL and HSET.
# KEYS: the profile, the current stage set, the current quadrant set, then every other segment
# set. ARGV: the customer id, the hash fields as one JSON object. One JSON argument instead of
# ~70 keeps redis-py's (pure Python) command packing, which runs on the worker's event loop,
# the smallest part of the cost.
WRITE_SCRIPT = """
local fields = cjson.decode(ARGV[2])
local args = {}
for name, value in pairs(fields) do
  args[#args + 1] = name
  args[#args + 1] = value
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(args))
for i = 4, #KEYS do
  redis.call('SREM', KEYS[i], ARGV[1])
end
redis.call('SADD', KEYS[2], ARGV[1])
redis.call('SADD', KEYS[3], ARGV[1])
return 1
"""
_JSON = msgspec.json.Encoder()


def _others(keys: Mapping[str, str], current: str) -> list[str]:
    return [key for value, key in keys.items() if value != current]


async def queue_write(pipe: Any, script: Any, customer_id: str, profile: Mapping[str, Any]) -> None:
    """Queue the script call that makes Redis hold exactly this profile for this customer.

    DEL + HSET drops fields the new profile no longer has; SREM from every other set of a kind
    keeps the customer in exactly one set per kind without knowing where it was before. That
    is what makes a write idempotent and safe to replay out of any history.
    """
    stage, quadrant = str(profile["lifecycle_stage"]), str(profile["quadrant"])
    keys = [
        profile_key(customer_id),
        STAGE_KEYS.get(stage) or f"{SEGMENT_PREFIX}stage:{stage}",
        QUADRANT_KEYS.get(quadrant) or f"{SEGMENT_PREFIX}quadrant:{quadrant}",
        *_others(STAGE_KEYS, stage),
        *_others(QUADRANT_KEYS, quadrant),
    ]
    fields = _JSON.encode(profile_hash(profile))
    await script(keys=keys, args=[customer_id, fields], client=pipe)


def next_segment_change(
    state: CustomerState | Peek, clock_ms: int, rules: ProfileRules = DEFAULT_RULES
) -> int | None:
    """The first instant after `clock_ms` at which the stage or quadrant may change by itself.

    Segments depend on "now": with no new event a customer still goes new -> active,
    active -> at_risk -> dormant, reactivated -> active, its score decays below the engaged
    threshold and its sentiment signals age out of their window. A projection written at the
    last state change would keep such a customer in its old set forever, so the worker can
    register this instant in its due index and enqueue the customer again then. The instant
    is a bound, not a promise: a signal ageing out may leave the sentiment as it was, and the
    score crossing is computed in floating point (re-asking at the answer converges). It reads
    only activity fields, which a `Peek` has too (a restart's index rebuild decodes no more).
    """
    day = MS_PER_DAY
    at = max(clock_ms, state.last_seen)
    candidates: list[int] = []
    if state.first_seen:
        candidates.append(state.first_seen + rules.new_days * day + 1)
    if state.last_seen:
        candidates.append(state.last_seen + rules.at_risk_days * day + 1)
        candidates.append(state.last_seen + rules.dormant_days * day + 1)
    if state.reactivated_at:
        candidates.append(state.reactivated_at + rules.reactivated_days * day + 1)
    candidates += [t + rules.sentiment_window_days * day for t, _ in state.signals]
    if state.eng_at and 0 < rules.engaged_score < 100:
        half_life = rules.half_life_days * day
        activity = state.eng_acc * math.pow(0.5, (at - state.eng_at) / half_life)
        threshold = -rules.score_scale * math.log(1 - rules.engaged_score / 100)
        if activity >= threshold:  # engaged now: it stops being when the decay crosses
            candidates.append(at + math.ceil(half_life * math.log2(activity / threshold)) + 1)
    return min((t for t in candidates if t > at), default=None)


def _delete_commands(pipe: Any, customer_id: str) -> None:
    """A customer the table no longer holds: no profile, in no segment."""
    pipe.delete(profile_key(customer_id))
    for key in SEGMENT_KEYS:
        pipe.srem(key, customer_id)


def as_profile_rules(rules: Rules | ProfileRules | None) -> ProfileRules:
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
        self.rules = as_profile_rules(rules)
        self.batch_size = batch_size
        self.linger_s = linger_s  # lets a burst of updates to one customer coalesce
        self.max_backoff_s = max_backoff_s
        self.socket_timeout_s = socket_timeout_s
        self._pending: dict[str, Pending] = {}
        self._inflight: dict[str, Pending] = {}
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._redis: Any = None
        self._script: Any = None
        self._failures = 0  # consecutive failed attempts, for backoff and log throttling
        # Called with the ids of every batch Redis confirmed (all its commands succeeded): the
        # worker clears the erasures it was keeping until their deletion is confirmed.
        self.on_written: Callable[[list[str]], None] | None = None
        self._lock = asyncio.Lock()  # one flush at a time (the loop's, or stop()'s last one)
        r = registry if registry is not None else CollectorRegistry()
        self.registry = r
        self.write_seconds = Histogram(
            "engage_redis_write_seconds",
            "Time of one pipelined batch of profile writes to Redis (up to batch_size customers).",
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
                # Coalesce: under load too, a customer changed many times within linger_s is
                # written once (the worker sets linger_s from ENGAGE_PROJECTION_INTERVAL_S).
                await asyncio.sleep(self.linger_s)
                try:
                    await self.flush(drain=False)
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
                    redacted_error(exc),
                )
            finally:
                await self._close()

    async def flush(self, *, drain: bool = True) -> int:
        """Write everything pending now, in batches; returns the number of customers written.

        `drain=False` writes only as many customers as were pending when it started, so changes
        arriving meanwhile wait for the next round (and coalesce) instead of extending this one.

        On a Redis error the batch in flight goes back to the pending dict (unless a newer
        state of the customer arrived meanwhile) and the error propagates.
        """
        written = 0
        async with self._lock:
            budget = None if drain else len(self._pending)
            while self._pending and (budget is None or written < budget):
                keys = list(itertools.islice(self._pending, self.batch_size))
                self._inflight = {k: self._pending.pop(k) for k in keys}
                try:
                    confirmed = await self._write(self._inflight)
                except BaseException:
                    for cid, entry in self._inflight.items():
                        self._pending.setdefault(cid, entry)
                    raise
                finally:
                    batch, ids, self._inflight = len(self._inflight), list(self._inflight), {}
                written += batch
                if confirmed and self.on_written is not None:
                    try:
                        self.on_written(ids)
                    except Exception:  # the worker's bookkeeping: never stops the projection
                        log.exception("redis projection: recording confirmed writes failed")
        return written

    async def _write(self, batch: Mapping[str, Pending]) -> bool:
        """Write one batch; True when Redis ran every command of it (nothing skipped)."""
        if self._redis is None:
            self._redis = connect(self.redis_url, socket_timeout_s=self.socket_timeout_s)
            self._script = self._redis.register_script(WRITE_SCRIPT)
        # No MULTI: each customer's script is atomic, and a batch cut short by a lost
        # connection is simply written again (writes are idempotent).
        skipped = False
        async with self._redis.pipeline(transaction=False) as pipe:
            for i, (cid, (raw, clock)) in enumerate(batch.items()):
                if i % 50 == 49:  # ~100 µs a profile: let the stream run between slices
                    await asyncio.sleep(0)
                if raw is None:
                    _delete_commands(pipe, cid)
                    continue
                try:
                    profile = read_profile(raw, clock, self.rules)
                except Exception:  # a state we cannot read: skip it, keep the others going
                    self.errors.inc()
                    log.exception("redis projection: cannot build the profile of one customer")
                    skipped = True
                    continue
                await queue_write(pipe, self._script, cid, profile)
            started = time.perf_counter()
            results = await pipe.execute(raise_on_error=False)
            self.write_seconds.observe(time.perf_counter() - started)
        failed = [r for r in results if isinstance(r, Exception)]
        if failed:  # per-command errors (WRONGTYPE: someone else's key): not retryable
            self.errors.inc(len(failed))
            log.warning("redis projection: %d commands failed, first: %s", len(failed), failed[0])
        return not failed and not skipped

    async def _failed(self, exc: BaseException) -> None:
        self.errors.inc()
        self._failures += 1
        if self._failures % 60 == 1:  # the first failure, then about once a minute
            log.warning(
                "redis projection: write failed (%s); %d profiles pending, retrying",
                redacted_error(exc),
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
        client, self._redis = self._redis, None
        if client is not None:
            # closing a broken connection may fail too; there is nothing left to do about it
            with contextlib.suppress(Exception):
                await client.aclose()


def redacted_error(exc: BaseException) -> str:
    """The error without the URL (which may carry a password)."""
    return f"{type(exc).__name__}: {exc}"[:200]
