"""Faust's private surface: one module (`stream.adapter.faust_private`), an explicit list.

Engage relies on some private names of Faust, mode and aiokafka (see the module's docstring for
why). These tests keep them countable and checked: the module uses exactly the names listed
here (adding one is a conscious change of this list), every listed name still exists in the
installed releases (an upgrade that removes one fails here, naming it), and no other module of
`stream/` or `bench/` uses any of them, nor any other private attribute that is not engage's
own.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
import textwrap
from importlib.metadata import version
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULE = ROOT / "stream" / "adapter" / "faust_private.py"

CONSUMER = "faust.transport.drivers.aiokafka:Consumer"  # the worker's consumer's Faust base
RECOVERY = "faust.tables.recovery:Recovery"

#: Every private library name `faust_private` uses -> where it lives ("module:Class" or
#: "module" for a module-level name).
EXPECTED = {
    # the consumer's offset bookkeeping and fetcher loop
    "_committed_offset": CONSUMER,
    "_read_offset": CONSUMER,
    "_buffered_partitions": CONSUMER,
    "_wait_next_records": CONSUMER,
    "_to_message": CONSUMER,
    "_acked": CONSUMER,
    "_acked_index": CONSUMER,
    "_n_acked": CONSUMER,
    "_waiting_for_ack": CONSUMER,
    "_commit_every": CONSUMER,
    "_drain_messages": CONSUMER,
    # the commit rule (patched on Faust's base consumer class)
    "_new_offset": "faust.transport.consumer:Consumer",
    "_add_gap": "faust.transport.consumer:Consumer",
    # a service's flags (the consumer, its fetcher)
    "_stopped": "mode.services:Service",
    "_crashed": "mode.services:Service",
    # the app
    "_consumer": "faust.app.base:App",
    "_new_transport": "faust.app.base:App",
    "_changelogs": "faust.tables.manager:TableManager",
    # table recovery
    "_active_events_received_at": RECOVERY,
    "_standby_events_received_at": RECOVERY,
    "_last_flush_at": RECOVERY,
    "_set_recovery_ended": RECOVERY,
    "_standbys_span": RECOVERY,
    # tables
    "_current_event": "faust.streams",
    "_dbs": "faust.stores.rocksdb:Store",
    # the producer
    "_settings_extra": "faust.transport.drivers.aiokafka:Producer",
    # the consumer thread and its aiokafka consumer's fetch wait
    "_new_consumer_thread": CONSUMER,
    "_create_consumer": "faust.transport.drivers.aiokafka:AIOKafkaConsumerThread",
    "_fetch_max_wait_ms": "aiokafka.consumer.consumer:AIOKafkaConsumer",
    "_fetch_min_bytes": "aiokafka.consumer.consumer:AIOKafkaConsumer",
    # aiokafka
    "_client": "aiokafka.consumer.consumer:AIOKafkaConsumer",
}

#: Private attributes of other libraries used outside `faust_private` (not Faust, mode nor
#: aiokafka), each with its reason.
OTHER_LIBRARIES = {
    "_asyncio_future_blocking": "asyncio's future protocol: what a task does with a yield "
    "(stream/adapter/drain.py, the lean hand-over)",
    "_transaction": "Quix Streams' state transaction (bench/quix_engage.py, the Quix benchmark)",
    # prometheus-client has no batch observe: `observe_all` adds a batch's lags per bucket,
    # checked against `observe` in tests/telemetry/test_metric_counts.py
    "_upper_bounds": "prometheus-client Histogram bucket bounds (stream/telemetry/metrics.py)",
    "_buckets": "prometheus-client Histogram bucket values (stream/telemetry/metrics.py)",
    "_sum": "prometheus-client Histogram sum value (stream/telemetry/metrics.py)",
}

PRIVATE = re.compile(r"^_[A-Za-z0-9]\w*$")


def _private(name: str) -> bool:
    return bool(PRIVATE.match(name)) and not name.endswith("__")


def private_names(tree: ast.AST) -> set[str]:
    """The private names a module reaches in other objects: attributes (`x._name`), names
    imported (`from m import _name`), strings naming one (`getattr(x, "_name")`) and methods
    a class defines under a private name (an override of a library's private hook)."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            found.add(node.attr)
        elif isinstance(node, ast.ImportFrom):
            if not (node.module or "").startswith(("stream", "schemas", "tests", "bench")):
                found.update(a.name for a in node.names if _private(a.name))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if _private(node.value):
                found.add(node.value)
        elif isinstance(node, ast.ClassDef):
            found.update(
                item.name
                for item in node.body
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and _private(item.name)
            )
    return found


def other_modules() -> list[Path]:
    files = sorted((ROOT / "stream").rglob("*.py")) + sorted((ROOT / "bench").rglob("*.py"))
    return [f for f in files if f != MODULE]


def test_faust_private_uses_exactly_the_listed_private_names() -> None:
    used = private_names(ast.parse(MODULE.read_text()))
    assert used - EXPECTED.keys() == set(), "new private names: list them in EXPECTED"
    assert EXPECTED.keys() - used == set(), "no longer used: remove them from EXPECTED"


def _defined_in_source(obj: object, name: str) -> bool:
    """`name` is defined in `obj`'s own source: a def, an assignment or annotation at the top
    of its body, or (a class) an assignment to `self.<name>` in one of its methods. Read from
    the source, so a name our own patch added to a class does not count."""
    try:
        source = textwrap.dedent(inspect.getsource(obj))  # type: ignore[arg-type]
    except (OSError, TypeError):  # a builtin base (object, Generic, ...)
        return False
    tree = ast.parse(source)
    body = tree.body[0].body if inspect.isclass(obj) else tree.body  # type: ignore[attr-defined]
    if name in {_top_level_name(node) for node in body}:
        return True
    if inspect.isclass(obj):
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and node.attr == name
                and isinstance(node.ctx, ast.Store)
                and isinstance(node.value, ast.Name)
                and node.value.id == "self"
            ):
                return True
    return False


