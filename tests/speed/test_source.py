"""The speed job's source: the segment files embedded, a Kafka topic in cluster mode."""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path

from saiki.core.config import load_config
from saiki.speed.job import source_ddl
from saiki.speed.runner import resolve_spec
from saiki.speed.shape import (
    JOB_SHAPE,
    SINK_LINE_FIELDS,
    SpeedJobSpec,
    parse_sink_line,
    sink_line_sql,
)
from tests.conftest import make_config

SPEC = SpeedJobSpec(
    data_dir="/data",
    log_dir="/data/log/events",
    epoch_cutoff_ms=0,
    allowed_lateness_s=300,
    checkpoint_interval_ms=2000,
    sink_flush_ms=100,
)


def test_the_embedded_source_follows_the_segment_files() -> None:
    ddl = source_ddl(SPEC)
    assert "'connector' = 'filesystem'" in ddl
    assert "'path' = 'file:///data/log/events'" in ddl
    assert "'source.monitor-interval' = '200ms'" in ddl
    assert "kafka" not in ddl


def test_cluster_mode_reads_the_kafka_topic_with_the_same_columns() -> None:
    ddl = source_ddl(replace(SPEC, kafka_bootstrap="broker:9092", kafka_topic="saiki.events"))
    assert "'connector' = 'kafka'" in ddl
    assert "'topic' = 'saiki.events'" in ddl
    assert "'properties.bootstrap.servers' = 'broker:9092'" in ddl
    assert "filesystem" not in ddl
    for column in ("event_id STRING", "event_time BIGINT", "prior_ms BIGINT", "log_wm AS"):
        assert column in ddl


def test_the_kafka_backend_is_chosen_by_configuration(tmp_path: Path) -> None:
    embedded, _ = resolve_spec(make_config(tmp_path / "a"), fresh=True)
    assert embedded.kafka_bootstrap == ""
    config = load_config(
        tmp_path / "b",
        environ={"SAIKI_LOG_BACKEND": "kafka", "SAIKI_LOG_KAFKA_BOOTSTRAP": "broker:9092"},
    )
    clustered, _ = resolve_spec(config, fresh=True)
    assert (clustered.kafka_bootstrap, clustered.kafka_topic) == ("broker:9092", "saiki.events")


def test_the_kafka_clients_settings_reach_the_source(tmp_path: Path) -> None:
    """[log.kafka_properties] (a managed Kafka's SASL settings) become the source's
    ``properties.<key>`` options, quoted as Flink SQL strings."""
    (tmp_path / "saiki.toml").write_text(
        '[log]\nbackend = "kafka"\nkafka_bootstrap = "broker:9092"\n'
        '[log.kafka_properties]\n"security.protocol" = "SASL_SSL"\n'
        "\"sasl.jaas.config\" = \"PlainLoginModule required username='u' password='p';\"\n"
    )
    spec, _ = resolve_spec(load_config(tmp_path, environ={}), fresh=True)
    ddl = source_ddl(spec)
    assert "'properties.security.protocol' = 'SASL_SSL'," in ddl
    assert (
        "'properties.sasl.jaas.config' = "
        "'PlainLoginModule required username=''u'' password=''p'';'," in ddl
    )
    assert ddl.count("'properties.bootstrap.servers' = 'broker:9092'") == 1


def test_a_sink_line_splits_back_into_its_fields_whatever_the_id_holds() -> None:
    # As Flink's CONCAT_WS renders a row: every field as text, in SINK_LINE_FIELDS order.
    for entity_id in ("u1", "a|b|c", "ü|€ 漢字", ""):
        row = {
            "kind": "tile",
            "entity": "user",
            "minute_ms": 1_795_000_020_000,
            "a0": 3,
            "a1": 1,
            "a2": 45_000,
            "events": 4,
            "max_event_ms": 1_795_000_059_999,
            "max_ingest_ms": 1_795_000_061_000,
            "entity_id": entity_id,
        }
        assert tuple(row) == SINK_LINE_FIELDS
        line = parse_sink_line("|".join(str(v) for v in row.values()))
        assert line.entity_id == entity_id
        assert (line.kind, line.entity, line.minute_ms) == ("tile", "user", 1_795_000_020_000)
        assert line.values == (3, 1, 45_000) and line.events == 4
        assert (line.max_event_ms, line.max_ingest_ms) == (1_795_000_059_999, 1_795_000_061_000)
    # Late and progress rows leave the tile's fields empty (NULL rendered as '').
    progress = parse_sink_line("progress|||0|0|0|120|1795000059999|1795000061000|")
    assert (progress.kind, progress.events, progress.minute_ms) == ("progress", 120, 0)


