"""The Redis profile projection (SPEC §6) against real Redis and a real worker.

Redis is never mocked: the projector tests use database 5 of the stack's Redis (flushed at the
start of each test; the key names are fixed by the SPEC, so a separate database is what keeps
them apart from a running demo), the outage test its own throwaway `redis-server`, and the
rebuild test reads the changelog a real `engage worker` wrote. Every wait polls a condition
with a deadline.
"""

from __future__ import annotations

import asyncio
import itertools
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import msgspec
import pytest
import redis
from prometheus_client import CollectorRegistry

from schemas.events import EVENT_ADAPTER
from stream.core.profile import QUADRANTS, STAGES, view
from stream.core.rules import DEFAULT_RULES
from stream.core.state import MS_PER_DAY, CustomerState, encode, fold, new_state, to_ms
from stream.serving.changelog_reader import changelog_partitions
from stream.serving.projector import (
    PROFILE_PREFIX,
    RedisProjector,
    next_segment_change,
    profile_hash,
)
from stream.serving.rebuild import main, rebuild
from stream.settings import Settings
from tests.factory import T0, event
from tests.harness import free_port, produce_events, table_state, unique, wait_for

integration = pytest.mark.integration

CLOCK_DAY = 200
CLOCK = to_ms(T0 + timedelta(days=CLOCK_DAY))

# Days before the clock of a customer's plain activity: one shape per lifecycle stage.
SHAPES: dict[str, list[float]] = {
    "new": [10, 2],
    "active": [100, 70, 40, 10, 2],
    "reactivated": [150, 10, 2],
    "at_risk": [100, 70, 45],
    "dormant": [200, 120],
}


def mood_events(mood: str, cid: str, day: float) -> list[dict[str, Any]]:
    """What moves score and sentiment; engaged moods only stay engaged on recent shapes."""
    buys = [event("purchase", cid, day, amount="25.00") for _ in range(4)]
    promoter = event("survey", cid, day, survey="nps", score=10)
    detractor = event("survey", cid, day, survey="nps", score=0)
    complaint = event("support_contact", cid, day, ticket_id=f"t-{cid}", complaint=True)
    return {
        "advocate": [*buys, promoter],
        "critic": [*buys, complaint, detractor],
        "quiet_loyalist": [promoter],
        "detached": [detractor],
        "engaged_neutral": buys,
        "passive": [],
    }[mood]


def sample_events(prefix: str) -> dict[str, list[dict[str, Any]]]:
    """Events of 30 customers: every lifecycle shape crossed with every mood."""
    out: dict[str, list[dict[str, Any]]] = {}
    for shape, agos in SHAPES.items():
        for mood in QUADRANTS:
            cid = f"{prefix}-{shape}-{mood}"
            days = [CLOCK_DAY - ago for ago in agos]
            evs = [event("click", cid, d) for d in days]
            evs[0]["tz"] = "Europe/Berlin"
            out[cid] = evs + mood_events(mood, cid, days[-1])
    return out


def fold_all(cid: str, events: list[dict[str, Any]]) -> CustomerState:
    state = new_state(cid)
    for evt in events:
        state = fold(state, EVENT_ADAPTER.validate_python(evt))
    return state


def sample_states(prefix: str = "cust") -> dict[str, CustomerState]:
    states = {cid: fold_all(cid, evs) for cid, evs in sample_events(prefix).items()}
    profiles = [view(s, CLOCK) for s in states.values()]
    # The sample is only a test of segment membership if it fills every set.
    assert {p["lifecycle_stage"] for p in profiles} == set(STAGES)
    assert {p["quadrant"] for p in profiles} == set(QUADRANTS)
    return states


def expected_content(
    states: dict[str, CustomerState], clock: int | dict[str, int]
) -> dict[str, Any]:
    """Every key the projection of these states at `clock` (or each its own) consists of."""
    out: dict[str, Any] = {}
    for cid, state in states.items():
        profile = view(state, clock if isinstance(clock, int) else clock[cid])
        out[f"{PROFILE_PREFIX}{cid}"] = profile_hash(profile)
        for kind, value in (
            ("stage", profile["lifecycle_stage"]),
            ("quadrant", profile["quadrant"]),
        ):
            out.setdefault(f"engage:segment:{kind}:{value}", set()).add(cid)
    return out