def _top_level_name(node: ast.stmt) -> str | None:
    """The name a statement at the top of a body defines (one assignment target at most)."""
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return node.name
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        return node.target.id
    if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
        return node.targets[0].id
    return None


def _exists(owner: str, name: str) -> bool:
    module_name, _, class_name = owner.partition(":")
    module = importlib.import_module(module_name)
    if not class_name:
        return _defined_in_source(module, name)
    cls = getattr(module, class_name)
    return any(_defined_in_source(base, name) for base in cls.__mro__)


def _installed() -> str:
    return ", ".join(
        f"{dist} {version(dist)}" for dist in ("faust-streaming", "mode-streaming", "aiokafka")
    )


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_listed_private_name_still_exists_in_the_installed_release(name: str) -> None:
    owner = EXPECTED[name]
    assert _exists(owner, name), (
        f"{owner}.{name} no longer exists in the installed release ({_installed()}): "
        "adapt stream/adapter/faust_private.py (see its docstring)"
    )


def test_the_existence_check_fails_for_a_name_that_does_not_exist() -> None:
    from stream.adapter.faust_private import install_commit_rule

    install_commit_rule()  # patches Consumer._new_offset: the source still decides
    assert not _exists(CONSUMER, "_no_such_name")
    assert not _exists("faust.streams", "_no_such_name")
    assert _exists("faust.transport.consumer:Consumer", "_new_offset")


def test_no_other_module_uses_a_listed_private_name() -> None:
    offenders = {
        str(path.relative_to(ROOT)): sorted(used)
        for path in other_modules()
        if (used := private_names(ast.parse(path.read_text())) & EXPECTED.keys())
    }
    assert offenders == {}, "go through stream.adapter.faust_private"


def _own_names(trees: list[ast.AST]) -> set[str]:
    """Names engage itself defines: functions, classes, module and class attributes,
    `self.`/`cls.` attributes, `__slots__` entries."""
    own: set[str] = set()
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                own.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                if isinstance(node.value, ast.Name) and node.value.id in {"self", "cls"}:
                    own.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                own.add(node.id)
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                own.add(node.target.id)
            elif isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "__slots__" for t in node.targets
            ):
                for item in ast.walk(node.value):
                    if isinstance(item, ast.Constant) and isinstance(item.value, str):
                        own.add(item.value)
    return own


def test_every_other_private_attribute_is_engages_own() -> None:
    """A private attribute read outside `faust_private` that engage never defines belongs to
    a library: it must go through `faust_private` (Faust, mode, aiokafka) or be listed in
    OTHER_LIBRARIES with its reason."""
    trees = {path: ast.parse(path.read_text()) for path in other_modules()}
    allowed = _own_names(list(trees.values())) | OTHER_LIBRARIES.keys()
    foreign: dict[str, set[str]] = {}
    for path, tree in trees.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and _private(node.attr) and node.attr not in allowed:
                foreign.setdefault(node.attr, set()).add(str(path.relative_to(ROOT)))
    assert foreign == {}


