"""The local stack without Docker: Kafka, Redis and Prometheus as real programs (SPEC §7).

``python -m stream devstack up|down|status`` and the Python API (:func:`ensure_up`,
:func:`stop`, :func:`status`) used by the integration tests and the demo.

Why this shape:

* The Kafka broker is Apache Kafka itself, from its Maven Central jars (``ops/kafka/pom.xml``),
  run as a single-node KRaft broker+controller; Redis and Prometheus are the Debian packages.
  Whatever is missing is installed on the spot, so a fresh CI machine needs nothing but this
  repository (``make test``).
* Every service runs detached in its own session, its pid in ``<dir>/run/<name>.pid``. A service
  is only considered *ours* when the pid is alive and its command line carries the path of this
  devstack's config/data, so a recycled pid or someone else's Redis on the same port is never
  mistaken for it (or killed by ``down``).
* Readiness is a real request (Kafka metadata with at least one broker, Redis ``PING``,
  Prometheus ``/-/ready``), polled against a monotonic deadline; nothing waits a fixed time.
* ``up`` is idempotent: running services are only probed, so a second ``up`` takes well under a
  second and never starts a second broker.

Layout of ``ENGAGE_DEVSTACK_DIR`` (default ``.devstack`` in the repository root)::

    libs/        Kafka jars + .engage-jars marker (SHA-256 of the pom); kept by ``down --wipe``
    conf/        generated server.properties and prometheus.yml
    run/         pid files
    logs/        kafka.log (log4j2), kafka.out, redis.log, prometheus.log, maven.log, apt.log
    kafka/ redis/ prometheus/   data; removed by ``down --wipe``
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import concurrent.futures
import contextlib
import fcntl
import hashlib
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Coroutine, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, TypeVar

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parents[2]
OPS_DIR = REPO_ROOT / "ops"
KAFKA_POM = OPS_DIR / "kafka" / "pom.xml"
KAFKA_LOG4J = OPS_DIR / "kafka" / "log4j2.properties"
PROMETHEUS_TEMPLATE = OPS_DIR / "prometheus" / "prometheus.yml"

SERVICES: tuple[str, ...] = ("kafka", "redis", "prometheus")
#: Programs some tests and commands need besides the services: name -> {binary: Debian package}.
#: `chromium` renders the `engage report` page headless (tests/tools/test_report.py).
TOOLS: dict[str, dict[str, str]] = {"chromium": {"chromium": "chromium"}}
JARS_MARKER = ".engage-jars"

# How long one readiness probe may take, and the pause between two probes.
PROBE_TIMEOUT_S = 2.0
POLL_INTERVAL_S = 0.1
# `down`: how long a service gets to exit after SIGTERM before SIGKILL (Kafka's controlled
# shutdown of a single node takes a few seconds).
STOP_TIMEOUT_S = 30.0
# Another `up` holding the lock may be downloading jars or running apt.
LOCK_TIMEOUT_S = 900.0
#: Most Kafka nodes `devstack up --brokers N` starts on one machine.
MAX_KAFKA_NODES = 9

T = TypeVar("T")
Report = Callable[[str], None]

Port = Annotated[int, Field(ge=1, le=65535)]
_HOST_PORT = re.compile(r"^(?P<host>[A-Za-z0-9._-]+|\[[0-9A-Fa-f:]+\]):(?P<port>\d{1,5})$")


# --------------------------------------------------------------------------------------------
# Settings and errors
# --------------------------------------------------------------------------------------------


class DevstackError(RuntimeError):
    """A problem the user has to act on; the CLI prints it as is, without a traceback."""


class ConfigError(DevstackError, ValueError):
    """An `ENGAGE_` variable has a bad value."""


class DevstackSettings(BaseSettings):
    """Where the local stack lives and which ports it uses; each field is `ENGAGE_<NAME>`.

    Kept apart from the worker's settings (stream/settings.py) so that `devstack` needs none of
    the processor's configuration, and the worker never sees ports it does not use.
    """

    model_config = SettingsConfigDict(env_prefix="ENGAGE_", extra="ignore", frozen=True)

    devstack_dir: Path = Field(
        default=Path(".devstack"),
        description="State, data, logs and jars of the stack; relative to the repository root.",
    )
    kafka_port: Port = 9092
    kafka_controller_port: Port = 9093
    kafka_sasl_port: Port = Field(
        default=9094,
        description="A second Kafka listener, SASL_PLAINTEXT with the PLAIN mechanism; its "
        "credentials are generated into the devstack dir at set-up.",
    )
    kafka_brokers: int | None = Field(
        default=None,
        ge=1,
        le=MAX_KAFKA_NODES,
        description="Kafka nodes, each a KRaft broker and controller (3 gives a replicated "
        "cluster with a 3-voter quorum). Unset: as many as the devstack dir was set up with, "
        "else 1.",
    )
    kafka_node_port_step: int = Field(
        default=100,
        ge=1,
        le=10_000,
        description="Node n of a cluster listens on the three Kafka ports plus (n-1) x this.",
    )
    redis_port: Port = 6379
    prometheus_port: Port = 9090
    prometheus_targets: Annotated[tuple[str, ...], NoDecode] = Field(
        default=("127.0.0.1:6066",),
        description="host:port of the workers' /metrics endpoints, comma-separated.",
    )
    devstack_timeout_s: float = Field(
        default=60.0, gt=0, le=3600, description="Deadline for one service to become ready."
    )

    @field_validator("prometheus_targets", mode="before")
    @classmethod
    def _split_targets(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("prometheus_targets")
    @classmethod
    def _check_targets(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("needs at least one host:port")
        for target in value:
            match = _HOST_PORT.match(target)
            if not match or not 1 <= int(match["port"]) <= 65535:
                raise ValueError(f"{target!r} is not host:port with a port in 1..65535")
        return value

    @model_validator(mode="after")
    def _distinct_ports(self) -> DevstackSettings:
        check_ports(self, self.kafka_brokers or 1)
        return self

    def kafka_node_ports(self, node: int) -> tuple[int, int, int]:
        """(plaintext, controller, SASL) ports of Kafka node `node` (1-based): node 1 has the
        configured ports, every further node the same plus a multiple of the port step."""
        shift = (node - 1) * self.kafka_node_port_step
        return (
            self.kafka_port + shift,
            self.kafka_controller_port + shift,
            self.kafka_sasl_port + shift,
        )

    @property
    def root(self) -> Path:
        """The absolute devstack directory (relative values are taken from the repo root)."""
        path = self.devstack_dir.expanduser()
        return path if path.is_absolute() else REPO_ROOT / path


def check_ports(settings: DevstackSettings, kafka_nodes: int) -> None:
    """Raise ValueError unless every port of the stack (each Kafka node's three, Redis's,
    Prometheus's) differs from the others and is a valid port."""
    ports = {
        "ENGAGE_REDIS_PORT": settings.redis_port,
        "ENGAGE_PROMETHEUS_PORT": settings.prometheus_port,
    }
    names = ("ENGAGE_KAFKA_PORT", "ENGAGE_KAFKA_CONTROLLER_PORT", "ENGAGE_KAFKA_SASL_PORT")
    for node in range(1, kafka_nodes + 1):
        for name, port in zip(names, settings.kafka_node_ports(node), strict=True):
            ports[name if node == 1 else f"{name} of node {node}"] = port
    too_high = {k: v for k, v in ports.items() if v > 65535}
    if too_high:
        listed = ", ".join(f"{k}={v}" for k, v in too_high.items())
        raise ValueError(
            f"{kafka_nodes} Kafka nodes need ports above 65535 ({listed}); lower the ports or "
            "ENGAGE_KAFKA_NODE_PORT_STEP"
        )
    if len(set(ports.values())) != len(ports):
        listed = ", ".join(f"{k}={v}" for k, v in ports.items())
        raise ValueError(f"the ports must all differ, got {listed}")


def load_settings(**overrides: Any) -> DevstackSettings:
    """Settings from the environment (plus `overrides`), or a ConfigError naming each variable."""
    try:
        return DevstackSettings(**overrides)
    except ValidationError as exc:
        lines = ["invalid devstack configuration:"]
        for err in exc.errors():
            if err["loc"]:
                name = "ENGAGE_" + "_".join(str(p) for p in err["loc"][:1]).upper()
                lines.append(f"  {name}={err['input']!r}: {err['msg']}")
            else:
                lines.append(f"  {err['msg'].removeprefix('Value error, ')}")
        raise ConfigError("\n".join(lines)) from None


@dataclass(frozen=True)
class Layout:
    """Every path of one devstack directory, derived from the settings in one place."""

    root: Path

    @property
    def libs(self) -> Path:
        return self.root / "libs"

    @property
    def conf(self) -> Path:
        return self.root / "conf"

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def data(self, service: str) -> Path:
        return self.root / service

    def pid_file(self, service: str) -> Path:
        return self.run / f"{service}.pid"

    @property
    def kafka_nodes_file(self) -> Path:
        """The node count of a Kafka cluster set up here (absent for the single node)."""
        return self.conf / "kafka-nodes"


# --------------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------------

# Popen objects of the services this Python process started: kept so that they are reaped when
# they exit (no zombies while a test session runs) and no "still running" ResourceWarning fires.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def _cmdline(pid: int) -> list[str] | None:
    """The argv of a live process, or None if it is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat[stat.rindex(")") + 2 :].startswith(("Z", "X")):
            return None
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _alive(pid: int) -> bool:
    child = _CHILDREN.get(pid)
    if child is not None and child.poll() is not None:
        return False
    return _cmdline(pid) is not None


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _write_atomic(path: Path, text: str, *, mode: int = 0o644) -> None:
    """Write via rename, so a concurrent reader never sees half a file. The file has `mode`
    from its creation on (0600 for one holding a secret: never readable by others, not even
    for a moment), whatever mode an older copy had."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        os.fchmod(fh.fileno(), mode)  # a leftover tmp file keeps its old mode otherwise
        fh.write(text)
    tmp.replace(path)


def _private_dir(path: Path) -> None:
    """A directory only its owner may list or enter (0700): where the stack keeps secrets."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)


def _port_open(port: int, host: str = "127.0.0.1", timeout: float = 0.2) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        return sock.connect_ex((host, port)) == 0


def _wait_until(
    condition: Callable[[], bool], timeout_s: float, interval_s: float = POLL_INTERVAL_S
) -> bool:
    """Poll `condition` until it holds or the monotonic deadline passes; True if it held."""
    deadline = time.monotonic() + timeout_s
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval_s)


def _tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return ""
    return "\n".join(f"    {line}" for line in text)


def _run_coroutine(factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion, also when called from inside a running event loop
    (an async test or the demo), where asyncio.run would refuse: then it runs in a thread."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(factory())
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(factory())).result()


@contextlib.contextmanager
def _lock(layout: Layout, name: str = ".lock") -> Iterator[None]:
    """Serialise `up`/`down` on one devstack dir (e.g. `make -j test demo`)."""
    layout.root.mkdir(parents=True, exist_ok=True)
    with open(layout.root / name, "w") as handle:
        if not _wait_until(lambda: _try_flock(handle.fileno()), LOCK_TIMEOUT_S, 0.2):
            raise DevstackError(f"another devstack command holds {layout.root / name}")
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _try_flock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


# --------------------------------------------------------------------------------------------
# Services
# --------------------------------------------------------------------------------------------


class Service:
    """One program of the stack: how to prepare, start, recognise and probe it."""

    #: The service's name in pid files, data dirs and `status` (a Kafka node's is its own).
    name: str
    #: File name of the executable in argv[0] (so `ls .devstack/redis` is never "ours").
    program: ClassVar[str]
    #: Executables it needs -> the Debian package providing them.
    binaries: ClassVar[dict[str, str]]

    def __init__(self, settings: DevstackSettings) -> None:
        self.settings = settings
        self.layout = Layout(settings.root)

    # -- identity ---------------------------------------------------------------------------

    @property
    def ports(self) -> tuple[int, ...]:
        raise NotImplementedError

    @property
    def address(self) -> str:
        """What clients use (bootstrap servers / URL), as returned by ensure_up()."""
        raise NotImplementedError

    def identity(self) -> str:
        """An argv element only this devstack's instance of the service has (an absolute path)."""
        raise NotImplementedError

    def port_token(self) -> str:
        """An argv element that shows which port(s) the running instance was started with."""
        raise NotImplementedError

    def config_token(self) -> str | None:
        """An argv element fingerprinting the generated configuration, or None. A running
        instance without it was started with another configuration (an older devstack): `up`
        restarts it, so a new listener or setting takes effect without a manual `down`."""
        return None

    def is_ours(self, argv: list[str] | None) -> bool:
        """Whether a process's argv is this devstack's instance of the service."""
        return bool(argv) and Path(argv[0]).name == self.program and self.identity() in argv

    # -- lifecycle --------------------------------------------------------------------------

    def prepare(self, report: Report) -> None:
        """Write configuration and initialise data before the first start."""
        _private_dir(self.layout.conf)  # the SASL password and the broker's config with it
        for directory in (self.layout.run, self.layout.logs):
            directory.mkdir(parents=True, exist_ok=True)
        self.layout.data(self.name).mkdir(parents=True, exist_ok=True)

    def command(self) -> list[str]:
        raise NotImplementedError

    @property
    def log_file(self) -> Path:
        return self.layout.logs / f"{self.name}.log"

    @property
    def stdout_file(self) -> Path:
        """Where the process's stdout/stderr go."""
        return self.log_file

    def probe(self) -> bool:
        """One readiness check, bounded by PROBE_TIMEOUT_S."""
        raise NotImplementedError

    def after_ready(self, already_running: bool, report: Report) -> None:
        """Hook run once the service answers (Prometheus reloads its config)."""

    # -- process bookkeeping ----------------------------------------------------------------

    def running_pid(self) -> int | None:
        """The pid of this devstack's instance, from the pid file or, if that was lost, /proc.

        A pid file pointing at a dead or foreign process is stale and removed.
        """
        pid_file = self.layout.pid_file(self.name)
        pid = _read_pid(pid_file)
        if pid is not None:
            if _alive(pid) and self.is_ours(_cmdline(pid)):
                return pid
            pid_file.unlink(missing_ok=True)
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and self.is_ours(_cmdline(int(entry.name))):
                pid_file.parent.mkdir(parents=True, exist_ok=True)
                _write_atomic(pid_file, f"{entry.name}\n")
                return int(entry.name)
        return None

    def check_ports_free(self) -> None:
        for port in self.ports:
            if _port_open(port):
                raise DevstackError(
                    f"{self.name}: port {port} is already in use by a process devstack did not "
                    f"start; stop it or choose other ports (ENGAGE_*_PORT)"
                )

    def spawn(self) -> int:
        """Start detached: own session (Ctrl-C in the shell does not reach it), no stdin,
        output to a log file; record the pid."""
        with open(self.stdout_file, "ab") as out:
            proc = subprocess.Popen(
                self.command(),
                cwd=self.layout.root,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
            )
        _CHILDREN[proc.pid] = proc
        _write_atomic(self.layout.pid_file(self.name), f"{proc.pid}\n")
        return proc.pid

    def failure(self, what: str) -> DevstackError:
        logs = [p for p in dict.fromkeys((self.log_file, self.stdout_file)) if p.exists()]
        tails = "".join(f"\n  last lines of {p}:\n{_tail(p)}" for p in logs)
        return DevstackError(f"{self.name}: {what}{tails}")


class Kafka(Service):
    """Apache Kafka from Maven jars: one KRaft node (broker + controller in one JVM).

    A single node (`nodes=1`, the default) is `kafka`: conf/server.properties, data in kafka/,
    logs/kafka.log. Node n of a cluster of `nodes` is `kafka-n`: conf/server-n.properties,
    data in kafka-n/, logs/kafka-n/kafka.log, its ports shifted by the port step; every node
    is a voter of the controller quorum and the internal topics are replicated (3 copies,
    2 in sync) when there are three nodes or more.
    """

    name = "kafka"
    program = "java"
    binaries: ClassVar[dict[str, str]] = {"java": "openjdk-17-jre-headless", "mvn": "maven"}

    #: The SASL listener's mechanism (PLAIN: the broker holds the users in its JAAS line, so
    #: no credential store has to be seeded before the first start).
    SASL_MECHANISM: ClassVar[str] = "PLAIN"
    SASL_USER: ClassVar[str] = "engage"

    def __init__(self, settings: DevstackSettings, *, node: int = 1, nodes: int = 1) -> None:
        super().__init__(settings)
        if not 1 <= node <= nodes:
            raise ValueError(f"node {node} of {nodes}")
        self.node = node
        self.nodes = nodes
        self.name = "kafka" if nodes == 1 else f"kafka-{node}"

    @property
    def clustered(self) -> bool:
        """Part of a multi-node cluster (the single node keeps the original layout)."""
        return self.nodes > 1

    @property
    def ports(self) -> tuple[int, ...]:
        return self.settings.kafka_node_ports(self.node)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.ports[0]}"

    @property
    def sasl_address(self) -> str:
        return f"127.0.0.1:{self.ports[2]}"

    @property
    def sasl_secret_file(self) -> Path:
        return self.layout.conf / "kafka-sasl-password"

    def sasl_password(self) -> str:
        """The SASL user's password: generated once at set-up into the devstack dir (mode 0600
        in a 0700 directory, never in the repository), the same on every later start."""
        path = self.sasl_secret_file
        if path.exists():
            return path.read_text(encoding="utf-8").strip()
        import secrets

        _private_dir(path.parent)
        password = secrets.token_urlsafe(24)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(password + "\n")
        return password

    def client_info(self) -> dict[str, str]:
        """What a SASL client needs (ensure_up returns it next to the addresses)."""
        return {
            "kafka_sasl": self.sasl_address,
            "kafka_sasl_mechanism": self.SASL_MECHANISM,
            "kafka_sasl_username": self.SASL_USER,
            "kafka_sasl_password": self.sasl_password(),
        }

    @property
    def server_properties(self) -> Path:
        if self.clustered:
            return self.layout.conf / f"server-{self.node}.properties"
        return self.layout.conf / "server.properties"

    @property
    def logs_dir(self) -> Path:
        """Where log4j writes this node's kafka.log (a directory per node in a cluster)."""
        return self.layout.logs / self.name if self.clustered else self.layout.logs

    @property
    def log_file(self) -> Path:
        return self.logs_dir / "kafka.log"

    def identity(self) -> str:
        return str(self.server_properties)

    def port_token(self) -> str:
        # The plaintext and controller ports only: older devstacks recognise the broker by
        # this token, so it must not change when a listener is added (see config_token).
        port, cport, _ = self.ports
        return f"-Dengage.devstack.ports={port},{cport}"

    def config_token(self) -> str:
        digest = hashlib.sha256(self.render_properties().encode()).hexdigest()[:16]
        return f"-Dengage.devstack.config={digest}"

    @property
    def stdout_file(self) -> Path:
        return self.layout.logs / f"{self.name}.out"

    def quorum_voters(self) -> str:
        """`controller.quorum.voters`: every node of the cluster, id@host:controller-port."""
        return ",".join(
            f"{n}@127.0.0.1:{self.settings.kafka_node_ports(n)[1]}"
            for n in range(1, self.nodes + 1)
        )

    def replication_properties(self) -> dict[str, str]:
        """A cluster's durability defaults: internal topics (consumer offsets, transactions)
        and topics created without an explicit factor get 3 copies (at most one per node),
        and a write with acks=all needs 2 of them in sync."""
        copies = str(min(3, self.nodes))
        in_sync = str(2 if self.nodes >= 3 else 1)
        return {
            "offsets.topic.replication.factor": copies,
            "transaction.state.log.replication.factor": copies,
            "transaction.state.log.min.isr": in_sync,
            "default.replication.factor": copies,
            "min.insync.replicas": in_sync,
        }

    def render_properties(self) -> str:
        port, cport, sport = self.ports
        user, password = self.SASL_USER, self.sasl_password()
        jaas = (
            "org.apache.kafka.common.security.plain.PlainLoginModule required "
            f'username="{user}" password="{password}" user_{user}="{password}";'
        )
        props = {
            "process.roles": "broker,controller",
            "node.id": str(self.node),
            "controller.quorum.voters": self.quorum_voters(),
            "listeners": (
                f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{cport},"
                f"SASL_PLAINTEXT://127.0.0.1:{sport}"
            ),
            "advertised.listeners": (
                f"PLAINTEXT://127.0.0.1:{port},SASL_PLAINTEXT://127.0.0.1:{sport}"
            ),
            "controller.listener.names": "CONTROLLER",
            "listener.security.protocol.map": (
                "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT"
            ),
            "inter.broker.listener.name": "PLAINTEXT",
            # SPEC §7: a SASL listener to prove every client honours the security settings.
            "sasl.enabled.mechanisms": self.SASL_MECHANISM,
            "listener.name.sasl_plaintext.sasl.enabled.mechanisms": self.SASL_MECHANISM,
            "listener.name.sasl_plaintext.plain.sasl.jaas.config": jaas,
            "log.dirs": str(self.layout.data(self.name)),
            "num.partitions": "1",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "4",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "4",
            "group.initial.rebalance.delay.ms": "0",
            # The processor creates its topics with the right partition count itself.
            "auto.create.topics.enable": "false",
        }
        if self.clustered:  # the single node's file stays as it was: no restart on upgrade
            props.update(self.replication_properties())
        header = (
            "# Generated by `python -m stream devstack up`; "
            "edit stream/tools/devstack.py instead.\n"
        )
        return header + "".join(f"{key}={value}\n" for key, value in props.items())

    def _java(self) -> list[str]:
        java = shutil.which("java") or "java"
        return [
            java,
            f"-Dlog4j2.configurationFile={KAFKA_LOG4J}",
            f"-Dkafka.logs.dir={self.logs_dir}",
            "-cp",
            f"{self.layout.libs}/*",
        ]

    def write_config(self) -> None:
        """server.properties, which holds the SASL password (its JAAS line): 0600 in the
        0700 conf directory, also when an older devstack left them readable by others."""
        _private_dir(self.layout.conf)
        _write_atomic(self.server_properties, self.render_properties(), mode=0o600)
        self.protect_secrets()

    def protect_secrets(self) -> None:
        """Owner-only modes on what holds the password, as it is (no rewrite, no restart): a
        running broker's files from an older devstack are tightened by the next `up`."""
        if self.layout.conf.is_dir():
            self.layout.conf.chmod(0o700)
        for path in (self.server_properties, self.sasl_secret_file):
            if path.exists():
                path.chmod(0o600)

    def cluster_id(self) -> str:
        """The id to format this node's storage with: the one the cluster's other nodes were
        formatted with (all nodes of a cluster must share it), or a new one."""
        if self.clustered:
            for n in range(1, self.nodes + 1):
                meta = self.layout.data(f"kafka-{n}") / "meta.properties"
                with contextlib.suppress(OSError):
                    for line in meta.read_text().splitlines():
                        if line.startswith("cluster.id="):
                            return line.split("=", 1)[1].strip()
        return _kafka_uuid()

    def prepare(self, report: Report) -> None:
        super().prepare(report)
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        self.write_config()
        if (self.layout.data(self.name) / "meta.properties").exists():
            return
        started = time.monotonic()
        cluster_id = self.cluster_id()
        cmd = [
            *self._java(),
            "kafka.tools.StorageTool",
            "format",
            "-t",
            cluster_id,
            "-c",
            str(self.server_properties),
        ]
        result = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if result.returncode != 0:
            raise DevstackError(
                f"kafka: formatting the storage failed:\n{result.stdout}{result.stderr}"
            )
        report(
            f"{self.name:<11} formatted {self.layout.data(self.name)} in "
            f"{time.monotonic() - started:.1f}s (cluster id {cluster_id})"
        )

    def command(self) -> list[str]:
        java, *rest = self._java()
        # Three JVMs share one machine in a cluster: a smaller heap each.
        heap = ["-Xms128m", "-Xmx512m"] if self.clustered else ["-Xms256m", "-Xmx1g"]
        return [
            java,
            *heap,
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            self.port_token(),
            self.config_token(),
            *rest,
            "kafka.Kafka",
            str(self.server_properties),
        ]

    def probe(self) -> bool:
        """Ready once the cluster's metadata, asked of this node, lists this node as a broker
        (for a cluster: the quorum has formed and the node has registered)."""
        if not _port_open(self.ports[0]):
            return False
        try:
            return self.node in _run_coroutine(lambda: _kafka_broker_ids(self.address))
        except Exception:
            return False


