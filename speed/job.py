"""The speed layer's Flink job: event log → per-minute tiles → online store, within seconds.

Shape (SQL for parsing and aggregation, Python only at the sink):

* **source**: Flink's filesystem connector follows the event log's segment folder
  (``source.monitor-interval``); segments appear atomically by rename, and names starting
  with ``.`` or ``_`` (the staging folder, Arrow copies) are skipped.
* **tiles**: a continuously updating ``GROUP BY (entity, event-time minute)`` with
  mini-batches, so a tile is rewritten within about ``sink_flush_ms`` of its events —
  not when its minute closes, as a ``TUMBLE`` window would.
* **lateness**: an event is late when its minute had ended more than the allowed lateness
  before the *log watermark* it arrived at (the newest event time among all records
  before it in the log; see ``core/eventlog.py``). Late events are *left to the batch
  layer* and counted, never tiled. The log watermark is a property of the log, so the
  decision does not depend on the order in which Flink reads segments (files found in
  one directory scan are read in arbitrary order: under Flink's own watermark that drops
  most of a backlog as late) and a replay after a restart decides exactly as before.
* **sink**: one keyed Python function merges the updates (see :mod:`speed.sink`); pending
  rows live in Flink's ListState, so a checkpoint holds whatever was not yet written.
* **state**: a tile can change only until ``lateness + 1 min`` after its minute; its
  state is then kept for ``state_ttl`` of processing time, which bounds the downtime a
  restart can have and still be exact (see docs/speed.md).

The aggregations are rendered from the spec (``feature_repo.tiles.sql_contribution``):
the same definitions the batch layer computes with.
"""

from __future__ import annotations

import glob
import json
import os
import site
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pyarrow as pa

from saiki.core.config import SaikiConfig
from saiki.core.ingest import SEGMENT_ARROW_SCHEMA
from saiki.feature_repo.spec import AGGREGATIONS, ENTITIES
from saiki.feature_repo.tiles import sql_contribution
from saiki.speed.shape import TILE_COLUMNS, SpeedJobSpec, sink_line_sql

# The log record's columns the job reads, typed from the event schema, then the log
# watermark before the record (a key of the record's JSON envelope).
_READ = ("ingest_ms", "event_id", "event_time", "user_id", "item_id", "event_type", "dwell_ms")
_SQL_TYPES = {pa.string(): "STRING", pa.int64(): "BIGINT"}
_EVENT_COLUMNS = (
    "".join(f"\n    {n} {_SQL_TYPES[SEGMENT_ARROW_SCHEMA.field(n).type]}," for n in _READ)
    + "\n    prior_ms BIGINT,"
)


_ROW_COLUMNS = (
    "ingest_ms, event_id, event_time, user_id, item_id, event_type, dwell_ms, prior_ms, log_wm"
)
# On segment files, each record also carries its segment's first offset and length (from
# the file's name), so the sink learns which segments the job has read whole.
_SEGMENT_COLUMNS = ", seg_first, seg_count"


def row_columns(spec: SpeedJobSpec) -> str:
    """The columns the query reads from the log."""
    return _ROW_COLUMNS if spec.kafka_bootstrap else _ROW_COLUMNS + _SEGMENT_COLUMNS


def _sql_text(value: str) -> str:
    """A value inside a single-quoted Flink SQL string literal."""
    return value.replace("'", "''")


