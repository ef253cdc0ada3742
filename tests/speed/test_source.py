"""The speed job's source: the segment files embedded, a Kafka topic in cluster mode."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from core.config import load_config
from speed.job import SpeedJobSpec, source_ddl
from speed.runner import resolve_spec
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