def content(client: redis.Redis) -> dict[str, Any]:
    """Every key of the database: hashes as dicts, sets as sets (what the projection writes)."""
    out: dict[str, Any] = {}
    for raw in client.scan_iter(count=1000):
        key = raw.decode()
        kind = client.type(raw).decode()
        if kind == "hash":
            out[key] = {k.decode(): v.decode() for k, v in client.hgetall(raw).items()}
        elif kind == "set":
            out[key] = {m.decode() for m in client.smembers(raw)}
        else:
            out[key] = kind
    return out


async def until(probe: Callable[[], Any], *, timeout: float, what: str) -> Any:
    """Poll `probe` while the event loop (and the projector on it) keeps running."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}: {last!r}")


def settled(projector: RedisProjector, client: redis.Redis, expected: dict[str, Any]) -> Any:
    """Nothing in flight any more (a batch is on the server before its answer is read), and
    the database holds exactly `expected`: the content then, for further checks."""
    if projector.pending:
        return None
    now = content(client)
    return now if now == expected else None


def metric(registry: CollectorRegistry, name: str) -> float:
    return registry.get_sample_value(name) or 0.0


def with_db(url: str, db: int) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{db}"))


@pytest.fixture
def redis_url(stack: dict[str, str]) -> Iterator[str]:
    """Database 5 of the stack's Redis, empty."""
    url = with_db(stack.get("redis", "redis://127.0.0.1:6379/0"), 5)
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.close()


# --- the hash layout ---------------------------------------------------------------------------


def test_profile_hash_flattens_nested_values_and_drops_none() -> None:
    profile = {
        "customer_id": "c1",
        "tz": None,
        "counts": {"click": 2, "purchase": 1},
        "revenue_by_currency": {},
        "loyalty_member": False,
        "engagement_score": 37.45,
        "orders": 3,
        "revenue": "60.50",
        "clv": Decimal("1.10"),
        "tags": ["a", 1],
    }
    assert profile_hash(profile) == {
        "customer_id": "c1",
        "counts.click": "2",
        "counts.purchase": "1",
        "loyalty_member": "false",
        "engagement_score": "37.45",
        "orders": "3",
        "revenue": "60.50",
        "clv": "1.10",
        "tags": '["a",1]',
    }


def test_profile_hash_of_a_real_profile() -> None:
    state = fold_all(
        "alice",
        [
            event("click", "alice", 0, action="share", tz="Europe/Berlin"),
            event("purchase", "alice", 1, amount="40.00", currency="EUR"),
            event("loyalty", "alice", 2, action="tier_changed", tier="gold"),
        ],
    )
    fields = profile_hash(view(state, to_ms(T0 + timedelta(days=3))))
    assert {k: fields[k] for k in ("counts.click", "click_actions.share", "tz", "tier")} == {
        "counts.click": "1",
        "click_actions.share": "1",
        "tz": "Europe/Berlin",
        "tier": "gold",
    }
    assert fields["revenue_by_currency.EUR"] == "40.00"
    assert fields["loyalty_member"] == "true"
    assert fields["lifecycle_stage"] == "new"
    assert "nps_last" not in fields and "average_rating" not in fields  # None: no field
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in fields.items())


def test_a_clock_behind_the_state_reads_at_its_last_event() -> None:
    """Clock 0 (a replay not declared yet) would overflow `view`; the projection must not."""
    from stream.serving.projector import read_profile

    state = fold_all("bob", [event("click", "bob", 5)])
    assert read_profile(encode(state), 0, DEFAULT_RULES) == view(state, state.last_seen)


def segments(state: CustomerState, clock: int) -> tuple[str, str]:
    profile = view(state, clock)
    return profile["lifecycle_stage"], profile["quadrant"]


