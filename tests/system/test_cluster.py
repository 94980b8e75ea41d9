"""A replicated Kafka cluster: `devstack up --brokers 3`, topic replication, durable producers.

The unit tests need no broker: the generated node configs, the replication derived from the
broker count, and the producer settings every client gets. The one integration test starts a
real three-node KRaft cluster in a temporary devstack dir on free ports (never the shared
stack), creates the topics with `engage topics`, checks their replicas and configs on the
brokers, and stops and wipes the cluster again.
"""

from __future__ import annotations

import asyncio
import os
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from stream.settings import Settings
from stream.tools import devstack
from stream.tools.devstack import ConfigError, Kafka, load_settings
from tests.harness import ROOT, unique


def _props(node: Kafka) -> dict[str, str]:
    lines = node.render_properties().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def _cluster_settings(tmp_path: Path, **overrides: object) -> devstack.DevstackSettings:
    values: dict[str, object] = {
        "devstack_dir": tmp_path,
        "kafka_port": 29092,
        "kafka_controller_port": 29093,
        "kafka_sasl_port": 29094,
        "kafka_brokers": 3,
    }
    return load_settings(**{**values, **overrides})


# --------------------------------------------------------------------------------------------
# Node configuration (no broker)
# --------------------------------------------------------------------------------------------


def test_three_nodes_get_their_own_ports_dirs_ids_and_one_quorum(tmp_path: Path) -> None:
    nodes = devstack.kafka_nodes(_cluster_settings(tmp_path))
    assert [n.name for n in nodes] == ["kafka-1", "kafka-2", "kafka-3"]
    props = [_props(n) for n in nodes]
    assert [p["node.id"] for p in props] == ["1", "2", "3"]
    assert [n.ports for n in nodes] == [
        (29092, 29093, 29094),
        (29192, 29193, 29194),
        (29292, 29293, 29294),
    ]
    voters = "1@127.0.0.1:29093,2@127.0.0.1:29193,3@127.0.0.1:29293"
    for node, p in zip(nodes, props, strict=True):
        port, cport, sport = node.ports
        assert p["process.roles"] == "broker,controller"
        assert p["controller.quorum.voters"] == voters
        assert p["listeners"] == (
            f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{cport},"
            f"SASL_PLAINTEXT://127.0.0.1:{sport}"
        )
        assert p["advertised.listeners"] == (
            f"PLAINTEXT://127.0.0.1:{port},SASL_PLAINTEXT://127.0.0.1:{sport}"
        )
        # Internal topics replicated like ours: 3 copies, 2 in sync.
        assert p["offsets.topic.replication.factor"] == "3"
        assert p["transaction.state.log.replication.factor"] == "3"
        assert p["transaction.state.log.min.isr"] == "2"
        assert p["min.insync.replicas"] == "2"
        assert p["default.replication.factor"] == "3"
    # Nothing of one node is another's: data, config, pid file, logs, JVM identity.
    for attribute in (
        lambda n: n.server_properties,
        lambda n: n.layout.pid_file(n.name),
        lambda n: n.log_file,
        lambda n: n.stdout_file,
        lambda n: n.port_token(),
        lambda n: n.identity(),
    ):
        assert len({attribute(n) for n in nodes}) == 3
    assert {p["log.dirs"] for p in props} == {str(tmp_path / f"kafka-{i}") for i in (1, 2, 3)}
    # One SASL secret for the cluster; every node accepts it.
    password = nodes[0].sasl_password()
    assert all(password in p["listener.name.sasl_plaintext.plain.sasl.jaas.config"] for p in props)


