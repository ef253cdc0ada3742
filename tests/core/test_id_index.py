"""The event id index: duplicates stay exact across processes, restarts and crashes,
without re-reading the log and without holding the ids in memory."""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path

import pyarrow as pa
import pytest

from saiki.core.eventlog import EventLog, Topic
from saiki.core.id_index import INDEX_FILE, IdIndex
from saiki.core.ingest import SEGMENT_ARROW_SCHEMA, Ingestor
from tests.core.test_ingest import NOW, all_events, event_line


def offsets_are_contiguous(log: EventLog) -> bool:
    segments = log.events.segments()
    return all(a.end == b.first for a, b in itertools.pairwise(segments))


def test_two_appenders_share_the_index_and_never_accept_an_id_twice(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "log")
    server, loader = Ingestor(log, clock=lambda: NOW), Ingestor(log, clock=lambda: NOW)
    assert server.ingest_lines([event_line("a"), event_line("b")], "t").accepted == 2
    second = loader.ingest_lines([event_line("b"), event_line("c")], "t")
    third = server.ingest_lines([event_line("c"), event_line("a"), event_line("d")], "t")
    assert (second.accepted, second.duplicates) == (1, 1)
    assert (third.accepted, third.duplicates) == (1, 2)
    assert all_events(log).column("event_id").to_pylist() == ["a", "b", "c", "d"]
    assert offsets_are_contiguous(log) and log.events.head() == 4
    assert IdIndex(log.root / INDEX_FILE).state().events_head == 4


def test_a_restarted_appender_reads_no_segment_and_lists_the_folder_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = EventLog(tmp_path / "log")
    first = Ingestor(log, clock=lambda: NOW)
    for n in range(20):
        first.ingest_lines([event_line(f"e{n}")], "t")
    first.close()
    reads: list[object] = []
    listings: list[object] = []
    real_read, real_scan = Topic.read, Topic._scan

    def counting_read(self: Topic, *args: object) -> pa.Table:
        reads.append(args)
        return real_read(self, *args)  # type: ignore[arg-type]

    def counting_scan(*args: object) -> object:
        listings.append(args)
        return real_scan(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(Topic, "read", counting_read)
    monkeypatch.setattr(Topic, "_scan", staticmethod(counting_scan))
    restarted = Ingestor(EventLog(log.root), clock=lambda: NOW)
    resent = restarted.ingest_lines([event_line("e3"), event_line("new")], "t")
    assert (resent.accepted, resent.duplicates) == (1, 1)
    assert reads == []  # the ids came from the index, not the log
    at_start = len(listings)
    for n in range(5):
        restarted.ingest_lines([event_line(f"later{n}")], "t")
    assert len(listings) == at_start  # the head comes from the index: no listing per append
    monkeypatch.undo()
    assert log.events.head() == 26 and offsets_are_contiguous(log)


def test_a_writer_that_died_before_its_rename_is_undone_by_the_next_appender(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = EventLog(tmp_path / "log")
    Ingestor(log, clock=lambda: NOW).ingest_lines([event_line("a")], "t")
    dying = Ingestor(log, clock=lambda: NOW)

    def killed(self: Topic, *args: object, **kwargs: object) -> object:
        raise KeyboardInterrupt  # killed after the index commit, before the rename

    monkeypatch.setattr(Topic, "publish", killed)
    monkeypatch.setattr(IdIndex, "settle", lambda *args: None)  # no handler runs: dead
    with pytest.raises(KeyboardInterrupt):
        dying.ingest_lines([event_line("b"), event_line("c")], "t")
    monkeypatch.undo()
    left = IdIndex(log.root / INDEX_FILE)
    assert left.state().events_head == 3 and left.known(["b", "c"]) == {"b", "c"}
    assert log.events.head() == 1  # the entry went in, its segment never did
    other = Ingestor(log, clock=lambda: NOW)
    retry = other.ingest_lines([event_line("c"), event_line("b"), event_line("a")], "t")
    assert (retry.accepted, retry.duplicates) == (2, 1)
    assert all_events(log).column("event_id").to_pylist() == ["a", "c", "b"]
    assert offsets_are_contiguous(log) and left.state().events_head == 3


def test_a_failed_quarantine_rename_keeps_the_events_and_puts_its_head_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = EventLog(tmp_path / "log")
    ingestor = Ingestor(log, clock=lambda: NOW)
    real_publish = Topic.publish

    def quarantine_fails(self: Topic, *args: object, **kwargs: object) -> object:
        if self.directory.name == "quarantine":
            raise OSError("disk full")
        return real_publish(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Topic, "publish", quarantine_fails)
    with pytest.raises(OSError, match="disk full"):
        ingestor.ingest_lines([event_line("a"), b"{broken"], "t")
    monkeypatch.undo()
    state = IdIndex(log.root / INDEX_FILE).state()
    assert (state.events_head, state.quarantine_head) == (1, 0)
    again = ingestor.ingest_lines([event_line("a"), b"{broken"], "t")
    assert (again.accepted, again.duplicates, again.quarantined) == (0, 1, 1)
    assert log.quarantine.head() == 1 and log.events.head() == 1


def test_a_lost_or_foreign_index_is_rebuilt_from_the_log(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "log")
    ingestor = Ingestor(log, clock=lambda: NOW)
    ingestor.ingest_lines([event_line("a"), event_line("b")], "t")
    ingestor.ingest_lines([event_line("c", event_time=NOW - 5)], "t")
    watermark = IdIndex(log.root / INDEX_FILE).state().watermark_ms
    ingestor.close()
    for suffix in ("", "-wal", "-shm"):
        (log.root / (INDEX_FILE + suffix)).unlink(missing_ok=True)
    rebuilt = Ingestor(log, clock=lambda: NOW)
    again = rebuilt.ingest_lines([event_line("a"), event_line("c"), event_line("d")], "t")
    assert (again.accepted, again.duplicates) == (1, 2)
    state = IdIndex(log.root / INDEX_FILE).state()
    assert state.watermark_ms >= watermark == NOW - 5
    rebuilt.close()
    # An index ahead of its log (the log replaced under it) is rebuilt, not trusted.
    other = EventLog(tmp_path / "other")
    Ingestor(other, clock=lambda: NOW).ingest_lines([event_line("x")], "t")
    for suffix in ("", "-wal"):
        source = log.root / (INDEX_FILE + suffix)
        if source.exists():
            shutil.copy(source, other.root / (INDEX_FILE + suffix))
    fresh = Ingestor(other, clock=lambda: NOW)
    result = fresh.ingest_lines([event_line("a"), event_line("x")], "t")
    assert (result.accepted, result.duplicates) == (1, 1)
    assert all_events(other).column("event_id").to_pylist() == ["x", "a"]
    assert offsets_are_contiguous(other)


def test_the_index_holds_every_id_of_the_log_exactly(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "log")
    ingestor = Ingestor(log, clock=lambda: NOW)
    for start in range(0, 3000, 500):
        lines = [event_line(f"id{n}") for n in range(start, start + 500)]
        ingestor.ingest_lines(lines + lines[:3], "t")
    index = IdIndex(log.root / INDEX_FILE)
    ids = pa.concat_tables(t for _, t in log.events.read_range(0, SEGMENT_ARROW_SCHEMA))
    assert index.count() == ids.num_rows == 3000
    assert index.known([f"id{n}" for n in (0, 2999, 3000)]) == {"id0", "id2999"}
