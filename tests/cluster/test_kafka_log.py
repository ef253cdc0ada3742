"""The event log on a Kafka topic, against a real Kafka-protocol broker (Tansu): two
servers' ``Ingest`` write to one topic with an idempotent producer, the master loader
consumes it exactly once (offsets in the snapshot summary), a resend becomes one row,
and a loader killed before its commit loses and doubles nothing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import orjson
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from saiki.batch.kafka_load import KAFKA_OFFSETS
from saiki.batch.master import MasterDataset
from saiki.batch.tables import EVENTS_TABLE, NEXT_OFFSET, QUARANTINE_TABLE
from saiki.core.config import SaikiConfig
from saiki.core.errors import ConfigError
from saiki.core.eventlog import EventLog
from saiki.core.kafka_log import KafkaAppender, read_topic
from saiki.core.timeutil import now_ms
from saiki.serving.server import RunningServer, start_server
from saiki.speed.runner import run_speed
from saiki.v1 import events_pb2, events_pb2_grpc
from tests.conftest import make_config, run_saiki

pytestmark = [pytest.mark.slow, pytest.mark.cluster]


def _config(root: Path, bootstrap: str, topic: str) -> SaikiConfig:
    root.mkdir(parents=True)
    (root / "saiki.toml").write_text(
        f'[log]\nbackend = "kafka"\nkafka_bootstrap = "{bootstrap}"\nkafka_topic = "{topic}"\n'
    )
    return make_config(root)


@pytest.fixture
def two_servers(
    kafka_broker: str, tmp_path: Path
) -> Iterator[tuple[SaikiConfig, list[events_pb2_grpc.EventServiceStub]]]:
    topic = f"events-{tmp_path.name}"
    configs = [_config(tmp_path / name, kafka_broker, topic) for name in ("a", "b")]
    running: list[RunningServer] = [start_server(c, host="127.0.0.1", port=0) for c in configs]
    channels = [grpc.insecure_channel(f"127.0.0.1:{r.port}") for r in running]
    try:
        yield configs[0], [events_pb2_grpc.EventServiceStub(c) for c in channels]
    finally:
        for channel in channels:
            channel.close()
        for server in running:
            server.stop(0)


def _event(event_id: str, minutes_ago: int, kind: int = events_pb2.IMPRESSION) -> events_pb2.Event:
    when = Timestamp()
    when.FromMilliseconds(now_ms() - minutes_ago * 60_000)
    return events_pb2.Event(
        event_id=event_id, event_time=when, user_id="u1", item_id="i1", event_type=kind
    )


def _loaded(config: SaikiConfig, name: str = EVENTS_TABLE) -> list[str]:
    column = "event_id"
    return sorted(MasterDataset(config).table(name).scan().to_arrow().column(column).to_pylist())


def _summary(config: SaikiConfig) -> dict[str, str]:
    snapshot = MasterDataset(config).table(EVENTS_TABLE).current_snapshot()
    assert snapshot is not None and snapshot.summary is not None
    return dict(snapshot.summary.additional_properties)


def test_ingest_on_two_servers_reaches_the_master_dataset_exactly_once(
    two_servers: tuple[SaikiConfig, list[events_pb2_grpc.EventServiceStub]],
) -> None:
    config, (first, second) = two_servers
    events = [_event(f"k-{n}", minutes_ago=10 - n) for n in range(8)]
    bad = _event("k-bad", minutes_ago=1)
    bad.ClearField("user_id")
    reply = first.Ingest(events_pb2.IngestRequest(events=[*events, events[0], bad]), timeout=30)
    assert (reply.accepted, reply.duplicates, reply.quarantined) == (8, 1, 1)
    assert reply.rejections[0].field == "user_id"
    # The same events through the other server: a topic has no log-wide id index, so
    # they are records again; the loader keeps one row per event_id.
    assert second.Ingest(events_pb2.IngestRequest(events=events), timeout=30).accepted == 8

    # The topic's records are the segment files' records: envelope, then the event.
    records = [
        orjson.loads(v)
        for chunk, _, _ in read_topic(config.log.kafka_bootstrap, config.log.kafka_topic, {})
        for v in chunk
    ]
    assert len(records) == 16
    assert list(records[0])[:3] == ["ingest_ms", "prior_ms", "event_id"]
    times = [min(r["event_time"], r["ingest_ms"]) for r in records[:8]]
    assert [r["prior_ms"] for r in records[:8]] == [0, *(max(times[:i]) for i in range(1, 8))]

    run_saiki(config, "master", "load")
    assert _loaded(config) == sorted(e.event_id for e in events)
    assert _loaded(config, QUARANTINE_TABLE) == ["k-bad"]
    summary = _summary(config)
    assert json.loads(summary[KAFKA_OFFSETS]) == {"0": 16} and summary[NEXT_OFFSET] == "16"
    snapshots = len(MasterDataset(config).table(EVENTS_TABLE).snapshots())
    run_saiki(config, "master", "load")  # nothing new: no snapshot
    assert len(MasterDataset(config).table(EVENTS_TABLE).snapshots()) == snapshots

    # A loader killed after writing its files, before the commit: nothing is recorded,
    # and the rerun loads the same records once.
    more = [_event(f"k-more-{n}", minutes_ago=2) for n in range(5)]
    assert second.Ingest(events_pb2.IngestRequest(events=more), timeout=30).accepted == 5

    def killed(table: str, offset: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        MasterDataset(config, before_commit=killed).load(EventLog(config.log_dir))
    assert _loaded(config) == sorted(e.event_id for e in events)
    results = MasterDataset(config).load(EventLog(config.log_dir))
    assert (results[0].rows, results[0].next_offset) == (5, 21)
    assert _loaded(config) == sorted(e.event_id for e in [*events, *more])
    assert json.loads(_summary(config)[KAFKA_OFFSETS]) == {"0": 21}


def test_saiki_ingest_of_a_file_goes_to_the_topic_and_loads_once(
    kafka_broker: str, tmp_path: Path
) -> None:
    config = _config(tmp_path / "data", kafka_broker, f"file-{tmp_path.name}")
    at = now_ms() - 60_000
    good = [
        {
            "event_id": f"f-{n}",
            "event_time": at,
            "user_id": "u",
            "item_id": "i",
            "event_type": "IMPRESSION",
        }
        for n in range(3)
    ]
    lines = [json.dumps(e) for e in good] + ["", json.dumps(good[0]), '{"event_id": "f-bad"}']
    source = tmp_path / "events.jsonl"
    source.write_text("\n".join(lines) + "\n")
    printed = run_saiki(config, "ingest", str(source))
    assert "3 accepted, 1 duplicates, 1 quarantined" in printed, printed
    assert _loaded(config) == ["f-0", "f-1", "f-2"]
    quarantine = MasterDataset(config).table(QUARANTINE_TABLE).scan().to_arrow()
    assert quarantine.column("source").to_pylist() == ["events.jsonl:6"]  # its line number


def test_the_local_speed_job_on_kafka_names_the_missing_connector(tmp_path: Path) -> None:
    config = _config(tmp_path / "data", "127.0.0.1:9", "events")
    with pytest.raises(ConfigError, match="flink-sql-connector-kafka"):
        run_speed(config, until_idle=True)


def test_kafka_properties_reach_the_clients(kafka_broker: str, tmp_path: Path) -> None:
    """[log.kafka_properties] go to librdkafka as they are (what a managed Kafka's SASL
    settings need): one it does not know is refused, naming it; a valid one is taken."""
    wrong = {"no.such.setting": "1"}
    with pytest.raises(ConfigError, match=r"no\.such\.setting"):
        KafkaAppender(kafka_broker, f"props-{tmp_path.name}", properties=wrong)
    with pytest.raises(ConfigError, match=r"no\.such\.setting"):
        list(read_topic(kafka_broker, "anything", {}, properties=wrong))
    appender = KafkaAppender(
        kafka_broker, f"props-{tmp_path.name}", properties={"client.id": "saiki-test"}
    )
    appender.close()