def test_cluster_config_files_are_private(tmp_path: Path) -> None:
    nodes = devstack.kafka_nodes(_cluster_settings(tmp_path))
    for node in nodes:
        node.write_config()
    conf = nodes[0].layout.conf
    assert stat.S_IMODE(conf.stat().st_mode) == 0o700
    for path in [n.server_properties for n in nodes] + [nodes[0].sasl_secret_file]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_the_single_node_keeps_its_layout_and_config(tmp_path: Path) -> None:
    """The default stays one node named `kafka` with the files it always had, and its config
    gains no cluster setting (a changed config would restart a running dev broker)."""
    [node] = devstack.kafka_nodes(load_settings(devstack_dir=tmp_path))
    props = _props(node)
    assert node.name == "kafka" and node.server_properties.name == "server.properties"
    assert props["node.id"] == "1"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:9093"
    assert props["log.dirs"] == str(tmp_path / "kafka")
    assert "min.insync.replicas" not in props and "default.replication.factor" not in props
    assert node.log_file == tmp_path / "logs" / "kafka.log"


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"kafka_node_port_step": 1}, "ports must all differ"),  # node 2's port = node 1's +1
        ({"kafka_port": 65400, "kafka_controller_port": 65401, "kafka_sasl_port": 65402},
         "above 65535"),
        ({"redis_port": 29193}, "ports must all differ"),  # node 2's controller port
    ],
)  # fmt: skip
def test_cluster_ports_are_checked(
    tmp_path: Path, overrides: dict[str, object], expected: str
) -> None:
    with pytest.raises(ConfigError, match=expected):
        _cluster_settings(tmp_path, **overrides)


def test_a_dir_keeps_the_cluster_size_it_was_set_up_with(tmp_path: Path) -> None:
    settings = _cluster_settings(tmp_path)
    nodes = devstack.kafka_nodes(settings)
    devstack._check_kafka_shape(settings, list(nodes))  # records 3
    assert devstack.recorded_kafka_nodes(nodes[0].layout) == 3
    assert stat.S_IMODE(nodes[0].layout.kafka_nodes_file.stat().st_mode) == 0o600
    unset = load_settings(devstack_dir=tmp_path, kafka_port=29092, kafka_controller_port=29093,
                          kafka_sasl_port=29094)  # fmt: skip
    assert devstack.kafka_node_count(unset) == 3  # `status`/`down` without --brokers see 3
    five = _cluster_settings(tmp_path, kafka_brokers=5)
    with pytest.raises(ConfigError, match="3-node Kafka cluster"):
        devstack._check_kafka_shape(five, list(devstack.kafka_nodes(five)))


def test_cli_brokers_flag_is_validated(capsys: pytest.CaptureFixture[str]) -> None:
    assert devstack.main(["up", "--only", "kafka", "--brokers", "0"]) == 2
    err = capsys.readouterr().err
    assert "ENGAGE_KAFKA_BROKERS=0" in err and "Traceback" not in err


# --------------------------------------------------------------------------------------------
# Topic replication from the broker count (no broker)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("brokers", "env", "expected"),
    [
        (1, {}, (1, 1)),
        (2, {}, (2, 1)),
        (3, {}, (3, 2)),
        (5, {}, (3, 2)),
        (5, {"replication_factor": 5}, (5, 2)),
        (3, {"replication_factor": 2}, (2, 1)),
        (3, {"min_insync_replicas": 3}, (3, 3)),
        (1, {"min_insync_replicas": 2}, (1, 1)),  # never more than the copies
    ],
)
def test_replication_follows_the_broker_count(
    brokers: int, env: dict[str, int], expected: tuple[int, int]
) -> None:
    assert Settings(**env).replication_for(brokers) == expected


def test_min_insync_above_the_replication_factor_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ENGAGE_REPLICATION_FACTOR", "2")
    monkeypatch.setenv("ENGAGE_MIN_INSYNC_REPLICAS", "3")
    with pytest.raises(ValueError, match="ENGAGE_MIN_INSYNC_REPLICAS"):
        Settings()


# --------------------------------------------------------------------------------------------
# Producers: acks=all and idempotence everywhere (no broker)
# --------------------------------------------------------------------------------------------


def _durable(producer: object) -> tuple[object, bool]:
    """(acks, idempotent) of an unstarted aiokafka producer."""
    return producer._sender._acks, producer._txn_manager is not None  # type: ignore[attr-defined]


async def test_product_clients_produce_with_acks_all_and_idempotence() -> None:
    from stream.client.producer import EngageProducer
    from stream.kafka_client import KafkaOptions, faust_options, producer
    from stream.tools.emitter.sink import KafkaSink

    settings = Settings()
    assert _durable(producer(settings)) == (-1, True)
    assert _durable(EngageProducer()._producer) == (-1, True)
    assert _durable(KafkaSink(KafkaOptions.from_env({}))._producer) == (-1, True)
    assert faust_options(settings)["producer_acks"] == -1