def test_the_scans_see_each_kind_of_use() -> None:
    source = textwrap.dedent(
        """
        from faust.streams import _current_event
        from stream.adapter.tables import _Message
        x = consumer._read_offset
        y = getattr(store, "_dbs", None)
        class P(Producer):
            def _settings_extra(self): ...
            def __init__(self): ...
        """
    )
    assert private_names(ast.parse(source)) == {
        "_current_event",
        "_read_offset",
        "_dbs",
        "_settings_extra",
    }


def test_the_producer_adds_the_durable_settings_to_fausts() -> None:
    from stream.adapter.app import create_app
    from stream.kafka_client import DURABLE_PRODUCER
    from stream.settings import Settings

    settings = Settings(broker="kafka://127.0.0.1:1", redis_enabled=False)
    app = create_app(settings).app
    extra = app.producer._settings_extra()
    assert {k: extra[k] for k in DURABLE_PRODUCER} == dict(DURABLE_PRODUCER)


def test_the_consumer_is_none_until_the_app_creates_it() -> None:
    from stream.adapter.app import create_app
    from stream.adapter.faust_private import started_consumer
    from stream.settings import Settings

    app = create_app(Settings(broker="kafka://127.0.0.1:1", redis_enabled=False)).app
    assert started_consumer(app) is None
    consumer = app.consumer
    assert started_consumer(app) is consumer


