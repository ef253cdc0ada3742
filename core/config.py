"""saiki's configuration: a few frozen dataclasses, layered defaults → file → environment.

Everything of the embedded mode lives under one data directory (default ``.saiki/``,
``--data-dir``, env ``SAIKI_DATA_DIR``). An optional ``saiki.toml`` in that directory
overrides defaults per section::

    [catalog]
    uri = "postgresql+psycopg2://user:pw@db/saiki"    # any pyiceberg SqlCatalog URI
    warehouse = "s3://bucket/warehouse"

    [speed]
    allowed_lateness_s = 300

and ``SAIKI_<SECTION>_<KEY>`` environment variables override the file
(``SAIKI_SERVING_PORT=50052``). Unknown sections or keys, values of the wrong type, a
choice that is not one of its options (``online_store = "redsi"``) and a number out of
its range are a ``ConfigError`` naming the key, at load, before anything starts.
"""

from __future__ import annotations

import os
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from saiki.core.config_values import build_section, check_ranges
from saiki.core.errors import ConfigError

DEFAULT_DATA_DIR = ".saiki"
CONFIG_FILE = "saiki.toml"


@dataclass(frozen=True)
class CatalogConfig:
    """Where the Iceberg master dataset lives (empty uri/warehouse: under the data dir)."""

    name: str = "saiki"
    namespace: str = "saiki"
    type: Literal["sql", "rest"] = "sql"
    uri: str = ""
    warehouse: str = ""
    # ``[catalog.properties]``: passed to pyiceberg (and to Beam workers) unchanged, e.g.
    # ``s3.endpoint``, ``s3.access-key-id``, ``s3.secret-access-key``, ``s3.region``.
    properties: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class LogConfig:
    """The event log: append-only segment files (embedded) or a Kafka topic (cluster)."""

    backend: Literal["segments", "kafka"] = "segments"
    # The segments' folder: empty for <data>/log, or a path every replica reaches (a
    # shared filesystem), so that Ingest on any of them appends to one log.
    dir: str = ""
    kafka_bootstrap: str = ""
    kafka_topic: str = "saiki.events"
    # ``[log.kafka_properties]``: librdkafka settings for Ingest's producer and the master
    # loader's consumer, e.g. "security.protocol" = "SASL_SSL", "sasl.mechanism",
    # "sasl.username", "sasl.password" for a managed Kafka. saiki's own (idempotence,
    # acks, offsets) win over them.
    kafka_properties: dict[str, str] = field(default_factory=dict)
    # `saiki ingest` writes one segment per this many input lines.
    segment_events: int = 200_000
    # Ingest calls of one server process are committed in groups (one segment and one
    # fsync per group, each caller acknowledged after it); a group is taken no sooner than
    # this long after the previous one, so a process writes at most one segment per
    # linger and a call after a quiet spell waits for nothing. 0: every call commits at
    # once, sharing a segment only with what queued during the previous commit. A call
    # holds a gRPC thread until its group is durable, so a process acknowledges at most
    # [serving] threads calls per linger: raise threads with the linger.
    group_commit_ms: int = 20


@dataclass(frozen=True)
class SpeedConfig:
    """The PyFlink speed layer."""

    allowed_lateness_s: int = 300
    # How long a tile's Flink state outlives its last change: the state (and each
    # checkpoint) holds about this much time's tiles; at least 2 x lateness + 2 min.
    state_ttl_s: int = 900
    # Every checkpoint is a full copy of the job's state (the tiles of the last
    # state_ttl_s, the source's set of paths read): the interval trades its CPU against
    # how much a restore re-reads. Applies to a restored job too.
    checkpoint_interval_ms: int = 2_000
    # Flink's pipeline.object-reuse: records pass between the query's chained operators
    # without a copy each (Flink's SQL operators are written for it). Applies on restore.
    object_reuse: bool = True
    # Niceness added to `saiki speed run` in local mode (its JVM inherits it), so that
    # serving threads on the same cores wait less for one; 0 leaves the priority alone.
    nice: int = 0
    # CPUs `saiki speed run` holds itself to in local mode ("1", "0-1", "0,2"), its JVM
    # and Python workers with it (they inherit the affinity), so that the speed layer
    # leaves the other cores to serving; empty: every CPU. A CPU this process may not
    # use is an error at start.
    cpus: str = ""
    jobmanager: str = ""  # host:port of a Flink cluster; empty: local mini-cluster
    # Where checkpoints go: a path every TaskManager and the client reach (a shared
    # filesystem in cluster mode); empty: <data>/speed/checkpoints.
    checkpoint_dir: str = ""
    sink_flush_ms: int = 100
    # How often Flink's source lists the log's folder for new segments: a new segment
    # waits up to this long to be read, and each listing costs per segment in the folder.
    monitor_ms: int = 200


