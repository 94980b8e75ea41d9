"""`engage project rebuild`: recreate the Redis projection from the `customers` changelog.

The command and the rebuild it runs: the changelog is read a partition at a time
(`stream.serving.changelog_reader`), every profile is written in place with the projector's
script (`stream.serving.projector`), and only then is what the changelog no longer has removed.
"""

from __future__ import annotations

import asyncio
import itertools
import sys
import time
from collections.abc import Iterable
from typing import Any

from stream.core.rules import ProfileRules, Rules
from stream.core.state import decode
from stream.serving.changelog_reader import changelog_partitions
from stream.serving.projector import (
    PROFILE_PREFIX,
    SEGMENT_KEYS,
    SEGMENT_PREFIX,
    WRITE_SCRIPT,
    as_profile_rules,
    connect,
    profile_key,
    queue_write,
    read_profile,
    redacted_error,
)
from stream.topic_names import customers_changelog


def describe_failure(exc: BaseException, settings: Any) -> str:
    """One line for a failed rebuild: Redis refusing us, or Kafka (via `stream.kafka_client`)."""
    from urllib.parse import urlsplit

    import redis

    from stream.kafka_client import KafkaAccessError, describe_error

    url = settings.redis_url.get_secret_value() if hasattr(settings, "redis_url") else ""
    has_password = bool(urlsplit(url).password)
    auth_error = isinstance(exc, redis.AuthenticationError) or (
        isinstance(exc, redis.ResponseError) and "NOAUTH" in str(exc)
    )
    if auth_error and not has_password:
        return (
            "Redis needs a password: put it in ENGAGE_REDIS_URL "
            "(redis://:password@host:port/db or redis://user:password@..., rediss:// for TLS)"
        )
    if isinstance(exc, redis.AuthenticationError | redis.AuthenticationWrongNumberOfArgsError):
        return (
            "Redis refused the credentials: check the user and password in ENGAGE_REDIS_URL "
            "(redis://user:password@host:port/db or redis://:password@host:port/db)"
        )
    if isinstance(exc, redis.ConnectionError):
        return f"cannot reach Redis ({type(exc).__name__}); check ENGAGE_REDIS_URL"
    from aiokafka.errors import KafkaError

    if isinstance(exc, KafkaError | KafkaAccessError):
        return describe_error(exc, settings)
    return redacted_error(exc)


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
        async with client.pipeline(transaction=False) as pipe:
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

    Profiles are read at `clock_ms`. By default that is the wall clock in live mode; in replay
    and follow modes time is event time, so each partition is read at its latest event (where
    its partition clock was at least).

    Redis keeps serving during the rebuild: every customer is overwritten in place (DEL + HSET
    in one script), and only then are profiles and segment members the changelog no longer
    has removed. What is removed is decided from a snapshot taken *before* the changelog is
    read, so a customer a live worker creates meanwhile is never removed. Use one Redis
    database per deployment: everything under `engage:profile:*` and `engage:segment:*` is
    considered ours.
    """
    from stream.core.clock import wall_now
    from stream.core.rules import load_rules
    from stream.core.state import to_ms

    loaded = rules if rules is not None else load_rules(settings.rules_file)
    profile_rules = as_profile_rules(loaded)
    live = getattr(settings, "mode", "live") == "live"
    wall = to_ms(wall_now())
    client = connect(redis_url, socket_timeout_s=30.0)
    try:
        before_profiles, before_segments = await _snapshot(client)
        script = client.register_script(WRITE_SCRIPT)
        present: set[str] = set()
        async for states in changelog_partitions(settings):
            items = list(states.items())
            if clock_ms is not None:
                clock = clock_ms
            elif live:
                clock = wall
            else:
                clock = max((decode(raw).last_seen for _, raw in items), default=0)
            for i in range(0, len(items), batch_size):
                async with client.pipeline(transaction=False) as pipe:
                    for cid, raw in items[i : i + batch_size]:
                        profile = read_profile(raw, clock, profile_rules)
                        await queue_write(pipe, script, cid, profile)
                    await pipe.execute()
            present.update(states)
        stale: list[tuple[str, tuple[Any, ...]]] = [
            ("delete", (profile_key(cid),)) for cid in sorted(before_profiles - present)
        ]
        for key, members in sorted(before_segments.items()):
            if key not in SEGMENT_KEYS:
                stale.append(("delete", (key,)))
            else:
                stale += [("srem", (key, m)) for m in sorted(members - present)]
        await _in_batches(client, stale, batch_size)
        return len(present)
    finally:
        await client.aclose()


def main(argv: list[str]) -> int:
    """`engage project rebuild [--clock-ms MS]`."""
    from stream.cli import command_parser

    parser = command_parser(
        "project", "The Redis profile projection: a hash per customer and segment sets."
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
        help="read the profiles at this instant (epoch ms; default: now in live mode, "
        "each partition's latest event time in replay and follow modes)",
    )
    args = parser.parse_args(argv)

    from stream.settings import load_settings

    settings = load_settings()
    started = time.monotonic()
    try:
        count = asyncio.run(rebuild(settings, settings.redis_url.get_secret_value(), args.clock_ms))
    except Exception as exc:
        print(f"engage project rebuild: {describe_failure(exc, settings)}", file=sys.stderr)
        return 1
    elapsed = time.monotonic() - started
    topic = customers_changelog(settings.app_id)
    print(f"rebuilt {count} profiles from {topic} in {elapsed:.2f} s")
    return 0
