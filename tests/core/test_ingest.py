"""Ingestion: every input ends accepted once, counted as a duplicate, or quarantined."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import orjson
import pyarrow as pa
import pytest

from saiki.core.eventlog import EventLog, Topic
from saiki.core.ingest import (
    QUARANTINE_RECORD_SCHEMA,
    RECORD_KEYS,
    SEGMENT_ARROW_SCHEMA,
    Ingestor,
    RawEvent,
)
from saiki.core.ingest_files import ingest_files
from saiki.simulator import MALFORMED_KINDS, TrafficSummary, World
from tests.conftest import END_MS

NOW = END_MS + 600_000


def event_line(event_id: str, **extra: object) -> bytes:
    record = {
        "event_id": event_id,
        "event_time": END_MS - 1000,
        "user_id": "u1",
        "item_id": "i1",
        "event_type": "IMPRESSION",
        **extra,
    }
    return orjson.dumps(record)


def all_events(log: EventLog) -> pa.Table:
    return pa.concat_tables(t for _, t in log.events.read_range(0, SEGMENT_ARROW_SCHEMA))


def test_a_simulated_file_ends_exactly_where_its_summary_says(
    tmp_path: Path, traffic: tuple[Path, TrafficSummary, World]
) -> None:
    path, summary, _ = traffic
    log = EventLog(tmp_path / "log")
    result = ingest_files(Ingestor(log, clock=lambda: NOW), [path], workers=1)
    assert result.accepted == summary.valid_events
    assert result.duplicates == summary.duplicates
    assert result.quarantined == sum(summary.malformed.values())
    events = all_events(log)
    ids = events.column("event_id").to_pylist()
    assert len(ids) == len(set(ids)) == summary.valid_events
    quarantine = pa.concat_tables(
        t for _, t in log.quarantine.read_range(0, QUARANTINE_RECORD_SCHEMA)
    )
    assert quarantine.num_rows == result.quarantined
    assert all(quarantine.column("reason").to_pylist())
    assert all(quarantine.column("raw").to_pylist())
    # Every malformed kind of the simulator was met and named.
    assert set(summary.malformed) == set(MALFORMED_KINDS)
    fields = Counter(quarantine.column("field").to_pylist())
    assert (
        fields["dwell_ms"]
        == summary.malformed["negative_dwell"] + summary.malformed["dwell_on_impression"]
    )
    assert fields[""] == summary.malformed["broken_json"]
    # Sources point at the input's real line numbers.
    text = path.read_bytes().split(b"\n")
    for source, raw in zip(
        quarantine.column("source").to_pylist(), quarantine.column("raw").to_pylist(), strict=True
    ):
        number = int(source.rsplit(":", 1)[1])
        assert text[number - 1].decode() == raw


def test_worker_processes_produce_the_same_log_as_one_process(
    tmp_path: Path, traffic: tuple[Path, TrafficSummary, World]
) -> None:
    path = traffic[0]
    one, many = EventLog(tmp_path / "one"), EventLog(tmp_path / "many")
    a = ingest_files(Ingestor(one, clock=lambda: NOW), [path], chunk_bytes=200_000, workers=1)
    b = ingest_files(Ingestor(many, clock=lambda: NOW), [path], chunk_bytes=200_000, workers=2)
    assert (a.accepted, a.duplicates, a.quarantined) == (b.accepted, b.duplicates, b.quarantined)
    assert len(one.events.segments()) > 3
    assert (
        all_events(one)
        .drop_columns(["ingest_ms"])
        .equals(all_events(many).drop_columns(["ingest_ms"]))
    )


def test_ingesting_the_same_file_again_adds_nothing(
    tmp_path: Path, traffic: tuple[Path, TrafficSummary, World]
) -> None:
    path, summary, _ = traffic
    log = EventLog(tmp_path / "log")
    ingest_files(Ingestor(log, clock=lambda: NOW), [path], workers=1)
    again = ingest_files(Ingestor(log, clock=lambda: NOW), [path], workers=1)
    assert again.accepted == 0
    assert again.duplicates == summary.valid_events + summary.duplicates
    assert log.events.head() == summary.valid_events


def test_repeats_inside_a_batch_and_across_batches(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "log")
    ingestor = Ingestor(log, clock=lambda: NOW)
    first = ingestor.ingest_lines([event_line("a"), event_line("b"), event_line("a")], "t")
    second = ingestor.ingest_lines([event_line("b"), event_line("c")], "t")
    assert (first.accepted, first.duplicates) == (2, 1)
    assert (second.accepted, second.duplicates) == (1, 1)
    assert all_events(log).column("event_id").to_pylist() == ["a", "b", "c"]


def test_a_failed_publish_loses_nothing_and_a_retry_is_not_a_duplicate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = EventLog(tmp_path / "log")
    ingestor = Ingestor(log, clock=lambda: NOW)
    real_publish = Topic.publish

    def failing(self: Topic, staged: object, *args: object, **kwargs: object) -> object:
        raise OSError("disk full")

    monkeypatch.setattr(Topic, "publish", failing)
    with pytest.raises(OSError, match="disk full"):
        ingestor.ingest_lines([event_line("a")], "t")
    monkeypatch.setattr(Topic, "publish", real_publish)
    assert log.events.head() == 0
    assert not [p for p in (tmp_path / "log" / "events").iterdir() if p.name.startswith(".")]
    retry = ingestor.ingest_lines([event_line("a")], "t")
    assert (retry.accepted, retry.duplicates) == (1, 0)


def test_decoded_inputs_keep_their_payload_and_source_in_quarantine(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "log")
    ingestor = Ingestor(log, clock=lambda: NOW)
    bad = {
        "event_id": "x",
        "user_id": "u",
        "item_id": "i",
        "event_type": "CLICK",
        "event_time": END_MS,
        "dwell_ms": -5,
    }
    result = ingestor.ingest([RawEvent('{"payload": 1}', bad, "grpc:peer")])
    assert result.quarantined == 1 and result.rejections[0][1].field == "dwell_ms"
    record = next(log.quarantine.read_range(0, QUARANTINE_RECORD_SCHEMA))[1].to_pylist()[0]
    assert (record["source"], record["raw"], record["event_id"]) == (
        "grpc:peer",
        '{"payload": 1}',
        "x",
    )


def test_log_records_are_the_events_in_canonical_order_with_their_columns(
    tmp_path: Path,
) -> None:
    log = EventLog(tmp_path)
    lines = [
        event_line("a", event_time=END_MS - 5000, device_id='d\n"x"', request_id="r"),
        event_line("b", event_type="CLICK", dwell_ms=1200, variant="treatment"),
        event_line("c", event_time=END_MS - 9000, user_id='ü},{"', item_id="i9"),
    ]
    Ingestor(log, clock=lambda: NOW).ingest_lines(lines, "test")
    (segment,) = log.events.segments(0)
    records = [orjson.loads(line) for line in segment.path.read_bytes().splitlines()]
    assert [list(r) for r in records] == [list(RECORD_KEYS)] * 3
    for record, line in zip(records, lines, strict=True):
        sent = orjson.loads(line)
        assert {k: record[k] for k in sent} == sent
        assert record["ingest_ms"] == NOW
    assert [r["prior_ms"] for r in records] == [0, END_MS - 5000, END_MS - 1000]
    columns = all_events(log).drop_columns(["offset"]).to_pylist()
    # The Arrow copy holds the same rows (prior_ms lives in the JSON lines only).
    assert columns == [{k: v for k, v in r.items() if k != "prior_ms"} for r in records]