@dataclass(frozen=True)
class FeastConfig:
    """The Feast project: embedded SQLite online store or Redis by configuration."""

    project: str = "saiki"
    online_store: Literal["sqlite", "redis"] = "sqlite"
    redis_connection: str = "localhost:6379"
    registry: str = ""  # empty: a registry file under the data dir; else a SQL URL


@dataclass(frozen=True)
class ServingConfig:
    """The gRPC servers."""

    host: str = "127.0.0.1"
    port: int = 50051
    workers: int = 1
    # Python threads per server process. One holds the GIL at a time, so more threads do
    # not add capacity; two let a short call (a health probe, a cached read) pass one
    # that waits on the online store. Scale with workers (processes).
    threads: int = 2
    # CPUs `saiki serve` holds itself and its worker processes to ("0", "0-1"; empty: every
    # CPU). With `[speed] cpus` set to the others, no speed-layer thread runs on a core a
    # request thread wakes on, which no lower priority achieves; on two vCPUs it lowered
    # the 1-in-flight p99s in service and left the servers one core (docs/service.md).
    cpus: str = ""
    # Set (e.g. to the speed layer's CPUs): `saiki serve` starts one event writer process
    # held to these CPUs, which validates and appends every worker's `Ingest` calls, so
    # that group commits never run on a core or under a GIL that read calls wait for
    # (serving/event_writer.py). Empty: each server process appends its own calls.
    ingest_cpus: str = ""
    precision: Literal["int8", "fp32"] = "int8"
    max_candidates: int = 1000
    max_ids: int = 10_000
    max_events_per_ingest: int = 10_000
    # RPCs one process holds at once, running or queued; one more is refused at once with
    # RESOURCE_EXHAUSTED rather than queued (gRPC's own bound, counted in its C core). A
    # smaller bound keeps admitted calls fast under overload (threads = max_in_flight = 1
    # held their p99 to 1.3x the unloaded one in benchmarks/bench_overload.py, 8 to 10x)
    # at the price of refusing concurrent calls sooner.
    max_in_flight: int = 8
    # Share of Predict requests whose merged feature values go to the prediction log
    # (and so to saiki.predictions); every answer is logged, its vectors by this share.
    log_features_share: float = 1.0
    # The prediction log itself (monitor, A/B and saiki.predictions read it); off only to
    # measure what it costs.
    log_predictions: bool = True
    # Share of successful calls that write a JSON access line to the log (a failed call
    # always does; the metrics count every call). Each line costs about 0.1 ms of CPU a
    # call with calls in flight (benchmarks/bench_grpc_floor.py).
    access_log_share: float = 1.0
    # A second, small server answering only grpc.health.v1 (0: none), so health is
    # answered while the main port is saturated; point probes at it.
    health_port: int = 0
    # Prometheus text format at http://HOST:metrics_port/metrics (0: no endpoint); one
    # endpoint per server, however many --workers.
    metrics_port: int = 0
    # TLS: the server's certificate chain and key (PEM files); with client_ca, clients
    # must present a certificate that CA signed (mutual TLS).
    tls_cert: str = ""
    tls_key: str = ""
    client_ca: str = ""
    # Binding an address other than loopback without TLS and tokens is refused unless
    # this is set (or `saiki serve --insecure` is given).
    insecure: bool = False
    reload_interval_ms: int = 500
    # Keep merged features in memory while the view, the online store's data version and
    # the query minute stay the same (SQLite online store only; off: merge every call).
    feature_cache: bool = True