def source_ddl(spec: SpeedJobSpec) -> str:
    """The event log as a Flink table: its segment files, or a Kafka topic.

    Both carry the log's records as the same JSON lines, ``prior_ms`` (the log watermark
    before the record) included. A segment's file name also carries its watermark; a
    Kafka record relies on ``prior_ms`` alone. The Kafka variant needs the
    ``flink-sql-connector-kafka`` jar for Flink 2.x on the cluster's classpath (or in
    ``pipeline.jars``); no such jar ships with PyFlink, and none can be downloaded here,
    so it is rendered and unit-tested but not run in this repository's tests.
    """
    if spec.kafka_bootstrap:
        client = "".join(
            f"\n            '{_sql_text('properties.' + key)}' = '{_sql_text(value)}',"
            for key, value in spec.kafka_properties
        )
        return f"""
        CREATE TABLE log_events ({_EVENT_COLUMNS}
            log_wm AS COALESCE(prior_ms, 0)
        ) WITH (
            'connector' = 'kafka',
            'topic' = '{_sql_text(spec.kafka_topic)}',
            'properties.bootstrap.servers' = '{_sql_text(spec.kafka_bootstrap)}',
            'properties.group.id' = 'saiki-speed',{client}
            'scan.startup.mode' = 'earliest-offset',
            'format' = 'json',
            'json.ignore-parse-errors' = 'true'
        )
    """
    return f"""
        CREATE TABLE log_events ({_EVENT_COLUMNS}
            src_path STRING NOT NULL METADATA FROM 'file.path' VIRTUAL,
            log_wm AS GREATEST(
                CAST(REGEXP_EXTRACT(src_path, '-([0-9]{{13}})[.]jsonl$', 1) AS BIGINT),
                COALESCE(prior_ms, 0)
            ),
            seg_first AS CAST(REGEXP_EXTRACT(src_path, 'seg-([0-9]{{16}})-', 1) AS BIGINT),
            seg_count AS CAST(REGEXP_EXTRACT(src_path, '-([0-9]{{8}})-[0-9]{{13}}', 1) AS BIGINT)
        ) WITH (
            'connector' = 'filesystem',
            'path' = 'file://{spec.log_dir}',
            'format' = 'json',
            'json.ignore-parse-errors' = 'true',
            'source.monitor-interval' = '{spec.monitor_ms}ms'
        )
    """


def union_query(spec: SpeedJobSpec) -> str:
    """Tiles, late events and read progress as one changelog with one row shape.

    Late events and progress are running totals since the job's epoch (global aggregates:
    with mini-batches, each event only updates a local accumulator in the source's
    thread, and one row per batch crosses to the sink; as windows, every event crossed a
    shuffle). They are checkpointed with the rest of the query's state.
    """
    lateness_ms = spec.allowed_lateness_s * 1000
    contributions = ", ".join(
        f"CAST({sql_contribution(a)} AS BIGINT) AS {c}"
        for a, c in zip(AGGREGATIONS, TILE_COLUMNS, strict=True)
    )
    closed = f"event_time - MOD(event_time, 60000) + {60_000 + lateness_ms} <= log_wm"
    on_time = f"event_time >= {spec.epoch_cutoff_ms} AND event_type IS NOT NULL AND NOT ({closed})"
    per_entity = " UNION ALL ".join(
        f"""SELECT '{e.name}' AS entity, {e.key} AS entity_id, event_time, ingest_ms,
                   event_time - MOD(event_time, 60000) AS minute_ms, {contributions}
            FROM log_rows WHERE {on_time} AND {e.key} IS NOT NULL"""
        for e in ENTITIES
    )
    sums = ", ".join(f"SUM({c}) AS {c}" for c in TILE_COLUMNS)
    zeros = ", ".join(f"CAST(0 AS BIGINT) AS {c}" for c in TILE_COLUMNS)
    # The totals' state is kept for good (the tiles' state expires after state_ttl_s):
    # a total that expired would start again from zero.
    keep = "/*+ STATE_TTL('log_rows' = '0 s') */"
    # Records read per segment file, beside its length: the sink advances the offset
    # below which every segment was read whole, and the driver archives those segments
    # once checkpoints cover them (speed/archive.py). The count's state expires with the
    # tiles' (a segment is read within seconds of being listed).
    segments = (
        ""
        if spec.kafka_bootstrap
        else f"""
        UNION ALL
        SELECT 'segment', '', '', seg_first, {zeros}, COUNT(*), MAX(seg_count), MAX(ingest_ms)
        FROM log_rows
        GROUP BY seg_first"""
    )
    return f"""
        SELECT 'tile' AS kind, entity, entity_id, minute_ms, {sums},
               COUNT(*) AS events, MAX(event_time) AS max_event_ms,
               MAX(ingest_ms) AS max_ingest_ms
        FROM ({per_entity})
        GROUP BY entity, entity_id, minute_ms
        UNION ALL
        SELECT {keep} 'late', '', '', CAST(0 AS BIGINT), {zeros}, COUNT(*), MAX(event_time),
               MAX(ingest_ms)
        FROM log_rows
        WHERE event_time >= {spec.epoch_cutoff_ms} AND {closed}
        UNION ALL
        SELECT {keep} 'progress', '', '', CAST(0 AS BIGINT), {zeros}, COUNT(*),
               MAX(GREATEST(log_wm, LEAST(event_time, ingest_ms))), MAX(ingest_ms)
        FROM log_rows{segments}
    """