def test_segments_change_only_at_the_announced_instants() -> None:
    """Following next_segment_change from the clock, every later reading (twice a day for
    200 days) shows the segments of the latest announced instant: none is missed."""
    end = CLOCK + 200 * MS_PER_DAY
    changed = 0
    for state in sample_states("seg").values():
        chain = [CLOCK]
        while (nxt := next_segment_change(state, chain[-1])) is not None and nxt <= end:
            assert nxt > chain[-1]
            chain.append(nxt)
        changed += sum(
            segments(state, a) != segments(state, b) for a, b in itertools.pairwise(chain)
        )
        for t in range(CLOCK + 7 * 3_600_000, end, MS_PER_DAY // 2):
            latest = max(c for c in chain if c <= t)
            assert segments(state, t) == segments(state, latest), (state.customer_id, t)
        assert len(chain) < 40  # a handful of wake-ups, not a poll
    assert changed >= 30  # the sample does move: at least one real change per customer


# --- the projector against real Redis -----------------------------------------------------------


@integration
async def test_projector_writes_profiles_and_exact_segments(redis_url: str) -> None:
    states = sample_states()
    client = redis.Redis.from_url(redis_url)
    victim = "cust-dormant-passive"
    # Leftovers a correct write must clean: a field the profile lacks, a wrong segment.
    client.hset(f"{PROFILE_PREFIX}{victim}", mapping={"stale": "x", "orders": "99"})
    client.sadd("engage:segment:stage:active", victim)
    client.sadd("engage:segment:quadrant:advocate", victim)
    registry = CollectorRegistry()
    projector = RedisProjector(redis_url, DEFAULT_RULES, registry)
    await projector.start()
    try:
        started = time.monotonic()
        for cid, state in states.items():
            projector.enqueue(cid, encode(state), CLOCK)
        expected = expected_content(states, CLOCK)
        await until(lambda: settled(projector, client, expected), timeout=5, what="the projection")
        assert time.monotonic() - started < 1.0  # SPEC §6: within 1 s of the change

        # The dormant, passive customer comes back with purchases and a promoter NPS.
        comeback = [*sample_events("cust")[victim], *mood_events("advocate", victim, CLOCK_DAY)]
        states[victim] = fold_all(victim, comeback)
        moved = view(states[victim], CLOCK)
        assert (moved["lifecycle_stage"], moved["quadrant"]) == ("reactivated", "advocate")
        projector.enqueue(victim, encode(states[victim]), CLOCK)
        expected = expected_content(states, CLOCK)
        now = await until(lambda: settled(projector, client, expected), timeout=5, what="the move")
        assert victim not in now["engage:segment:stage:dormant"]
        assert victim not in now["engage:segment:quadrant:passive"]
        assert victim in now["engage:segment:stage:reactivated"]

        # Idempotent: the same writes again, twice, leave the same content.
        writes = metric(registry, "engage_redis_write_seconds_count")
        for _ in range(2):
            for cid, state in states.items():
                projector.enqueue(cid, encode(state), CLOCK)
        await until(
            lambda: (
                metric(registry, "engage_redis_write_seconds_count") > writes
                and projector.pending == 0
            ),
            timeout=5,
            what="the rewrite",
        )
        assert content(client) == expected

        # A deleted customer leaves no profile and no segment membership.
        projector.enqueue(victim, None, CLOCK)
        del states[victim]
        expected = expected_content(states, CLOCK)
        await until(lambda: settled(projector, client, expected), timeout=5, what="the deletion")
        assert metric(registry, "engage_redis_errors_total") == 0
        assert metric(registry, "engage_redis_pending_customers") == 0
    finally:
        await projector.stop()
        client.close()


@integration
async def test_a_thousand_customers_are_written_within_a_second(redis_url: str) -> None:
    base = fold_all("x", [*sample_events("x")["x-active-advocate"]])
    states = {
        f"k{i:04d}": msgspec.structs.replace(base, customer_id=f"k{i:04d}") for i in range(1000)
    }
    client = redis.Redis.from_url(redis_url)
    projector = RedisProjector(redis_url, DEFAULT_RULES, CollectorRegistry())
    await projector.start()
    try:
        started = time.monotonic()
        for cid, state in states.items():
            projector.enqueue(cid, encode(state), CLOCK)
        enqueued = time.monotonic() - started
        await until(lambda: projector.pending == 0, timeout=5, what="1,000 profiles written")
        elapsed = time.monotonic() - started
        print(
            f"\n1,000 customers: enqueued in {enqueued * 1000:.1f} ms, written in {elapsed:.3f} s"
        )
        assert elapsed < 1.0
        assert content(client) == expected_content(states, CLOCK)
    finally:
        await projector.stop()
        client.close()


# --- Redis down and back ------------------------------------------------------------------------


class RedisServer:
    """A throwaway redis-server (no persistence): stopping it loses its data, like a crash."""

    def __init__(self, workdir: Path, password: str | None = None) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.password = password
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed")
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir), "--daemonize", "no",
             *(["--requirepass", self.password] if self.password else [])],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip

    def ping(self) -> bool:
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.2, socket_timeout=0.2)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.proc = None