@pytest.mark.parametrize("drain", ["direct", "lean", "faust"])
async def test_the_worker_producer_is_idempotent_with_acks_all(drain: str) -> None:
    """Faust asks for idempotence only in transactions; the worker's producer always has it."""
    from stream.adapter.app import create_app

    engage = create_app(Settings(drain=drain, redis_enabled=False))
    inner = engage.app.producer._new_producer()
    assert _durable(inner) == (-1, True)


# --------------------------------------------------------------------------------------------
# A real three-node cluster (integration)
# --------------------------------------------------------------------------------------------


def _free_block(step: int, nodes: int) -> int:
    """A base port such that base+{0,1,2} + k*step are free for every node k."""
    for _ in range(200):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = probe.getsockname()[1]
        ports = [base + k * step + i for k in range(nodes) for i in range(3)]
        if max(ports) > 65000:
            continue
        free = True
        for port in ports:
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    free = False
                    break
        if free:
            return base
    raise AssertionError("no free block of ports")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A 3-node cluster in a temporary devstack dir, sharing the shared stack's jars (read
    only) when they are current; stopped and wiped at the end."""
    shared = devstack.Layout(load_settings().root)
    root = tmp_path / "devstack"
    root.mkdir()
    if devstack.jars_current(shared):
        (root / "libs").symlink_to(shared.libs)
    base = _free_block(step=10, nodes=3)
    settings = load_settings(
        devstack_dir=root,
        kafka_port=base,
        kafka_controller_port=base + 1,
        kafka_sasl_port=base + 2,
        kafka_node_port_step=10,
        kafka_brokers=3,
        devstack_timeout_s=120,
    )
    try:
        yield devstack.ensure_up(("kafka",), settings=settings)
    finally:
        devstack.stop(("kafka",), wipe=True, settings=settings, report=print)
        assert not any(node.running_pid() for node in devstack.kafka_nodes(settings))


async def _describe(bootstrap: str, topics: list[str]) -> tuple[list, dict[str, dict[str, str]]]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics(topics)
        responses = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, t) for t in topics]
        )
    finally:
        await admin.close()
    configs: dict[str, dict[str, str]] = {}
    for response in responses:
        for resource in response.resources:
            _, _, _, name, entries = resource[:5]
            configs[name] = {entry[0]: entry[1] for entry in entries}
    return described, configs


@pytest.mark.integration
@pytest.mark.timeout(240)
def test_three_broker_cluster_replicates_every_topic(cluster: dict[str, str]) -> None:
    started = time.monotonic()
    bootstrap = cluster["kafka"]
    assert cluster["kafka_brokers"] == "3" and bootstrap.count(",") == 2
    namespace = unique("cluster")
    env = {
        **os.environ,
        "ENGAGE_BROKER": "kafka://" + bootstrap.replace(",", ";"),
        "ENGAGE_TOPIC_NAMESPACE": namespace,
        "ENGAGE_APP_ID": namespace,
        "ENGAGE_PARTITIONS": "3",
    }
    done = subprocess.run(
        [sys.executable, "-m", "stream", "topics"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "replication factor 3, min.insync.replicas 2" in done.stdout
    assert "(3 brokers)" in done.stdout
    settings = Settings(topic_namespace=namespace, app_id=namespace, partitions=3)
    topics = [*settings.all_topics(), settings.forward_dlq_topic, *settings.changelog_topics()]
    described, configs = asyncio.run(_describe(bootstrap, topics))
    assert sorted(t["topic"] for t in described) == sorted(topics)
    for topic in described:
        assert len(topic["partitions"]) == 3
        for partition in topic["partitions"]:
            assert sorted(partition["replicas"]) == [1, 2, 3], topic["topic"]
            assert sorted(partition["isr"]) == [1, 2, 3], topic["topic"]
    for name in topics:
        assert configs[name]["min.insync.replicas"] == "2", name
    for name in settings.changelog_topics():
        assert configs[name]["cleanup.policy"] == "compact"
    # The leaders are spread over the brokers, not all on one.
    leaders = {p["leader"] for t in described for p in t["partitions"]}
    assert leaders == {1, 2, 3}
    # A second run creates nothing and still succeeds.
    again = subprocess.run(
        [sys.executable, "-m", "stream", "topics"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert again.returncode == 0 and "created" not in again.stdout, again.stdout
    print(f"cluster test body {time.monotonic() - started:.1f}s")