@dataclass(frozen=True)
class AuthConfig:
    """Who may call what: bearer tokens by role, kept hashed in ``tokens_file``."""

    # Empty: no tokens are checked (the embedded default, on loopback only).
    tokens_file: str = ""


@dataclass(frozen=True)
class ScheduleConfig:
    """When ``saiki up`` runs each job: an interval (``30s``, ``5m``, ``1h``, ``1d``) or a
    five-field cron expression (``0 3 * * *``). The same jobs are plain commands, so cron
    can run them instead (infra/README.md)."""

    load: str = "5m"  # saiki master load: the event log into the master dataset
    recompute: str = "1h"  # saiki batch run: recompute, publish, hand off
    monitor: str = "15m"  # saiki monitor: drift and live CTR
    retrain: str = "1d"  # saiki train --promote-if-better (also when monitor says so)
    # saiki master maintain: compact small files, expire old snapshots, remove their files
    maintain: str = "1h"
    # Niceness added to each scheduled job: batch work yields the cores to serving.
    nice: int = 10
    # saiki models compare --promote: release a staged version whose shadow period passed
    # (scheduled only with [models] require_shadow)
    shadow: str = "15m"
    # Snapshots younger than this are kept (time travel, a job that resolved one and
    # has not read it yet); older ones go unless a view, training set or model pins them.
    snapshot_retention: str = "1d"
    # Published batch views kept; older ones are removed after each recompute (at least
    # two: a server may still serve the previous view during a handoff).
    keep_views: int = 3


@dataclass(frozen=True)
class ModelsConfig:
    """Training a model (what a retrain reads) and releasing one: shadow staging
    (``saiki models stage V`` / ``compare V``)."""

    # A training set built by `saiki train` (and so each scheduled retrain) spans at most
    # this many days up to the newest cutoff, so a retrain's cost does not grow with the
    # service's uptime; --from overrides it.
    training_days: int = 7
    # Rows a retrain fits on and is judged on, at most: a uniform sample beyond (fixed
    # seed, so production's backtest scores exactly the held-out rows the new version is
    # judged on) keeps a retrain's time bounded whatever the traffic.
    max_train_rows: int = 1_000_000
    max_holdout_rows: int = 200_000

    # The share of requests a staged version scores by default (``stage --share``).
    shadow_share: float = 1.0
    # The share of one core each server process may spend scoring with a staged version:
    # past it, requests are left unshadowed (counted) until the budget refills
    # (serving/shadow_budget.py), so a shadow never costs production more than this.
    shadow_cpu: float = 0.1
    # Require a shadow period with no regression before a version is promoted (by hand or
    # by the retrain policy, which then stages a winner instead of promoting it).
    require_shadow: bool = False
    # What a shadow period needs: this long staged, this many shown items with a label,
    # and a log loss on them at most production's plus the tolerance.
    shadow_minutes: int = 60
    shadow_min_labelled: int = 500
    shadow_tolerance: float = 0.01
    # Where model versions live: empty for <data>/models, or a folder every replica
    # reaches ("s3://bucket/prefix", credentials from [catalog.properties]).
    artifacts: str = ""
    # Where their stages live: empty for registry.json beside them (a file lock), or a
    # SQL URL (e.g. postgresql+psycopg2://...): required with artifacts on object storage.
    metadata: str = ""