def test_the_sink_line_sql_renders_every_field_in_order() -> None:
    sql = sink_line_sql()
    positions = [sql.index(f"CAST({field} AS STRING)") for field in SINK_LINE_FIELDS]
    assert positions == sorted(positions)
    assert sql.startswith("CONCAT_WS('|'")


def test_a_checkpoint_of_an_older_job_shape_is_not_restored(tmp_path: Path) -> None:
    import json

    config = make_config(tmp_path)
    speed_dir = config.data_dir / "speed"
    current, _ = resolve_spec(config, fresh=True)
    saved = asdict(replace(current, epoch_cutoff_ms=123))
    (speed_dir / "checkpoints" / "job" / "chk-3").mkdir(parents=True)
    (speed_dir / "checkpoints" / "job" / "chk-3" / "_metadata").write_bytes(b"x")
    (speed_dir / "job.json").write_text(json.dumps(saved))
    resumed, checkpoint = resolve_spec(config, fresh=False)
    assert checkpoint is not None and resumed.epoch_cutoff_ms == 123  # same shape: resumed
    del saved["shape"]  # a job.json written before shapes were recorded
    (speed_dir / "job.json").write_text(json.dumps(saved))
    started, checkpoint = resolve_spec(config, fresh=False)
    assert checkpoint is None and started.shape == JOB_SHAPE
    assert not (speed_dir / "checkpoints").exists()  # discarded, as --fresh does


def test_the_job_s_intervals_are_configured_and_apply_to_a_resumed_job(tmp_path: Path) -> None:
    import json

    from saiki.speed.job import job_configuration

    (tmp_path / "saiki.toml").write_text(
        "[speed]\nmonitor_ms = 750\ncheckpoint_interval_ms = 5000\nobject_reuse = false\n"
    )
    config = make_config(tmp_path)
    fresh, _ = resolve_spec(config, fresh=True)
    assert (fresh.monitor_ms, fresh.checkpoint_interval_ms, fresh.object_reuse) == (
        750,
        5000,
        False,
    )
    assert "'source.monitor-interval' = '750ms'" in source_ddl(fresh)
    speed_dir = config.data_dir / "speed"
    (speed_dir / "checkpoints" / "job" / "chk-1").mkdir(parents=True)
    (speed_dir / "checkpoints" / "job" / "chk-1" / "_metadata").write_bytes(b"x")
    older = replace(fresh, monitor_ms=200, checkpoint_interval_ms=2000, object_reuse=True)
    (speed_dir / "job.json").write_text(json.dumps(asdict(older)))
    resumed, checkpoint = resolve_spec(config, fresh=False)
    assert checkpoint is not None
    settings = job_configuration(resumed)
    assert settings["execution.checkpointing.interval"] == "5000 ms"
    assert settings["pipeline.object-reuse"] == "false"
    assert resumed.monitor_ms == 750


def test_checkpoints_go_to_the_configured_shared_path(tmp_path: Path) -> None:
    import json

    from saiki.speed.job import job_configuration

    shared = tmp_path / "shared" / "checkpoints"
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "saiki.toml").write_text(f'[speed]\ncheckpoint_dir = "{shared}"\n')
    config = make_config(tmp_path / "data")
    fresh, _ = resolve_spec(config, fresh=True)
    assert fresh.checkpoints == shared
    assert job_configuration(fresh)["execution.checkpointing.dir"] == shared.as_uri()
    (shared / "job" / "chk-2").mkdir(parents=True)
    (shared / "job" / "chk-2" / "_metadata").write_bytes(b"x")
    (config.data_dir / "speed").mkdir(parents=True, exist_ok=True)
    (config.data_dir / "speed" / "job.json").write_text(json.dumps(asdict(fresh)))
    resumed, checkpoint = resolve_spec(config, fresh=False)
    assert checkpoint == shared / "job" / "chk-2" and resumed.checkpoints == shared
    resolve_spec(config, fresh=True)
    assert not shared.exists()  # --fresh discards them where they are