def _kafka_uuid() -> str:
    """A Kafka cluster id, as `kafka-storage random-uuid` makes it (base64url of 16 random
    bytes, no padding, never starting with '-'), without paying for a JVM start."""
    while True:
        value = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not value.startswith("-"):
            return value


class _Quiet(logging.Filter):
    """Drops aiokafka's connection errors, which are expected while the broker starts."""

    def filter(self, record: logging.LogRecord) -> bool:
        return False


async def _kafka_broker_ids(bootstrap: str) -> set[int]:
    """A real metadata request: the node ids of the brokers the cluster reports."""
    from aiokafka.client import AIOKafkaClient

    quiet = _Quiet()
    loggers = [logging.getLogger(f"aiokafka.{name}") for name in ("client", "conn", "cluster")]
    for logger in loggers:
        logger.addFilter(quiet)
    client = AIOKafkaClient(
        bootstrap_servers=bootstrap,
        client_id="engage-devstack",
        request_timeout_ms=int(PROBE_TIMEOUT_S * 1000),
        retry_backoff_ms=50,
    )
    try:
        await asyncio.wait_for(client.bootstrap(), PROBE_TIMEOUT_S)
        return {broker.nodeId for broker in client.cluster.brokers()}
    finally:
        with contextlib.suppress(Exception):
            await client.close()
        for logger in loggers:
            logger.removeFilter(quiet)