@dataclass(frozen=True)
class ViewsConfig:
    """Where published batch views live (``saiki batch run`` writes them, servers and the
    speed layer read them)."""

    # Empty for <data>/views, or a folder every machine reaches ("s3://bucket/prefix",
    # credentials from [catalog.properties]); each machine keeps a copy of the views it
    # reads under <data>/views.
    location: str = ""
    # Their manifests and which one is current: a SQL URL (e.g. postgresql+psycopg2://...),
    # required with a location (object storage has no rename and no lock).
    metadata: str = ""


@dataclass(frozen=True)
class SaikiConfig:
    """The whole configuration; ``data_dir`` is absolute."""

    data_dir: Path
    catalog: CatalogConfig = field(default_factory=CatalogConfig)
    log: LogConfig = field(default_factory=LogConfig)
    speed: SpeedConfig = field(default_factory=SpeedConfig)
    feast: FeastConfig = field(default_factory=FeastConfig)
    serving: ServingConfig = field(default_factory=ServingConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    models: ModelsConfig = field(default_factory=ModelsConfig)
    views: ViewsConfig = field(default_factory=ViewsConfig)

    @property
    def catalog_uri(self) -> str:
        """The SQL catalog URI; by default a SQLite file in the data dir."""
        return self.catalog.uri or f"sqlite:///{self.data_dir / 'catalog.db'}"

    @property
    def warehouse(self) -> str:
        """The Iceberg warehouse location; by default a folder in the data dir."""
        return self.catalog.warehouse or (self.data_dir / "warehouse").as_uri()

    @property
    def iceberg_properties(self) -> dict[str, str]:
        """What pyiceberg's ``load_catalog`` takes besides the name: type, uri, warehouse
        and ``[catalog.properties]`` (the latter win)."""
        return {
            "type": self.catalog.type,
            "uri": self.catalog_uri,
            "warehouse": self.warehouse,
            **self.catalog.properties,
        }

    @property
    def log_dir(self) -> Path:
        """The root of the event log's segment files (``[log] dir``, else ``<data>/log``)."""
        return Path(self.log.dir).expanduser().resolve() if self.log.dir else self.data_dir / "log"


_SECTIONS: dict[str, type[Any]] = {
    "catalog": CatalogConfig,
    "log": LogConfig,
    "speed": SpeedConfig,
    "feast": FeastConfig,
    "serving": ServingConfig,
    "auth": AuthConfig,
    "schedule": ScheduleConfig,
    "models": ModelsConfig,
    "views": ViewsConfig,
}


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """The data directory: the argument, else $SAIKI_DATA_DIR, else ./.saiki."""
    chosen = data_dir or os.environ.get("SAIKI_DATA_DIR") or DEFAULT_DATA_DIR
    return Path(chosen).expanduser().resolve()


def load_config(
    data_dir: str | os.PathLike[str] | None = None,
    environ: typing.Mapping[str, str] | None = None,
    **overrides: dict[str, Any],
) -> SaikiConfig:
    """Build the configuration: defaults, then ``<data_dir>/saiki.toml``, then environment.

    ``overrides`` are per-section dicts (``serving={"port": 50052}``) applied last, as the
    command line does.
    """
    env = os.environ if environ is None else environ
    root = resolve_data_dir(data_dir)
    layers: dict[str, dict[str, Any]] = {name: {} for name in _SECTIONS}
    path = root / CONFIG_FILE
    if path.exists():
        try:
            document = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
        for section, values in document.items():
            if section not in _SECTIONS or not isinstance(values, dict):
                raise ConfigError(f"{path}: unknown section [{section}]")
            layers[section].update(values)
    for section in _SECTIONS:
        prefix = f"SAIKI_{section.upper()}_"
        for key, value in env.items():
            if key.startswith(prefix):
                layers[section][key.removeprefix(prefix).lower()] = value
    for section, values in overrides.items():
        if section not in _SECTIONS:
            raise ConfigError(f"unknown configuration section {section!r}")
        layers[section].update({k: v for k, v in values.items() if v is not None})
    built = {name: build_section(name, cls, layers[name]) for name, cls in _SECTIONS.items()}
    check_ranges(built)
    return SaikiConfig(data_dir=root, **built)
