"""Worker configuration from `ENGAGE_` environment variables (SPEC §7).

Everything a deployment changes is here, validated at start-up: a bad value stops the worker
with one readable line per problem instead of a traceback deep inside Faust.
"""

from __future__ import annotations

import sys
from functools import cached_property
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas.events import EVENT_TYPES
from stream import topic_names


class Settings(BaseSettings):
    """Worker settings; each field is `ENGAGE_<NAME>` in the environment."""

    model_config = SettingsConfigDict(env_prefix="ENGAGE_", extra="ignore", frozen=True)

    app_id: str = Field(
        default="engage",
        pattern=r"^[A-Za-z0-9._-]+$",
        description="Faust app id: consumer group and prefix of the changelog topics.",
    )
    broker: str = Field(
        default="kafka://127.0.0.1:9092",
        description="Kafka bootstrap servers, `kafka://host:port[;host:port]`.",
    )
    topic_namespace: str = Field(
        default="engage",
        pattern=r"^[A-Za-z0-9._-]+$",
        description="Prefix of every topic name: `{namespace}.clicks`, `{namespace}.dlq`, ...",
    )
    partitions: int = Field(default=8, ge=1, le=1024, description="Partitions of every topic.")
    replication_factor: int | None = Field(
        default=None,
        ge=1,
        le=16,
        description="Copies of each partition of the topics `engage topics` and the worker "
        "create (the Faust changelogs and internal topics too); unset: min(3, brokers in the "
        "cluster), so a single dev broker gets 1 and a cluster of three or more gets 3.",
    )
    min_insync_replicas: int | None = Field(
        default=None,
        ge=1,
        le=16,
        description="min.insync.replicas of the topics created: an acks=all write needs this "
        "many copies in sync, else it fails instead of being acknowledged by too few; unset: 2 "
        "when the replication factor is 3 or more, else 1.",
    )
    store: str = Field(default="memory://", description="`memory://` or `rocksdb://`.")
    data_dir: str = Field(default=".engage-data", description="Faust data dir (rocksdb files).")
    processing_guarantee: Literal["at_least_once"] = Field(
        default="at_least_once",
        description="The only guarantee offered: every event folded once, every decision "
        "delivered, a re-send after a crash under the same nudge_id (see docs/reliability.md).",
    )
    web_host: str = Field(
        default="127.0.0.1", description="Address the HTTP server binds (0.0.0.0 in containers)."
    )
    web_port: int = Field(default=6066, ge=1, le=65535)
    web_advertised_url: str | None = Field(
        default=None,
        description="The URL other workers reach this one at (`http://worker-1:6066`); "
        "default http://{web_host}:{web_port}, or this host's name when web_host is 0.0.0.0.",
    )
    api_token: SecretStr | None = Field(
        default=None,
        description="When set, /customers/... and /kpis need `Authorization: Bearer <token>`.",
    )
    audit_retention_days: float | None = Field(
        default=None,
        gt=0,
        description="retention.ms of the nudge-decisions and nudges topics, set by "
        "`engage topics` and the worker (unset: the broker's default).",
    )
    dlq_retention_days: float | None = Field(
        default=None,
        gt=0,
        description="retention.ms of the DLQ (it holds raw payloads) and of the webhook "
        "forwarder's DLQ (`{namespace}.forward-dlq`, nudges it could not deliver).",
    )
    erasure_max_days: float = Field(
        default=7.0,
        ge=1,
        le=365,
        description="The longest an erased customer's state may stay in Kafka: the tables' "
        "changelog topics get segment.ms, max.compaction.lag.ms and delete.retention.ms "
        "adding up to it (see `changelog_configs`).",
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    mode: Literal["live", "replay", "follow"] = Field(
        default="live",
        description="live: the wall clock bounds time; replay: event time only, ends declared "
        "by `engage replay`; follow: the clock follows the latest event time read (simulations "
        "in accelerated time, backfills), with no lateness guardrail.",
    )
    rules_file: str | None = Field(default=None, description="Ritual rules (YAML).")
    tick_interval_s: float = Field(default=0.5, gt=0, le=60)
    kpi_interval_s: float = Field(default=10.0, gt=0, description="Segment gauge refresh.")
    grace_ms: int = Field(default=1000, ge=0, description="Live clock = wall clock - grace.")
    wake_batch: int = Field(
        default=500,
        ge=1,
        description="Customers a partition wakes at most per batch when many fall due at once "
        "(after a long stop): the rest wake in the batches right after, with the same decisions.",
    )

    max_message_bytes: int = Field(default=64 * 1024, ge=1024)
    dlq_max_bytes: int = Field(
        default=2 * 1024 * 1024,
        ge=64 * 1024,
        description="Largest dead-letter record: at least the largest message the broker takes "
        "on an input topic (message.max.bytes, 1 MiB by default) plus headers, so even a 1 MB "
        "message is dead-lettered unchanged. The DLQ topic is created with it as its "
        "max.message.bytes, and it is the producer's max request size.",
    )
    max_future_skew_s: float = Field(
        default=300.0, ge=0, description="Events further ahead of the wall clock go to the DLQ."
    )

    # Batching and Kafka clients (chosen by `make bench`; see docs/operations-throughput.md).
    batch_max_events: int = Field(
        default=2000, ge=1, le=100_000, description="Most messages the agent takes per batch."
    )
    batch_within_s: float = Field(
        default=0.05, gt=0, le=10, description="Longest wait for a batch to fill."
    )
    producer_linger_ms: int = Field(
        default=10, ge=0, le=1000, description="Producer linger: sends wait this long to batch."
    )
    producer_max_batch_bytes: int = Field(
        default=1024 * 1024, ge=16 * 1024, description="Largest producer batch per partition."
    )
    consumer_max_poll_records: int = Field(
        default=2000, ge=1, description="Most records one consumer fetch returns."
    )
    consumer_fetch_max_wait_ms: int = Field(
        default=10,
        ge=1,
        le=10_000,
        description="Longest the broker holds a fetch request that has not found "
        "`consumer_fetch_min_bytes` of new records (Faust's own is 1,500 ms: a backlog's "
        "catch-up stalled on it).",
    )
    consumer_fetch_min_bytes: int = Field(
        default=64 * 1024,
        ge=1,
        le=50 * 1024 * 1024,
        description="Least data the broker gathers for a fetch before it answers, unless "
        "`consumer_fetch_max_wait_ms` passes first: live traffic arrives in fewer, larger "
        "fetches (1 answers as soon as one record is there).",
    )
    state_write_interval_ms: int = Field(
        default=0,
        ge=0,
        le=60_000,
        description="Write-behind (direct drain, off by default): a changed customer's state "
        "goes to the table and its changelog at most this long after its first change since "
        "the last write, once however many events changed it meanwhile; the records are "
        "acknowledged (their offsets committable) only once written. Decisions are sent at "
        "once. 0 writes every batch (the default). With it on, the table, its changelog, "
        "/customers and Redis profiles lag the processed-events metrics by up to this much.",
    )
    drain: Literal["direct", "lean", "faust"] = Field(
        default="direct",
        description="How fetched messages reach the engines: `direct` hands each fetch of the "
        "worker's topics to them in one call; `lean` goes through the agent's stream with an "
        "inline hand-over; `faust` is Faust's own path (four tasks per message).",
    )
    gc_full_interval_s: float = Field(
        default=600.0,
        ge=0,
        le=86_400,
        description="Full collections of Python's cycle collector run when a fetch finds no "
        "input (a minute apart at most), and under input that never pauses once this often; "
        "0 leaves Python's own schedule (a full scan of every live object, holding the stream, "
        "whenever they grow by a quarter).",
    )
    session_timeout_s: float = Field(
        default=10.0,
        ge=1,
        le=300,
        description="A worker silent this long is presumed dead and its partitions move.",
    )
    heartbeat_interval_s: float = Field(
        default=2.0, gt=0, le=60, description="Consumer group heartbeats (< session/3)."
    )
    standby_replicas: int | None = Field(
        default=None,
        ge=0,
        le=8,
        description="Warm copies of each table partition on other workers (faster failover); "
        "unset: 1 with `rocksdb://`, 0 with `memory://` (see `table_standby_replicas`).",
    )
    projection_interval_s: float = Field(
        default=0.5,
        ge=0,
        le=10,
        description="Redis projection: changes are coalesced this long before a write.",
    )
    recovery_stuck_after_s: float = Field(
        default=300.0,
        gt=0,
        description="/healthz fails when the worker stays not ready (recovering, rebalancing) "
        "this long.",
    )
    stall_after_s: float = Field(
        default=60.0,
        gt=0,
        description="/healthz fails when input waits and no batch was handled for this long.",
    )

    redis_url: SecretStr = Field(
        default=SecretStr("redis://127.0.0.1:6379/0"),
        description="Profile projection (SPEC §6); AUTH and TLS in the URL (rediss://...).",
    )
    redis_enabled: bool = Field(default=True, description="Off: no Redis projection.")

    # Kafka security (SPEC §7): nothing secret lives in the repository; pass it in the env.
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None

    @field_validator("broker")
    @classmethod
    def _broker_url(cls, value: str) -> str:
        if not value.startswith("kafka://") or not value.removeprefix("kafka://"):
            raise ValueError("must look like kafka://host:port")
        return value

    @field_validator("processing_guarantee", mode="before")
    @classmethod
    def _guarantee(cls, value: object) -> object:
        # Kafka transactions (Faust's exactly_once) lost events and crashed workers in the
        # kill -9 experiments, and never covered the outputs: refused with the reason.
        if value == "exactly_once":
            raise ValueError(
                "exactly_once is not supported (it lost events when a worker was killed; "
                "see docs/reliability.md): use at_least_once"
            )
        return value

    @field_validator("store")
    @classmethod
    def _store_url(cls, value: str) -> str:
        if value not in {"memory://", "rocksdb://"}:
            raise ValueError("must be memory:// or rocksdb:// (install the `rocksdb` extra)")
        return value

    @field_validator("web_advertised_url")
    @classmethod
    def _advertised(cls, value: str | None) -> str | None:
        if value is None:
            return None
        from urllib.parse import urlsplit

        parts = urlsplit(value)
        if parts.scheme not in {"http", "https"} or not parts.hostname or not parts.port:
            raise ValueError("must look like http://host:port")
        if parts.hostname in {"0.0.0.0", "::"}:
            raise ValueError("must be an address other workers can reach, not 0.0.0.0")
        return value.rstrip("/")

    @property
    def advertised_url(self) -> str:
        """The URL other workers route requests to (Faust's canonical_url): the setting, else
        the bound address, else (bound to every address) this host's name, never 0.0.0.0."""
        if self.web_advertised_url:
            return self.web_advertised_url
        host = self.web_host
        if host in {"0.0.0.0", "::", ""}:
            import socket

            host = socket.gethostname()
        return f"http://{host}:{self.web_port}"

    @model_validator(mode="after")
    def _heartbeat_below_session(self) -> Settings:
        if self.heartbeat_interval_s * 3 > self.session_timeout_s:
            raise ValueError("ENGAGE_HEARTBEAT_INTERVAL_S must be at most a third of the session")
        return self

    @model_validator(mode="after")
    def _insync_within_replicas(self) -> Settings:
        rf, isr = self.replication_factor, self.min_insync_replicas
        if rf is not None and isr is not None and isr > rf:
            raise ValueError(
                "ENGAGE_MIN_INSYNC_REPLICAS must not exceed ENGAGE_REPLICATION_FACTOR "
                "(no write could ever be acknowledged)"
            )
        return self

    def replication_for(self, brokers: int) -> tuple[int, int]:
        """(replication factor, min.insync.replicas) of new topics on a cluster of `brokers`:
        the configured values, else 3 copies of which 2 in sync when there are three brokers
        or more, one copy on a single broker. A configured factor above `brokers` is returned
        as is: creating the topics then fails with a message naming the setting."""
        rf = self.replication_factor or max(1, min(3, brokers))
        isr = self.min_insync_replicas or (2 if rf >= 3 else 1)
        return rf, min(isr, rf)

    @model_validator(mode="after")
    def _sasl_complete(self) -> Settings:
        if self.security_protocol.startswith("SASL") and not (
            self.sasl_username and self.sasl_password
        ):
            raise ValueError("SASL needs ENGAGE_SASL_USERNAME and ENGAGE_SASL_PASSWORD")
        return self

    @property
    def table_standby_replicas(self) -> int:
        """The standby replicas Faust keeps: `ENGAGE_STANDBY_REPLICAS`, else 1 with `rocksdb://`
        and 0 with `memory://`. A `rocksdb://` standby keeps its copy and the offset it has
        read, so the worker taking a partition over reads only the changelog's tail; Faust's
        `memory://` store drops the keys of partitions it does not own at the end of every
        recovery and keeps no offset, so there a standby costs a full read and saves none.
        A single worker has no other worker to mirror: it keeps none whatever the setting."""
        if self.standby_replicas is not None:
            return self.standby_replicas
        return 1 if self.store.startswith("rocksdb") else 0

    @property
    def bootstrap_servers(self) -> str:
        """The broker list in the form aiokafka wants (`host:port,host:port`)."""
        return self.broker.removeprefix("kafka://").replace(";", ",")

    @cached_property
    def input_topics(self) -> dict[str, str]:
        """Event type -> input topic name, in the order of the event types."""
        return {t: topic_names.input_topic(self.topic_namespace, t) for t in EVENT_TYPES}

    @property
    def dlq_topic(self) -> str:
        """Inputs the worker could not accept."""
        return topic_names.dlq_topic(self.topic_namespace)

    @property
    def forward_dlq_topic(self) -> str:
        """Nudges `engage forward` could not deliver (refused, expired)."""
        return topic_names.forward_dlq_topic(self.topic_namespace)

    @property
    def nudges_topic(self) -> str:
        """Nudges to deliver."""
        return topic_names.nudges_topic(self.topic_namespace)

    @property
    def decisions_topic(self) -> str:
        """The audit trail of every decision."""
        return topic_names.decisions_topic(self.topic_namespace)

    @property
    def clock_topic(self) -> str:
        """Clock ticks and replay declarations, co-partitioned with the inputs."""
        return topic_names.clock_topic(self.topic_namespace)

    @property
    def replay_status_topic(self) -> str:
        """Replay completion reports."""
        return topic_names.replay_status_topic(self.topic_namespace)

    @property
    def erasures_topic(self) -> str:
        """Erasure requests, keyed by customer_id, co-partitioned with the inputs."""
        return topic_names.erasures_topic(self.topic_namespace)

    @property
    def erasure_receipts_topic(self) -> str:
        """One receipt per erasure carried out."""
        return topic_names.erasure_receipts_topic(self.topic_namespace)

    @property
    def customers_changelog(self) -> str:
        """The `customers` table's changelog (every customer's latest state)."""
        return topic_names.customers_changelog(self.app_id)

    def changelog_topics(self) -> list[str]:
        """The Faust tables' changelog topics (compacted). Created with the other topics, so a
        fresh app never starts while the broker's metadata still lacks them (Faust would stop
        the agent with PartitionsMismatch)."""
        return [topic_names.changelog_topic(self.app_id, t) for t in topic_names.TABLES]

    def changelog_configs(self) -> dict[str, str]:
        """The configs of the tables' changelog topics, derived from `erasure_max_days` (B).

        An erasure writes a tombstone; what it replaces leaves Kafka only when the log cleaner
        compacts the segment holding the tombstone, and the tombstone itself (its key is the
        customer id) leaves `delete.retention.ms` after that. So, for a tombstone written at T:
        its segment is closed by T + segment.ms (Kafka rolls a segment that old on the next
        write to the partition), the cleaner must compact it by T + max.compaction.lag.ms, and
        the tombstone is dropped delete.retention.ms after that cleaning. The three add up to
        B: delete.retention.ms = B/7 (1 day by default, time enough for a reader of the whole
        changelog to see the tombstone) and segment.ms = max.compaction.lag.ms = 3B/7 (3 days),
        which leaves the cleaner's own scheduling (seconds) well inside the bound.
        """
        bound = int(self.erasure_max_days * 86_400_000)
        lag = 3 * bound // 7
        return {
            "cleanup.policy": "compact",
            "segment.ms": str(lag),
            "max.compaction.lag.ms": str(lag),
            "delete.retention.ms": str(bound - 2 * lag),
        }

    def retention_ms(self) -> dict[str, int]:
        """Topic -> retention.ms the operator asked for (SPEC §4 Erasure: the audit trail
        keeps what its retention allows)."""
        out: dict[str, int] = {}
        if self.audit_retention_days is not None:
            ms = int(self.audit_retention_days * 86_400_000)
            out[self.decisions_topic] = ms
            out[self.nudges_topic] = ms
        if self.dlq_retention_days is not None:
            ms = int(self.dlq_retention_days * 86_400_000)
            out[self.dlq_topic] = ms
            out[self.forward_dlq_topic] = ms
        return out

    def all_topics(self) -> list[str]:
        """Every topic the worker reads or writes, apart from Faust's own internal ones."""
        return [
            *self.input_topics.values(),
            self.clock_topic,
            self.dlq_topic,
            self.nudges_topic,
            self.decisions_topic,
            self.replay_status_topic,
            self.erasures_topic,
            self.erasure_receipts_topic,
        ]


def load_settings() -> Settings:
    """Settings from the environment, or exit with a readable list of what is wrong."""
    try:
        return Settings()
    except ValidationError as exc:
        print(f"engage: invalid configuration: {settings_problems(exc)}", file=sys.stderr)
        raise SystemExit(2) from None


def settings_problems(exc: ValidationError) -> str:
    """Every problem of a settings validation error on one line, named by its variable:
    `ENGAGE_PARTITIONS: Input should be a valid integer; ENGAGE_MODE: ...`."""
    problems = []
    for err in exc.errors():
        name = "ENGAGE_" + "_".join(str(p) for p in err["loc"]).upper() if err["loc"] else ""
        problems.append(f"{name or '(settings)'}: {err['msg']}")
    return "; ".join(problems)