class Redis(Service):
    """Debian's redis-server, in-memory only (no RDB/AOF): a dev cache, not a database."""

    name = "redis"
    program = "redis-server"
    binaries: ClassVar[dict[str, str]] = {"redis-server": "redis-server"}

    @property
    def ports(self) -> tuple[int, ...]:
        return (self.settings.redis_port,)

    @property
    def address(self) -> str:
        return f"redis://127.0.0.1:{self.settings.redis_port}/0"

    def identity(self) -> str:
        return str(self.layout.data("redis"))

    def port_token(self) -> str:
        return str(self.settings.redis_port)

    @property
    def stdout_file(self) -> Path:
        return self.layout.logs / "redis.out"

    def command(self) -> list[str]:
        # --set-proc-title no keeps argv intact, so running_pid() can recognise the process.
        return [
            shutil.which("redis-server") or "redis-server",
            "--port", str(self.settings.redis_port),
            "--bind", "127.0.0.1",
            "--dir", self.identity(),
            "--daemonize", "no",
            "--save", "",
            "--appendonly", "no",
            "--set-proc-title", "no",
            "--logfile", str(self.log_file),
        ]  # fmt: skip

    def probe(self) -> bool:
        import redis

        client = redis.Redis(
            host="127.0.0.1",
            port=self.settings.redis_port,
            socket_timeout=PROBE_TIMEOUT_S,
            socket_connect_timeout=PROBE_TIMEOUT_S,
        )
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()


