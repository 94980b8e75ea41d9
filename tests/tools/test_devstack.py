"""The local stack (stream/tools/devstack.py) against the real programs: no mocks.

The integration tests share the stack with every other integration test module, so they start
it if needed (module fixture -> ensure_up) and never stop it; topics and keys they create carry
a random suffix and are removed again.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from stream.tools import devstack
from stream.tools.devstack import ConfigError, load_settings

# --------------------------------------------------------------------------------------------
# Settings (no stack needed)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("ENGAGE_REDIS_PORT", "70000", "less than or equal to 65535"),
        ("ENGAGE_KAFKA_PORT", "0", "greater than or equal to 1"),
        ("ENGAGE_PROMETHEUS_PORT", "http", "valid integer"),
        ("ENGAGE_PROMETHEUS_TARGETS", "127.0.0.1:6066,nope", "'nope' is not host:port"),
    ],
)
def test_settings_reject_bad_values_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert f"{variable}={value!r}" in message
    assert expected in message


def test_settings_reject_clashing_ports(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENGAGE_KAFKA_PORT", "9092")
    monkeypatch.setenv("ENGAGE_REDIS_PORT", "9092")
    with pytest.raises(ConfigError, match="ports must all differ"):
        load_settings()


def test_cli_prints_bad_port_without_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ENGAGE_KAFKA_PORT", "99999")
    assert devstack.main(["status"]) == 2
    err = capsys.readouterr().err
    assert "ENGAGE_KAFKA_PORT='99999'" in err
    assert "Traceback" not in err


def test_settings_defaults_and_target_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENGAGE_PROMETHEUS_TARGETS", " 127.0.0.1:6066, 127.0.0.1:6067 ,")
    settings = load_settings()
    assert settings.prometheus_targets == ("127.0.0.1:6066", "127.0.0.1:6067")
    assert settings.root.is_absolute()
    config = devstack.render_prometheus_config(settings)
    assert "127.0.0.1:6067" in config
    assert "worker-1" not in config  # the docker-compose targets are replaced


def test_kafka_has_a_sasl_listener_with_generated_credentials(tmp_path: object) -> None:
    settings = load_settings(devstack_dir=tmp_path, kafka_sasl_port=29094)
    kafka = devstack.Kafka(settings)
    props = kafka.render_properties()
    password = kafka.sasl_password()
    assert "SASL_PLAINTEXT://127.0.0.1:29094" in props
    assert f'user_engage="{password}"' in props and len(password) >= 24
    assert kafka.sasl_password() == password  # generated once, kept in the devstack dir
    assert oct(kafka.sasl_secret_file.stat().st_mode & 0o777) == "0o600"
    assert kafka.client_info()["kafka_sasl"] == "127.0.0.1:29094"
    # The port token older devstacks look for is unchanged; the config token tells `up` that a
    # broker started with another configuration must be restarted.
    ports = f"{settings.kafka_port},{settings.kafka_controller_port}"
    assert kafka.port_token() == f"-Dengage.devstack.ports={ports}"
    other = devstack.Kafka(load_settings(devstack_dir=tmp_path, kafka_sasl_port=29095))
    assert other.config_token() != kafka.config_token()
    assert kafka.config_token() in kafka.command()


# --------------------------------------------------------------------------------------------
# Against the running stack
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stack() -> Iterator[dict[str, str]]:
    """Start whatever is not running; leave it running afterwards (shared by other modules)."""
    yield devstack.ensure_up()


@pytest.mark.integration
def test_ensure_up_is_idempotent(stack: dict[str, str]) -> None:
    pids_before = {name: state.pid for name, state in devstack.status().items()}
    started = time.monotonic()
    again = devstack.ensure_up()
    elapsed = time.monotonic() - started
    pids_after = {name: state.pid for name, state in devstack.status().items()}

    assert again == stack
    assert {"kafka", "redis", "prometheus"} <= set(stack)
    assert {k for k in stack if k.startswith("kafka_sasl")} == {
        "kafka_sasl", "kafka_sasl_mechanism", "kafka_sasl_username", "kafka_sasl_password"
    }  # fmt: skip
    assert elapsed < 3.0, f"a second ensure_up took {elapsed:.1f}s"
    assert None not in pids_before.values()
    assert pids_after == pids_before  # nothing was started a second time


@pytest.mark.integration
def test_status_reports_every_service_up(
    stack: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert devstack.main(["status"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[:2] for line in lines] == [
        ["kafka", "up"],
        ["redis", "up"],
        ["prometheus", "up"],
    ]
    assert all(stack[line.split()[0]] in line for line in lines)


@pytest.mark.integration
async def test_kafka_topic_produce_consume(stack: dict[str, str]) -> None:
    bootstrap = stack["kafka"]
    topic = f"devstack-test-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)])
        deadline = time.monotonic() + 15  # metadata of a new topic reaches every listener soon
        while True:
            [described] = await admin.describe_topics([topic])
            if described["error_code"] == 0 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        assert described["error_code"] == 0
        assert len(described["partitions"]) == 3

        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
        await producer.start()
        try:
            sent = await producer.send_and_wait(topic, b"hello", key=b"k", partition=2)
        finally:
            await producer.stop()
        assert sent.partition == 2

        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
        )
        await consumer.start()
        try:
            consumer.assign([TopicPartition(topic, 2)])
            message = await asyncio.wait_for(consumer.getone(), timeout=30)
        finally:
            await consumer.stop()
        assert (message.key, message.value, message.offset) == (b"k", b"hello", sent.offset)
    finally:
        await admin.delete_topics([topic])
        await admin.close()


@pytest.mark.integration
def test_redis_set_get(stack: dict[str, str]) -> None:
    client = redis.Redis.from_url(stack["redis"])
    key = f"devstack-test:{uuid.uuid4().hex}"
    try:
        assert client.set(key, "value", ex=60)
        assert client.get(key) == b"value"
    finally:
        client.delete(key)
        client.close()


def _get(url: str) -> tuple[int, bytes]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=10) as response:
        return response.status, response.read()


@pytest.mark.integration
def test_prometheus_ready_and_config_valid(stack: dict[str, str]) -> None:
    status, _ = _get(f"{stack['prometheus']}/-/ready")
    assert status == 200

    settings = load_settings()
    config = settings.root / "conf" / "prometheus.yml"
    check = subprocess.run(
        ["promtool", "check", "config", str(config)], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr

    # The engage job scrapes the configured worker targets. Prometheus hands discovered targets
    # to the scrape manager at most every 5 s, so a just-started server may not list them yet.
    def engage_targets() -> set[str]:
        _, body = _get(f"{stack['prometheus']}/api/v1/targets")
        targets = json.loads(body)["data"]["activeTargets"]
        return {t["labels"]["instance"] for t in targets if t["labels"]["job"] == "engage"}

    deadline = time.monotonic() + 20
    while not (seen := engage_targets()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert seen == set(settings.prometheus_targets)


def test_tools_are_a_closed_list() -> None:
    """`devstack tools` installs only the packages it knows (chromium for the report test)."""
    assert devstack.TOOLS == {"chromium": {"chromium": "chromium"}}
    with pytest.raises(devstack.ConfigError, match="unknown tools"):
        devstack.ensure_tools(("firefox",))


def test_files_holding_the_sasl_password_are_owner_only(tmp_path: Path) -> None:
    """server.properties carries the password in its JAAS line: 0600, in a 0700 directory,
    also when an older devstack left them readable by everyone."""
    kafka = devstack.Kafka(load_settings(devstack_dir=tmp_path))
    conf = kafka.layout.conf
    conf.mkdir(parents=True)
    conf.chmod(0o755)
    kafka.server_properties.write_text("# an older devstack's copy\n")
    kafka.server_properties.chmod(0o644)
    kafka.write_config()
    password = kafka.sasl_password()
    assert password in kafka.server_properties.read_text()
    for path in (kafka.server_properties, kafka.sasl_secret_file):
        assert oct(path.stat().st_mode & 0o777) == "0o600", path
    assert oct(conf.stat().st_mode & 0o777) == "0o700"
    # A fresh directory gets the same modes from the start.
    fresh = devstack.Kafka(load_settings(devstack_dir=tmp_path / "fresh"))
    fresh.write_config()
    assert oct(fresh.server_properties.stat().st_mode & 0o777) == "0o600"
    assert oct(fresh.layout.conf.stat().st_mode & 0o777) == "0o700"
    # What `up` does for a broker already running: tighten in place, rewrite nothing.
    kafka.server_properties.chmod(0o644)
    conf.chmod(0o755)
    before = kafka.server_properties.read_text()
    kafka.protect_secrets()
    assert oct(kafka.server_properties.stat().st_mode & 0o777) == "0o600"
    assert oct(conf.stat().st_mode & 0o777) == "0o700"
    assert kafka.server_properties.read_text() == before