PROJECT_ROOT = Path(__file__).resolve().parent.parent


def embedded_python_path() -> str:
    """sys.path entries Flink's embedded interpreter (pemja) needs to import saiki.

    Thread mode runs Python inside the JVM with the base interpreter's prefix: it neither
    sees the virtualenv nor runs its .pth files, so site-packages and the project's
    folder holding the ``saiki`` package are passed explicitly (the package finds its
    layers in the checkout itself). On a cluster, every TaskManager's machine must hold
    the same virtualenv and checkout at the same paths.
    """
    entries = [*site.getsitepackages(), str(PROJECT_ROOT / "proto")]
    entries += [e for e in os.environ.get("PYTHONPATH", "").split(os.pathsep) if e]
    return os.pathsep.join(dict.fromkeys(entries))


def latest_checkpoint(checkpoints: Path) -> Path | None:
    """The newest complete retained checkpoint (a ``chk-N`` folder with ``_metadata``)."""
    completed: list[tuple[float, int, str]] = []
    for metadata in glob.glob(str(checkpoints / "*" / "chk-*" / "_metadata")):
        try:  # a running job removes its oldest retained checkpoint as each completes
            mtime = os.path.getmtime(metadata)
        except FileNotFoundError:
            continue
        completed.append((mtime, int(Path(metadata).parent.name[4:]), metadata))
    if not completed:
        return None
    return Path(max(completed)[2]).parent


def job_configuration(
    spec: SpeedJobSpec, restore: Path | None = None, jobmanager: str = ""
) -> dict[str, str]:
    """Flink's settings for the job (a local mini-cluster unless ``jobmanager``)."""
    settings = {
        "parallelism.default": "1",
        "python.execution-mode": "thread",
        "python.executable": sys.executable,
        "python.client.executable": sys.executable,
        "python.fn-execution.bundle.time": str(spec.sink_flush_ms),
        "table.local-time-zone": "UTC",
        "pipeline.object-reuse": "true" if spec.object_reuse else "false",
        "table.exec.mini-batch.enabled": "true",
        "table.exec.mini-batch.allow-latency": f"{spec.sink_flush_ms} ms",
        "table.exec.mini-batch.size": "5000",
        "table.exec.state.ttl": f"{spec.state_ttl_s} s",
        "execution.checkpointing.interval": f"{spec.checkpoint_interval_ms} ms",
        "execution.checkpointing.storage": "filesystem",
        "execution.checkpointing.dir": spec.checkpoints.as_uri(),
        "execution.checkpointing.externalized-checkpoint-retention": "RETAIN_ON_CANCELLATION",
        "execution.checkpointing.num-retained": "3",
        "restart-strategy.type": "none",
    }
    if restore is not None:
        settings["execution.state-recovery.path"] = restore.as_uri()
    if jobmanager:
        host, _, port = jobmanager.partition(":")
        settings.update(
            {
                "execution.target": "remote",
                "rest.address": host,
                "rest.port": port or "8081",
                # The TaskManagers' Python finds saiki through the job's own settings,
                # not through the environment the cluster was started with.
                "python.pythonpath": embedded_python_path(),
                # A lost TaskManager or a failed task: Flink restarts the job from its
                # latest checkpoint once slots are back, backing off up to 30 s.
                "restart-strategy.type": "exponential-delay",
                "restart-strategy.exponential-delay.initial-backoff": "1 s",
                "restart-strategy.exponential-delay.max-backoff": "30 s",
            }
        )
    return settings