class Prometheus(Service):
    """Debian's Prometheus, scraping the workers; config generated from ops/prometheus."""

    name = "prometheus"
    program = "prometheus"
    binaries: ClassVar[dict[str, str]] = {"prometheus": "prometheus", "promtool": "prometheus"}

    @property
    def ports(self) -> tuple[int, ...]:
        return (self.settings.prometheus_port,)

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.settings.prometheus_port}"

    @property
    def config_file(self) -> Path:
        return self.layout.conf / "prometheus.yml"

    def identity(self) -> str:
        return f"--config.file={self.config_file}"

    def port_token(self) -> str:
        return f"--web.listen-address=127.0.0.1:{self.settings.prometheus_port}"

    def render_config(self) -> str:
        return render_prometheus_config(self.settings)

    def prepare(self, report: Report) -> None:
        super().prepare(report)
        _write_atomic(self.config_file, self.render_config())

    def command(self) -> list[str]:
        return [
            shutil.which("prometheus") or "prometheus",
            self.identity(),
            f"--storage.tsdb.path={self.layout.data('prometheus')}",
            "--storage.tsdb.retention.time=7d",
            self.port_token(),
            "--web.enable-lifecycle",
        ]

    def probe(self) -> bool:
        try:
            return _http(f"{self.address}/-/ready", timeout=PROBE_TIMEOUT_S) == 200
        except OSError:
            return False

    def after_ready(self, already_running: bool, report: Report) -> None:
        """A running Prometheus re-reads the config (targets may have changed) and its rules."""
        if not already_running:
            return
        _write_atomic(self.config_file, self.render_config())
        try:
            code = _http(f"{self.address}/-/reload", method="POST", timeout=10.0)
        except urllib.error.HTTPError as exc:
            body = exc.read().decode(errors="replace").strip()
            raise DevstackError(
                f"prometheus: reloading {self.config_file} failed: {body}"
            ) from None
        except OSError as exc:
            raise DevstackError(f"prometheus: reloading the config failed: {exc}") from None
        if code != 200:
            raise DevstackError(f"prometheus: reloading the config answered HTTP {code}")