@pytest.fixture
def own_redis(stack: dict[str, str], tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    wait_for(server.ping, timeout=10, interval=0.02, what="redis-server up")
    yield server
    server.stop()


@integration
async def test_stream_keeps_going_while_redis_is_down_and_catches_up(
    own_redis: RedisServer,
) -> None:
    states = sample_states("out")
    first = dict(list(states.items())[:10])
    registry = CollectorRegistry()
    projector = RedisProjector(own_redis.url, DEFAULT_RULES, registry)
    client = redis.Redis.from_url(own_redis.url)
    await projector.start()
    try:
        for cid, state in first.items():
            projector.enqueue(cid, encode(state), CLOCK)
        expected = expected_content(first, CLOCK)
        await until(lambda: settled(projector, client, expected), timeout=5, what="first writes")

        own_redis.stop()
        later = CLOCK + 5 * 86_400_000  # every customer changes while Redis is away
        started = time.monotonic()
        for _ in range(50):  # repeated updates: one pending entry per customer, latest wins
            for cid, state in states.items():
                projector.enqueue(cid, encode(state), later)
        assert time.monotonic() - started < 0.5  # 1,500 enqueues: no I/O, no waiting
        assert projector.pending == len(states)
        errors = metric(registry, "engage_redis_errors_total")
        await until(
            lambda: metric(registry, "engage_redis_errors_total") >= errors + 3,
            timeout=10,
            what="retries failing while Redis is down",
        )
        assert projector.pending == len(states)

        own_redis.start()  # same port, empty: it kept nothing
        restarted = time.monotonic()
        expected = expected_content(states, later)
        await until(
            lambda: own_redis.ping() and settled(projector, client, expected),
            timeout=10,
            what="the catch-up",
        )
        print(f"\ncaught up {time.monotonic() - restarted:.2f} s after Redis restarted")
        assert metric(registry, "engage_redis_pending_customers") == 0
    finally:
        await projector.stop()
        client.close()


@integration
async def test_redis_auth_comes_from_the_url(stack: dict[str, str], tmp_path: Path) -> None:
    server = RedisServer(tmp_path, password="s3cret")
    server.start()
    wait_for(server.ping, timeout=10, interval=0.02, what="redis-server up")
    states = dict(list(sample_states("auth").items())[:3])
    wrong = RedisProjector(server.url.replace("s3cret", "wrong"), DEFAULT_RULES)
    right = RedisProjector(server.url, DEFAULT_RULES)
    client = redis.Redis.from_url(server.url)
    try:
        for projector in (wrong, right):
            await projector.start()
            for cid, state in states.items():
                projector.enqueue(cid, encode(state), CLOCK)
        expected = expected_content(states, CLOCK)
        await until(lambda: settled(right, client, expected), timeout=5, what="written with AUTH")
        await until(
            lambda: metric(wrong.registry, "engage_redis_errors_total") >= 1,
            timeout=5,
            what="the wrong password refused",
        )
        assert wrong.pending == len(states)
    finally:
        await wrong.stop(timeout_s=0.5)
        await right.stop()
        client.close()
        server.stop()


# --- rebuild from the changelog -----------------------------------------------------------------


@integration
def test_rebuild_from_the_changelog(
    make_worker: Any, bootstrap: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    worker = make_worker().start()
    events = sample_events("rb")
    produce_events(bootstrap, worker.namespace, [e for evs in events.values() for e in evs])
    want = {cid: len(evs) for cid, evs in events.items()}

    def folded() -> dict[str, CustomerState] | None:
        states = table_state(bootstrap, worker.changelog)
        counts = {c: sum(s.counts.values()) for c, s in states.items()}
        return states if counts == want else None

    states = wait_for(folded, timeout=90, what="30 customers in the changelog")
    client = redis.Redis.from_url(redis_url)
    # What a rebuild must remove: a customer the table does not hold, a set no rule has.
    client.hset(f"{PROFILE_PREFIX}ghost", mapping={"customer_id": "ghost"})
    client.sadd("engage:segment:stage:active", "ghost", "rb-dormant-passive")
    client.sadd("engage:segment:stage:obsolete", "rb-new-advocate")
    settings = Settings(
        broker=f"kafka://{bootstrap}",
        app_id=worker.app_id,
        topic_namespace=worker.namespace,
        partitions=worker.partitions,
    )
    started = time.monotonic()
    assert asyncio.run(rebuild(settings, redis_url, CLOCK)) == 30
    print(f"\nrebuild of 30 customers: {time.monotonic() - started:.2f} s")
    expected = expected_content(states, CLOCK)
    assert content(client) == expected

    # The command, from nothing: the same content.
    client.flushdb()
    monkeypatch.setenv("ENGAGE_BROKER", f"kafka://{bootstrap}")
    monkeypatch.setenv("ENGAGE_APP_ID", worker.app_id)
    monkeypatch.setenv("ENGAGE_TOPIC_NAMESPACE", worker.namespace)
    monkeypatch.setenv("ENGAGE_REDIS_URL", redis_url)
    assert main(["rebuild", "--clock-ms", str(CLOCK)]) == 0
    assert content(client) == expected

    # Replay and follow modes have no wall clock: each partition is read at its latest event.
    client.flushdb()
    follow = settings.model_copy(update={"mode": "follow"})
    assert asyncio.run(rebuild(follow, redis_url)) == 30

    async def partitions() -> list[dict[str, bytes]]:
        return [part async for part in changelog_partitions(follow)]

    clocks = {
        cid: max(states[c].last_seen for c in part)
        for part in asyncio.run(partitions())
        for cid in part
    }
    expected = expected_content(states, clocks)
    assert content(client) == expected  # as_of: each partition's latest event, not now

    # A wrong app id finds no changelog: an error, and nothing is touched.
    monkeypatch.setenv("ENGAGE_APP_ID", unique("missing"))
    assert main(["rebuild"]) == 1
    assert content(client) == expected
    client.close()


# --- the worker's projection, end to end --------------------------------------------------------


def _projected(client: redis.Redis, states: dict[str, CustomerState], cid: str) -> bool:
    """Redis holds exactly the profile of the table's state, read at the hash's own as_of."""
    raw = client.hgetall(f"{PROFILE_PREFIX}{cid}")
    if not raw or cid not in states:
        return False
    got = {k.decode(): v.decode() for k, v in raw.items()}
    from datetime import datetime

    as_of = to_ms(datetime.fromisoformat(got["as_of"].replace("Z", "+00:00")))
    return got == profile_hash(view(states[cid], as_of, DEFAULT_RULES))


@integration
def test_worker_projection_survives_a_redis_outage_and_rebuilds(
    make_worker, own_redis: RedisServer, bootstrap: str, tmp_path: Path
) -> None:
    worker = make_worker(ENGAGE_REDIS_URL=own_redis.url).start()
    customers = [f"rosa-{i}" for i in range(12)]
    produce_events(bootstrap, worker.namespace,
                   [event("purchase", c, 1, amount="5.00") for c in customers])  # fmt: skip
    client = redis.Redis.from_url(own_redis.url)

    def all_projected(who: list[str]) -> bool:
        states = table_state(bootstrap, worker.changelog)
        return all(_projected(client, states, c) for c in who)

    wait_for(lambda: all_projected(customers), timeout=60, what="profiles in Redis")
    for c in customers:  # each in the stage set its profile names, and in no other
        stage = client.hget(f"{PROFILE_PREFIX}{c}", "lifecycle_stage").decode()
        member = {st for st in STAGES if client.sismember(f"engage:segment:stage:{st}", c)}
        assert member == {stage}, (c, member)

    own_redis.stop()
    changed = customers[:6]
    produce_events(bootstrap, worker.namespace,
                   [event("purchase", c, 2, amount="7.00") for c in changed])  # fmt: skip
    wait_for(
        lambda: all(table_state(bootstrap, worker.changelog)[c].orders == 2 for c in changed),
        timeout=60,
        what="the stream going on without Redis",
    )
    wait_for(lambda: worker.metric("engage_redis_errors_total") > 0, timeout=30,
             what="failed Redis writes counted")  # fmt: skip
    assert worker.alive()

    own_redis.start()  # empty: this Redis keeps nothing across a restart
    wait_for(own_redis.ping, timeout=10, interval=0.05, what="redis-server back")
    client = redis.Redis.from_url(own_redis.url)
    wait_for(lambda: all_projected(changed), timeout=60, what="the changed profiles caught up")

    env = {**worker.env, "ENGAGE_REDIS_URL": own_redis.url}
    client.flushdb()
    subprocess.run([sys.executable, "-m", "stream", "project", "rebuild"], env=env, check=True,
                   timeout=120, cwd=Path(__file__).resolve().parents[2])  # fmt: skip
    assert all_projected(customers)


@integration
async def test_an_erasure_the_projector_never_flushed_is_made_at_the_next_start(
    redis_url: str,
) -> None:
    """The worker stops (or dies) after erasing a customer but before its projector wrote the
    Redis deletion. The receipt already says `redis_profile: true`, so the partition keeps the
    erasure in its clock record until Redis confirms, and the next start of the partition (a
    restart, or another worker taking over) deletes the profile."""
    import json

    from stream.adapter.app import RedisProjection
    from stream.core.clock import clock_for
    from stream.core.driver import MemoryDriver
    from stream.core.engine import EngineConfig, time_key
    from stream.serving.projector import SEGMENT_KEYS, profile_key
    from tests.core.test_engine import CONTROL, INPUTS, LIMITS, NS, RULES, WALL, Log

    erasures = f"{NS}.erasures"
    config = EngineConfig(RULES, clock_for("follow", grace_ms=1000), INPUTS, CONTROL, LIMITS,
                          erasures_topic=erasures)  # fmt: skip
    log = Log()
    cid = "erased-at-shutdown"
    bought = log.event(event("purchase", cid, days=0))
    p = bought.partition
    client = redis.Redis.from_url(redis_url)

    def start(driver: MemoryDriver) -> RedisProjector:
        projector = RedisProjector(redis_url, RULES, linger_s=0.0)
        projector.on_written = driver.projected
        driver.projection = RedisProjection(projector, RULES)
        return projector

    def unprojected() -> list[str]:
        return json.loads(driver.control[time_key(p)]).get("unprojected", [])

    driver = MemoryDriver(config)
    first = start(driver)
    await first.start()
    driver.pipe([bought], wall_ms=WALL)
    await until(lambda: client.exists(profile_key(cid)), timeout=5, what="the profile")
    await first.stop()  # the worker stops: its projector will flush nothing more

    request = {"customer_id": cid, "request_id": "r-1", "requested_at": "2026-01-01T00:00:00Z"}
    erase = log.append(erasures, p, cid.encode(), json.dumps(request).encode())
    [result] = driver.pipe([erase], wall_ms=WALL)
    [receipt] = [json.loads(o.value or b"") for o in result.outputs if o.name == "erasure_receipts"]
    assert receipt["deleted"]["redis_profile"] is True
    assert client.exists(profile_key(cid))  # the deletion died with the stopped projector
    assert unprojected() == [cid]

    driver.crash()  # the process is gone; the tables (changelogs) remain
    second = start(driver)
    await second.start()
    try:
        driver.engine(p)  # the partition starts again (a restart, or another worker)
        await until(lambda: not client.exists(profile_key(cid)), timeout=5, what="deletion")
        assert not any(client.sismember(key, cid) for key in SEGMENT_KEYS)
        await until(lambda: unprojected() == [], timeout=5, what="the erasure confirmed")
    finally:
        await second.stop()
        client.close()