def flink_environment(spec: SpeedJobSpec, restore: Path | None, jobmanager: str = "") -> Any:
    """A StreamTableEnvironment configured for the job (local mini-cluster by default)."""
    from pyflink.common import Configuration
    from pyflink.datastream import StreamExecutionEnvironment
    from pyflink.table import StreamTableEnvironment

    configuration = Configuration()
    for key, value in job_configuration(spec, restore, jobmanager).items():
        configuration.set_string(key, value)
    if jobmanager:
        # getExecutionEnvironment outside `flink run` always builds a local environment
        # (it forces execution.target=local): a remote one is asked for by name.
        from pyflink.java_gateway import get_gateway

        gateway = get_gateway()
        host, _, port = jobmanager.partition(":")
        j_env = gateway.jvm.org.apache.flink.streaming.api.environment.StreamExecutionEnvironment
        env = StreamExecutionEnvironment(
            j_env.createRemoteEnvironment(
                host,
                int(port or 8081),
                configuration._j_configuration,
                gateway.new_array(gateway.jvm.String, 0),
            )
        )
    else:
        env = StreamExecutionEnvironment.get_execution_environment(configuration)
    return env, StreamTableEnvironment.create(env)


def save_lineage(spec: SpeedJobSpec) -> None:
    """Remember the job's epoch cutoff: a restored job must run the same SQL."""
    spec.speed_dir.mkdir(parents=True, exist_ok=True)
    (spec.speed_dir / "job.json").write_text(json.dumps(asdict(spec)))


def load_lineage(speed_dir: Path) -> SpeedJobSpec | None:
    """The spec of the job whose checkpoints are on disk, if any."""
    try:
        saved = json.loads((speed_dir / "job.json").read_text())
        saved.setdefault("shape", 1)  # written before shapes were recorded
        return SpeedJobSpec(**saved)
    except (FileNotFoundError, json.JSONDecodeError, TypeError):
        return None


def build_job(env: Any, t_env: Any, spec: SpeedJobSpec, config: SaikiConfig) -> None:
    """Declare the source, the query and the sink on the environments."""
    from pyflink.common import Types

    from saiki.speed.flink_sink import TileSinkFunction

    t_env.execute_sql(source_ddl(spec))
    # Every branch of the query reads the log through one DataStream. Straight from the
    # table, each branch got its own source (the planner pushes a different filter into
    # each), and four sources each re-listing a folder of thousands of segments five
    # times a second kept a core busy while the job was idle.
    rows = t_env.to_data_stream(t_env.sql_query(f"SELECT {row_columns(spec)} FROM log_events"))
    t_env.create_temporary_view("log_rows", t_env.from_data_stream(rows))
    changes = t_env.to_changelog_stream(
        t_env.sql_query(f"SELECT 0 AS k, {sink_line_sql()} AS v FROM ({union_query(spec)})")
    )
    keyed = _keyed_by_first_field(changes)
    keyed.process(TileSinkFunction(spec, config), output_type=Types.INT())


def _keyed_by_first_field(stream: Any) -> Any:
    """``stream`` of ``(k, line)`` rows keyed in the JVM by ``k``.

    PyFlink's ``key_by`` adds a Python operator that wraps each row as ``(key, row)``;
    crossing into Python and back once more per row cost as much as the sink itself.
    The query already has that shape, so Flink's own selector for it keys the stream
    without leaving Java.
    """
    from pyflink.common import Types
    from pyflink.datastream.data_stream import KeyedStream
    from pyflink.java_gateway import get_gateway

    j_stream = stream._j_data_stream
    # The Python operator needs a RowTypeInfo; the table conversion declares its rows
    # with the table runtime's ExternalTypeInfo. Same Row objects, declared plainly:
    row_type = Types.ROW_NAMED(["k", "v"], [Types.INT(), Types.STRING()])
    j_stream.getTransformation().setOutputType(row_type.get_java_type_info())
    key_type = Types.ROW([Types.INT()]).get_java_type_info()
    j_keyed = j_stream.keyBy(get_gateway().jvm.KeyByKeySelector(), key_type)
    return KeyedStream(j_keyed, row_type, stream)