def _http(url: str, *, method: str = "GET", timeout: float) -> int:
    """Status of a request to a local service, ignoring any http_proxy in the environment."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(urllib.request.Request(url, method=method), timeout=timeout) as response:
        return int(response.status)


def render_prometheus_config(settings: DevstackSettings) -> str:
    """The local Prometheus config: ops/prometheus/prometheus.yml with the `engage` targets from
    the settings, the self-scrape on our port, and rule_files made absolute (the generated file
    lives under the devstack dir, but the rules stay in the repository)."""
    config: dict[str, Any] = yaml.safe_load(PROMETHEUS_TEMPLATE.read_text()) or {}
    base = PROMETHEUS_TEMPLATE.parent
    config["rule_files"] = [
        pattern if Path(pattern).is_absolute() else str(base / pattern)
        for pattern in config.get("rule_files") or []
    ]
    jobs = {job.get("job_name"): job for job in config.get("scrape_configs") or []}
    if "engage" not in jobs:
        raise DevstackError(f"{PROMETHEUS_TEMPLATE} has no scrape job named 'engage'")
    jobs["engage"]["static_configs"] = [{"targets": list(settings.prometheus_targets)}]
    if "prometheus" in jobs:
        jobs["prometheus"]["static_configs"] = [
            {"targets": [f"127.0.0.1:{settings.prometheus_port}"]}
        ]
    header = (
        f"# Generated from {PROMETHEUS_TEMPLATE} by `python -m stream devstack up`;"
        " edit that file instead.\n"
    )
    return header + yaml.safe_dump(config, sort_keys=False)


SERVICE_CLASSES: dict[str, type[Service]] = {
    "kafka": Kafka,
    "redis": Redis,
    "prometheus": Prometheus,
}


def recorded_kafka_nodes(layout: Layout) -> int | None:
    """The node count a devstack dir's Kafka cluster was set up with (`up --brokers N`, N > 1),
    or None for the single node. Kept until `down --only kafka --wipe`."""
    try:
        return int(layout.kafka_nodes_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def kafka_node_count(settings: DevstackSettings) -> int:
    """How many Kafka nodes this devstack runs: ENGAGE_KAFKA_BROKERS / `--brokers`, else what
    the dir was set up with, else 1."""
    return settings.kafka_brokers or recorded_kafka_nodes(Layout(settings.root)) or 1


def kafka_nodes(settings: DevstackSettings, nodes: int | None = None) -> list[Kafka]:
    """The Kafka node services of a cluster of `nodes` (default: `kafka_node_count`)."""
    count = nodes or kafka_node_count(settings)
    try:
        check_ports(settings, count)
    except ValueError as exc:
        raise ConfigError(f"invalid devstack configuration: {exc}") from None
    return [Kafka(settings, node=n, nodes=count) for n in range(1, count + 1)]


def _other_kafka_nodes(settings: DevstackSettings, nodes: int) -> list[Kafka]:
    """Nodes of this dir that belong to another cluster size than `nodes` and are running (a
    single node while a cluster is asked for, or the reverse): `down` stops them too."""
    layout = Layout(settings.root)
    others: list[Kafka] = []
    if nodes > 1 and (layout.conf / "server.properties").exists():
        others.append(Kafka(settings))
    indexes = sorted(
        int(m.group(1))
        for path in layout.conf.glob("server-*.properties")
        if (m := re.fullmatch(r"server-(\d+)\.properties", path.name))
    )
    others += [
        Kafka(settings, node=n, nodes=indexes[-1])
        for n in indexes
        if (nodes == 1 or n > nodes) and n <= MAX_KAFKA_NODES
    ]
    return [node for node in others if node.running_pid() is not None]


def _select(
    names: Iterable[str], settings: DevstackSettings, *, with_others: bool = False
) -> list[Service]:
    """Service objects in start order (kafka nodes, redis, prometheus), whatever order was
    asked. `kafka` stands for every node; `with_others` adds running nodes of another cluster
    size (for `down` and `status`)."""
    wanted = set(names)
    unknown = wanted - set(SERVICES)
    if unknown:
        raise DevstackError(
            f"unknown service(s) {', '.join(sorted(unknown))}; choose from {', '.join(SERVICES)}"
        )
    out: list[Service] = []
    for name in SERVICES:
        if name not in wanted:
            continue
        if name == "kafka":
            nodes = kafka_nodes(settings)
            out.extend(nodes)
            if with_others:
                out.extend(_other_kafka_nodes(settings, len(nodes)))
        else:
            out.append(SERVICE_CLASSES[name](settings))
    return out


def _check_kafka_shape(settings: DevstackSettings, selected: list[Service]) -> None:
    """Before `up`: refuse a cluster size other than the one the dir's cluster data was made
    for, and a node of another size still running; record the size of a new cluster."""
    nodes = [s for s in selected if isinstance(s, Kafka)]
    if not nodes:
        return
    count = nodes[0].nodes
    layout = Layout(settings.root)
    recorded = recorded_kafka_nodes(layout)
    if count > 1 and recorded is not None and recorded != count:
        raise ConfigError(
            f"{settings.root} holds the data of a {recorded}-node Kafka cluster; use "
            f"--brokers {recorded}, or run `python -m stream devstack down --only kafka --wipe` "
            f"first to start a {count}-node one"
        )
    running = _other_kafka_nodes(settings, count)
    if running:
        listed = ", ".join(f"{n.name} (pid {n.running_pid()})" for n in running)
        raise DevstackError(
            f"Kafka from {settings.root} runs with another number of nodes ({listed}); run "
            "`python -m stream devstack down --only kafka` first"
        )
    if count > 1 and recorded is None:
        _private_dir(layout.conf)
        _write_atomic(layout.kafka_nodes_file, f"{count}\n", mode=0o600)


# --------------------------------------------------------------------------------------------
# Installation
# --------------------------------------------------------------------------------------------


def _pom_digest() -> str:
    return hashlib.sha256(KAFKA_POM.read_bytes()).hexdigest()


def _kafka_version() -> str:
    match = re.search(r"<kafka\.version>([^<]+)</kafka\.version>", KAFKA_POM.read_text())
    return match.group(1) if match else "?"


def jars_current(layout: Layout) -> bool:
    """True when libs/ holds the jars of the current pom (the marker records its SHA-256)."""
    marker = layout.libs / JARS_MARKER
    try:
        return marker.read_text().split()[0] == _pom_digest()
    except (OSError, IndexError):
        return False


class _JarDownload:
    """`mvn dependency:copy-dependencies` into a scratch dir, swapped in when complete, so an
    interrupted download never leaves a half-filled libs/ that looks usable."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.scratch = layout.root / "libs.download"
        self.log = layout.logs / "maven.log"
        self.started = time.monotonic()
        shutil.rmtree(self.scratch, ignore_errors=True)
        layout.logs.mkdir(parents=True, exist_ok=True)
        cmd = [
            shutil.which("mvn") or "mvn",
            "-q",
            "-B",
            "-Dstyle.color=never",
            "-f",
            str(KAFKA_POM),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={self.scratch}",
            "-DincludeScope=runtime",
        ]
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
            )

    def finish(self, report: Report) -> None:
        if self.proc.wait() != 0 or not any(self.scratch.glob("kafka_2.13-*.jar")):
            raise DevstackError(
                f"downloading the Kafka jars with Maven failed (exit {self.proc.returncode});"
                f" see {self.log}:\n{_tail(self.log)}"
            )
        (self.scratch / JARS_MARKER).write_text(
            f"{_pom_digest()}\nkafka {_kafka_version()} from {KAFKA_POM}\n"
        )
        shutil.rmtree(self.layout.libs, ignore_errors=True)
        self.scratch.rename(self.layout.libs)
        size = sum(p.stat().st_size for p in self.layout.libs.glob("*.jar")) / 1e6
        report(
            f"kafka       downloaded Kafka {_kafka_version()} jars ({size:.0f} MB) in "
            f"{time.monotonic() - self.started:.1f}s"
        )