def test_importing_the_module_loads_no_faust() -> None:
    """The changelog rebuild (`stream.serving`, which never loads Faust) and the tools use its
    aiokafka helper: the Faust and mode imports are inside the functions that need them."""
    import subprocess
    import sys

    probe = (
        "import sys, stream.adapter.faust_private, stream.serving.projector, "
        "stream.serving.changelog_reader, stream.serving.rebuild, stream.tools.forget;"
        "print(sorted(m for m in ('faust', 'mode') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


def test_a_text_search_for_a_listed_name_finds_only_the_module() -> None:
    """What a reader's `grep` sees: not even a comment or docstring of another module names a
    listed private name (nor does one of engage's own helpers share such a name)."""
    word = re.compile(r"(?<!\w)(" + "|".join(map(re.escape, sorted(EXPECTED))) + r")\b")
    found = {
        f"{path.relative_to(ROOT)}:{number}": line.strip()
        for path in other_modules()
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if word.search(line)
    }
    assert found == {}


@pytest.mark.parametrize(("wait_ms", "min_bytes"), [(10, 65536), (1500, 1)])
def test_the_consumer_fetch_waits_as_configured(wait_ms: int, min_bytes: int) -> None:
    """Faust builds its aiokafka consumer with a fixed 1,500 ms fetch wait and aiokafka's
    1-byte minimum; the worker's waits `ENGAGE_CONSUMER_FETCH_MAX_WAIT_MS` for
    `ENGAGE_CONSUMER_FETCH_MIN_BYTES` (checked on the client Faust's thread builds, before it
    connects)."""
    import asyncio

    from stream.adapter.app import create_app
    from stream.settings import Settings

    settings = Settings(
        broker="kafka://127.0.0.1:1",
        redis_enabled=False,
        consumer_fetch_max_wait_ms=wait_ms,
        consumer_fetch_min_bytes=min_bytes,
    )
    app = create_app(settings).app

    async def build() -> None:
        client = app.consumer._thread._create_consumer(asyncio.get_running_loop())
        assert client._fetch_max_wait_ms == wait_ms
        assert client._fetch_min_bytes == min_bytes
        assert client._max_poll_records == settings.consumer_max_poll_records

    asyncio.run(build())


class _Consumer:
    """The attributes of a Faust consumer the commit rule reads (no broker)."""

    def __init__(self, *, committed: int | None, start: int | None, acked: list[int]) -> None:
        from collections import defaultdict

        self.tp = ("clicks", 6)
        self._committed_offset: dict = defaultdict(lambda: None)
        if committed is not None:
            self._committed_offset[self.tp] = committed
        self.start_offsets = {} if start is None else {self.tp: start}
        self._acked = {self.tp: list(acked)}
        self._acked_index = {self.tp: set(acked)}


def test_nothing_committed_the_first_offset_anchors_the_commit() -> None:
    """A rebalance dropped offsets 0-338 of a partition never committed, and the consumer went
    on from 339: with the partition's first offset as the anchor, 339-603 acknowledged commit
    nothing (0-338 are read again first); without it, 604 was committed past them."""
    from stream.adapter.faust_private import _gapless_new_offset, resume_offset

    dropped = _Consumer(committed=None, start=0, acked=list(range(339, 604)))
    assert resume_offset(dropped, dropped.tp) == 0
    assert _gapless_new_offset(dropped, dropped.tp) is None
    assert dropped._acked[dropped.tp] == list(range(339, 604))  # kept for later
    unknown = _Consumer(committed=None, start=None, acked=list(range(339, 604)))
    assert _gapless_new_offset(unknown, unknown.tp) == 604  # the old behaviour, no anchor
    whole = _Consumer(committed=None, start=0, acked=list(range(604)))
    assert _gapless_new_offset(whole, whole.tp) == 604
    retained = _Consumer(committed=None, start=339, acked=list(range(339, 604)))
    assert _gapless_new_offset(retained, retained.tp) == 604  # retention removed 0-338
    committed = _Consumer(committed=339, start=0, acked=list(range(339, 604)))
    assert resume_offset(committed, committed.tp) == 339
    assert _gapless_new_offset(committed, committed.tp) == 604


def test_the_drain_learns_first_offsets_once_per_generation() -> None:
    import asyncio
    from types import SimpleNamespace

    from stream.adapter.drain import DirectConsumer

    asked: list[tuple] = []

    class Fake:
        _learn_starts = DirectConsumer._learn_starts
        flow_active = True

        def __init__(self) -> None:
            self.app = SimpleNamespace(consumer_generation_id=3)
            self._committed_offset = {("purchases", 1): 40}
            self.start_offsets: dict = {}
            self._starts_generation = None

        async def earliest_offsets(self, *tps: tuple) -> dict:
            asked.append(tps)
            return {tp: 7 for tp in tps}

    fake = Fake()
    tps = [("clicks", 1), ("purchases", 1)]
    assert asyncio.run(fake._learn_starts(tps, 3)) is True
    assert fake.start_offsets == {("clicks", 1): 7} and asked == [(("clicks", 1),)]
    assert asyncio.run(fake._learn_starts(tps, 3)) is True
    assert len(asked) == 1  # known for this generation
    fake.app.consumer_generation_id = 4
    assert asyncio.run(fake._learn_starts(tps, 4)) is True
    assert len(asked) == 2  # asked again after a rebalance
    fake.app.consumer_generation_id = 5  # a rebalance began while asking: drop the batch
    fake._committed_offset = {}
    assert asyncio.run(fake._learn_starts(tps, 4)) is False


def test_after_a_rebalance_partitions_never_committed_are_read_from_their_first_offset() -> None:
    """The consumer keeps its position over a fetch a rebalance dropped; when those records
    were a partition's last, nothing later revealed the hole. Once per generation, the drain
    seeks every assigned partition with nothing committed to its first offset."""
    import asyncio
    from types import SimpleNamespace

    from faust.types import TP

    from stream.adapter.drain import DirectConsumer

    clicks, surveys, changelog = TP("in.clicks", 6), TP("in.surveys", 6), TP("app-c", 6)

    class Fake:
        _anchor = DirectConsumer._anchor
        _learn_starts = DirectConsumer._learn_starts
        flow_active = True

        def __init__(self) -> None:
            self.app = SimpleNamespace(consumer_generation_id=7)
            self.direct_topics = frozenset({"in.clicks", "in.surveys"})
            self._committed_offset = {clicks: 1200}
            self.start_offsets: dict = {}
            self._starts_generation = None
            self._anchored_generation = None
            self.seeks: list[tuple] = []

        def assignment(self) -> set:
            return {clicks, surveys, changelog}

        async def earliest_offsets(self, *tps: tuple) -> dict:
            return {tp: 0 for tp in tps}

        async def seek(self, tp: tuple, offset: int) -> None:
            self.seeks.append((tp, offset))

    fake = Fake()
    asyncio.run(fake._anchor())
    assert fake.seeks == [(surveys, 0)]  # committed ones and changelogs: Faust's
    asyncio.run(fake._anchor())
    assert len(fake.seeks) == 1  # once per generation
    fake.app.consumer_generation_id = 8
    asyncio.run(fake._anchor())
    assert len(fake.seeks) == 2