def _can_sudo() -> bool:
    """Whether sudo works without a password prompt (CI has no one to type it)."""
    if shutil.which("sudo") is None:
        return False
    probe = subprocess.run(["sudo", "-n", "true"], capture_output=True, stdin=subprocess.DEVNULL)
    return probe.returncode == 0


def _apt_install(packages: Sequence[str], layout: Layout, report: Report) -> None:
    """Install Debian packages non-interactively (only called for missing programs)."""
    prefix: list[str] = []
    if os.geteuid() != 0:
        sudo_ok = _can_sudo()
        if sudo_ok:
            prefix = ["sudo", "-n"]
        else:
            raise DevstackError(
                f"missing programs; install them with: sudo apt-get install -y {' '.join(packages)}"
            )
    if not shutil.which("apt-get"):
        raise DevstackError(f"no apt-get here; install {' '.join(packages)} by hand")
    started = time.monotonic()
    log = layout.logs / "apt.log"
    layout.logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    wait_lock = ["-o", "DPkg::Lock::Timeout=300"]
    steps = [
        [*prefix, "apt-get", *wait_lock, "update", "-qq"],
        [*prefix, "apt-get", *wait_lock, "install", "-y", "-qq", "--no-install-recommends",
         *packages],
    ]  # fmt: skip
    with open(log, "ab") as out:
        for cmd in steps:
            out.write(f"$ {' '.join(cmd)}\n".encode())
            out.flush()
            code = subprocess.run(
                cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env
            ).returncode
            if code != 0:
                raise DevstackError(
                    f"`{' '.join(cmd)}` failed (exit {code}); see {log}:\n{_tail(log)}"
                )
    report(f"apt         installed {' '.join(packages)} in {time.monotonic() - started:.1f}s")


def install(services: Sequence[Service], report: Report) -> None:
    """Install whatever the selected services lack: Debian packages, then the Kafka jars.

    When Maven and Java are already there, the jar download runs while apt works.
    """
    layout = Layout(services[0].settings.root) if services else None
    if layout is None:
        return
    needs_jars = any(isinstance(s, Kafka) for s in services) and not jars_current(layout)
    missing: dict[str, str] = {}
    for service in services:
        for binary, package in service.binaries.items():
            if binary == "mvn" and not needs_jars:
                continue
            if shutil.which(binary) is None:
                missing[binary] = package
    download = None
    if needs_jars and "mvn" not in missing and "java" not in missing:
        download = _JarDownload(layout)
    try:
        if missing:
            _apt_install(sorted(set(missing.values())), layout, report)
            still = [b for b in missing if shutil.which(b) is None]
            if still:
                raise DevstackError(f"still missing after apt-get install: {', '.join(still)}")
        if needs_jars and download is None:
            download = _JarDownload(layout)
    except BaseException:
        if download is not None:
            download.proc.kill()
            download.proc.wait()
        raise
    if download is not None:
        download.finish(report)


def ensure_tools(
    names: Iterable[str],
    *,
    settings: DevstackSettings | None = None,
    report: Report | None = None,
) -> dict[str, str]:
    """Install the Debian packages of the named tools (TOOLS) when their program is missing
    (`apt-get update` first), and return each program's path. A no-op when all are there."""
    unknown = [n for n in names if n not in TOOLS]
    if unknown:
        raise ConfigError(f"unknown tools {unknown}; expected some of {sorted(TOOLS)}")
    binaries = {b: p for n in names for b, p in TOOLS[n].items()}
    missing = {b: p for b, p in binaries.items() if shutil.which(b) is None}
    if missing:
        layout = Layout((settings or load_settings()).root)
        with _lock(layout, ".tools.lock"):  # not the services' lock: `up` need not wait for apt
            missing = {b: p for b, p in missing.items() if shutil.which(b) is None}
            if missing:
                _apt_install(sorted(set(missing.values())), layout, report or _null_report)
        still = [b for b in missing if shutil.which(b) is None]
        if still:
            raise DevstackError(f"still missing after apt-get install: {', '.join(still)}")
    return {b: str(shutil.which(b)) for b in binaries}


# --------------------------------------------------------------------------------------------
# Up / down / status
# --------------------------------------------------------------------------------------------


@dataclass
class ServiceState:
    """What `status` knows about one service."""

    name: str
    address: str
    pid: int | None
    ready: bool

    @property
    def label(self) -> str:
        if self.pid is None:
            return "down"
        return "up" if self.ready else "not ready"


def _null_report(_: str) -> None:
    """Default for the Python API: silent (the CLI passes print)."""


def ensure_up(
    services: Iterable[str] = SERVICES,
    *,
    settings: DevstackSettings | None = None,
    report: Report | None = None,
) -> dict[str, str]:
    """Install and start what is missing, wait until every service answers, return addresses.

    Idempotent: services already running are only probed (and Prometheus reloaded), so calling
    it again is fast and never starts a second instance.
    Returns e.g. ``{"kafka": "127.0.0.1:9092", "redis": "redis://127.0.0.1:6379/0",
    "prometheus": "http://127.0.0.1:9090"}`` for the requested services.
    """
    settings = settings or load_settings()
    say = report or _null_report
    selected = _select(services, settings)
    if not selected:
        return {}
    total = time.monotonic()
    with _lock(Layout(settings.root)):
        _check_kafka_shape(settings, selected)
        running: dict[str, int] = {}
        for service in selected:
            pid = service.running_pid()
            if pid is not None:
                argv = _cmdline(pid) or []
                if service.port_token() not in argv:
                    raise DevstackError(
                        f"{service.name} from {settings.root} is running (pid {pid}) with other "
                        f"ports than the settings ask for; run `python -m stream devstack down` "
                        "first"
                    )
                token = service.config_token()
                if token is not None and token not in argv:
                    say(f"{service.name:<11} configuration changed: restarting (pid {pid})")
                    _stop_pid(pid)
                    service.layout.pid_file(service.name).unlink(missing_ok=True)
                    continue
                running[service.name] = pid
        for service in selected:
            if isinstance(service, Kafka):
                service.protect_secrets()
        to_start = [s for s in selected if s.name not in running]
        if to_start:
            install(to_start, say)
        started_at: dict[str, float] = {}
        for service in to_start:
            service.check_ports_free()
            started_at[service.name] = time.monotonic()
            service.prepare(say)
            running[service.name] = service.spawn()
        _wait_ready(selected, running, started_at, settings.devstack_timeout_s, say)
    say(f"stack ready in {time.monotonic() - total:.1f}s")
    return addresses(selected)


def addresses(selected: Sequence[Service]) -> dict[str, str]:
    """What clients need: each service's address; for Kafka the bootstrap list of all nodes
    (`kafka`, `kafka_sasl`), the SASL credentials and the number of brokers."""
    out = {s.name: s.address for s in selected if not isinstance(s, Kafka)}
    nodes = [s for s in selected if isinstance(s, Kafka)]
    if nodes:
        out["kafka"] = ",".join(node.address for node in nodes)
        out.update(nodes[0].client_info())
        out["kafka_sasl"] = ",".join(node.sasl_address for node in nodes)
        out["kafka_brokers"] = str(len(nodes))
    return out


def _wait_ready(
    services: list[Service],
    pids: dict[str, int],
    started_at: dict[str, float],
    timeout_s: float,
    say: Report,
) -> None:
    """Poll every service until it answers; a service whose process dies or that misses the
    deadline is killed (so the next `up` starts clean) and reported with its log tail."""
    pending = {service.name: service for service in services}
    deadline = time.monotonic() + timeout_s
    while pending:
        for name, service in list(pending.items()):
            pid = pids[name]
            if not _alive(pid):
                _stop_pid(pid)
                service.layout.pid_file(name).unlink(missing_ok=True)
                raise service.failure(f"exited during start-up (pid {pid})")
            probed_at = time.monotonic()
            if service.probe():
                del pending[name]
                fresh = name in started_at
                service.after_ready(not fresh, say)
                if fresh:
                    how = f"started in {time.monotonic() - started_at[name]:.1f}s"
                else:
                    how = f"already running, checked in {time.monotonic() - probed_at:.2f}s"
                say(f"{name:<11} {service.address:<26} {how} (pid {pid})")
        if pending and time.monotonic() >= deadline:
            for name, service in pending.items():
                if name in started_at:
                    _stop_pid(pids[name])
                    service.layout.pid_file(name).unlink(missing_ok=True)
            first = next(iter(pending.values()))
            raise first.failure(f"not ready after {timeout_s:.0f}s (ENGAGE_DEVSTACK_TIMEOUT_S)")
        if pending:
            time.sleep(POLL_INTERVAL_S)


def _stop_pid(pid: int, timeout_s: float = STOP_TIMEOUT_S) -> bool:
    """SIGTERM the process group (Kafka's JVM, any helper children), wait with a deadline,
    then SIGKILL. True if it needed SIGKILL."""
    return _stop_pids([pid], timeout_s)[pid]


def _signal_group(pid: int, sig: signal.Signals) -> None:
    """Signal a service's process group (or only the process if it leads none)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        # Our services lead their own session; never signal a group we did not create.
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)


def _gone(pid: int) -> bool:
    child = _CHILDREN.get(pid)
    if child is not None:
        return child.poll() is not None
    return _cmdline(pid) is None


def _stop_pids(pids: Sequence[int], timeout_s: float = STOP_TIMEOUT_S) -> dict[int, bool]:
    """`_stop_pid` for several processes at once (a cluster's nodes): SIGTERM all, wait for
    all with one deadline, SIGKILL those left. Maps each pid to whether it needed SIGKILL."""
    for pid in pids:
        _signal_group(pid, signal.SIGTERM)
    _wait_until(lambda: all(_gone(pid) for pid in pids), timeout_s)
    killed = {pid: not _gone(pid) for pid in pids}
    for pid in pids:
        if killed[pid]:
            _signal_group(pid, signal.SIGKILL)
    _wait_until(lambda: all(_gone(pid) for pid in pids), 10.0)
    for pid in pids:
        _CHILDREN.pop(pid, None)
    return killed


def stop(
    services: Iterable[str] = SERVICES,
    *,
    wipe: bool = False,
    settings: DevstackSettings | None = None,
    report: Report | None = None,
) -> None:
    """Stop the services this devstack started (never a foreign process on the same port);
    with `wipe`, also delete their data, logs and generated config (the jars stay)."""
    settings = settings or load_settings()
    say = report or _null_report
    wanted = set(services)
    selected = _select(wanted, settings, with_others=True)
    layout = Layout(settings.root)
    with _lock(layout):
        # The Kafka nodes of a cluster stop together: stopped one by one, the last ones would
        # wait for a controller quorum that is already gone.
        groups: list[list[Service]] = [[s for s in selected if isinstance(s, Kafka)]]
        groups += [[s] for s in selected if not isinstance(s, Kafka)]
        for group in reversed([g for g in groups if g]):
            pids = {service.name: service.running_pid() for service in group}
            started = time.monotonic()
            killed = _stop_pids([pid for pid in pids.values() if pid is not None])
            for service in group:
                pid = pids[service.name]
                if pid is None:
                    say(f"{service.name:<11} not running")
                else:
                    how = "killed after SIGTERM timed out" if killed[pid] else "stopped"
                    took = time.monotonic() - started
                    say(f"{service.name:<11} {how} in {took:.1f}s (pid {pid})")
                service.layout.pid_file(service.name).unlink(missing_ok=True)
                if wipe:
                    shutil.rmtree(layout.data(service.name), ignore_errors=True)
                    if isinstance(service, Kafka) and service.clustered:
                        shutil.rmtree(service.logs_dir, ignore_errors=True)
        if wipe:
            names = [service.name for service in selected]
            if "kafka" in wanted:
                # Every node's data, also of nodes not running (another cluster size).
                for path in layout.root.glob("kafka-[0-9]*"):
                    shutil.rmtree(path, ignore_errors=True)
                layout.kafka_nodes_file.unlink(missing_ok=True)
            if wanted == set(SERVICES):
                for path in (layout.logs, layout.conf, layout.run):
                    shutil.rmtree(path, ignore_errors=True)
            say(f"wiped the data of {', '.join(names)} in {layout.root} (jars kept)")


def stop_node(service: Service, *, kill: bool = False) -> int | None:
    """Stop one process of the stack, e.g. one node of a Kafka cluster in a failover
    experiment: SIGTERM (a Kafka node's controlled shutdown, leaders moved first) or, with
    `kill`, SIGKILL (no shutdown code runs, as in a crash). Returns the pid stopped, or None
    when it was not running; `ensure_up` starts it again."""
    pid = service.running_pid()
    if pid is None:
        return None
    if kill:
        _signal_group(pid, signal.SIGKILL)
        _wait_until(lambda: _gone(pid), 10.0)
        _CHILDREN.pop(pid, None)
    else:
        _stop_pids([pid])
    service.layout.pid_file(service.name).unlink(missing_ok=True)
    return pid


def status(
    services: Iterable[str] = SERVICES, *, settings: DevstackSettings | None = None
) -> dict[str, ServiceState]:
    """Each service's pid (if this devstack's instance runs) and whether it answers now."""
    settings = settings or load_settings()
    states: dict[str, ServiceState] = {}
    for service in _select(services, settings, with_others=True):
        pid = service.running_pid()
        ready = pid is not None and service.probe()
        states[service.name] = ServiceState(service.name, service.address, pid, ready)
    return states


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def _services_arg(value: str) -> tuple[str, ...]:
    names = tuple(part.strip() for part in value.split(",") if part.strip())
    unknown = [n for n in names if n not in SERVICES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"expected a comma-separated subset of {','.join(SERVICES)}, got {value!r}"
        )
    return names


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="engage devstack",
        description="Kafka (KRaft), Redis and Prometheus as local processes, no Docker needed. "
        "Settings: ENGAGE_DEVSTACK_DIR, ENGAGE_KAFKA_PORT, ENGAGE_KAFKA_CONTROLLER_PORT, "
        "ENGAGE_KAFKA_SASL_PORT, ENGAGE_KAFKA_BROKERS, ENGAGE_KAFKA_NODE_PORT_STEP, "
        "ENGAGE_REDIS_PORT, ENGAGE_PROMETHEUS_PORT, ENGAGE_PROMETHEUS_TARGETS, "
        "ENGAGE_DEVSTACK_TIMEOUT_S.",
    )
    sub = parser.add_subparsers(dest="action", required=True)
    only = {
        "type": _services_arg,
        "default": SERVICES,
        "metavar": "LIST",
        "help": "comma-separated subset of kafka,redis,prometheus",
    }
    up = sub.add_parser("up", help="install what is missing, start what is not running")
    up.add_argument("--only", **only)
    up.add_argument(
        "--brokers", type=int, default=None, metavar="N",
        help=f"Kafka nodes, 1-{MAX_KAFKA_NODES} (ENGAGE_KAFKA_BROKERS; default: as the dir "
        "was set up, else 1); 3 gives a replicated cluster",
    )  # fmt: skip
    down = sub.add_parser("down", help="stop the services (data is kept)")
    down.add_argument("--only", **only)
    down.add_argument("--wipe", action="store_true", help="also delete data, logs and config")
    st = sub.add_parser("status", help="show each service; exit 0 only if all are up")
    st.add_argument("--only", **only)
    tools = sub.add_parser(
        "tools", help="install programs the tests need besides the services, when missing"
    )
    tools.add_argument(
        "names", nargs="*", default=sorted(TOOLS), metavar="TOOL",
        help=f"some of {', '.join(sorted(TOOLS))} (default: all)",
    )  # fmt: skip
    return parser


def main(argv: list[str]) -> int:
    """`engage devstack up|down|status`: 0 on success, 1 on failure, 2 on bad configuration."""
    args = _parser().parse_args(argv)

    def say(line: str) -> None:
        print(line, flush=True)

    try:
        brokers = getattr(args, "brokers", None)
        settings = load_settings(**({} if brokers is None else {"kafka_brokers": brokers}))
        if args.action == "up":
            ensure_up(args.only, settings=settings, report=say)
            return 0
        if args.action == "down":
            stop(args.only, wipe=args.wipe, settings=settings, report=say)
            return 0
        if args.action == "tools":
            for binary, path in ensure_tools(args.names, settings=settings, report=say).items():
                say(f"{binary:<11} {path}")
            return 0
        states = status(args.only, settings=settings)
        for state in states.values():
            pid = f"pid {state.pid}" if state.pid is not None else ""
            say(f"{state.name:<11} {state.label:<10} {state.address:<26} {pid}".rstrip())
        return 0 if all(state.ready for state in states.values()) else 1
    except ConfigError as exc:
        print(f"engage devstack: {exc}", file=sys.stderr)
        return 2
    except DevstackError as exc:
        print(f"engage devstack: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("engage devstack: interrupted", file=sys.stderr)
        return 130
