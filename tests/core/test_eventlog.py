"""The event log: immutable segments, implicit offsets, atomic publication."""

from __future__ import annotations

import itertools
import multiprocessing
import os
import time
from pathlib import Path

import orjson
import pyarrow as pa
import pytest

from saiki.core.eventlog import EventLog, Topic
from saiki.core.ingest import SEGMENT_ARROW_SCHEMA, Ingestor
from saiki.core.schema import Event
from saiki.core.segments import SIDECAR_DIR

SCHEMA = pa.schema([pa.field("n", pa.int64())])


def lines(*numbers: int) -> list[bytes]:
    return [orjson.dumps({"n": n}) for n in numbers]


def test_segments_are_named_by_offsets_and_read_with_them(tmp_path: Path) -> None:
    topic = Topic(tmp_path / "t")
    first = topic.append(lines(10, 11, 12))
    second = topic.append(lines(13, 14))
    assert (first.first, first.count, second.first, second.end) == (0, 3, 3, 5)
    assert [s.path.name for s in topic.segments()] == [
        "seg-0000000000000000-00000003-0000000000000.jsonl",
        "seg-0000000000000003-00000002-0000000000000.jsonl",
    ]
    rows = pa.concat_tables(t for _, t in topic.read_range(1, SCHEMA)).to_pylist()
    assert rows == [{"offset": o, "n": 10 + o} for o in range(1, 5)]
    assert topic.head() == 5


def test_a_kept_topic_sees_what_other_writers_append_in_offset_order(tmp_path: Path) -> None:
    # The speed layer's driver keeps one Topic (it remembers parsed names) while the
    # ingest server, another process, appends through its own.
    reader, writer = Topic(tmp_path / "t"), Topic(tmp_path / "t")
    for n in range(12):  # offsets past 9 and 99 check the order is numeric
        writer.append(lines(*range(n + 1)))
    assert [s.first for s in reader.segments()] == [n * (n + 1) // 2 for n in range(12)]
    writer.append(lines(7))
    listed = reader.segments(from_offset=66)
    assert [(s.first, s.count) for s in listed] == [(66, 12), (78, 1)]
    assert reader.head() == writer.head() == 79


def test_a_staged_segment_is_invisible_until_published(tmp_path: Path) -> None:
    topic = Topic(tmp_path / "t")
    staged = topic.stage(lines(1, 2))
    assert staged.path.parent.name.startswith("_")  # Flink's file source skips the folder
    assert topic.segments() == [] and topic.head() == 0
    topic.publish(staged)
    assert topic.head() == 2
    assert not staged.path.exists()


def test_publishing_only_ever_adds_names_to_the_topic_folder(tmp_path: Path) -> None:
    # Flink's source lists the folder, then stats every name it read: a name removed in
    # between fails the listing, so a staged file must never be renamed out of it.
    topic = Topic(tmp_path / "t")
    before: set[str] = set()
    for n in range(5):
        staged = topic.stage(lines(n), pa.table({"n": [n]}))
        during = set(os.listdir(topic.directory))
        topic.publish(staged, watermark_ms=n)
        after = set(os.listdir(topic.directory))
        assert before <= during <= after
        assert after - during - {SIDECAR_DIR} == {topic.segments()[-1].path.name}
        before = after


def test_stale_staged_files_of_a_crashed_writer_are_swept(tmp_path: Path) -> None:
    topic = Topic(tmp_path / "t")
    staged = topic.stage(lines(1))
    assert topic.sweep_staged(max_age_s=3600) == 0
    assert topic.sweep_staged(max_age_s=-1) == 1 and not staged.path.exists()


def test_the_ingestor_sweeps_what_a_crashed_writer_left_staged(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "log")
    staged = log.events.stage(lines(1))
    old = time.time() - 7200
    os.utime(staged.path, (old, old))
    Ingestor(log)
    assert not staged.path.exists() and log.events.head() == 0


def test_a_damaged_sidecar_falls_back_to_the_json_segment(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "log")
    ingestor = Ingestor(log, clock=lambda: 1_795_176_000_000)
    event = (
        b'{"event_id":"a","event_time":1795175000000,"user_id":"u","item_id":"i",'
        b'"event_type":"IMPRESSION"}'
    )
    ingestor.ingest_lines([event], "test")
    segment = log.events.segments()[0]
    segment.sidecar.write_bytes(b"not arrow")
    table = log.events.read(segment, SEGMENT_ARROW_SCHEMA)
    assert table.column("event_id").to_pylist() == ["a"]
    assert table.column("offset").to_pylist() == [0]


def _writer(root: str, worker: int, count: int) -> None:
    ingestor = Ingestor(EventLog(Path(root)), clock=lambda: 1_795_176_000_000)
    for batch in range(count):
        # Half of each batch is shared by both writers: only one may win each id.
        ids = [f"w{worker}-{batch}-{n}" for n in range(20)] + [
            f"shared-{batch}-{n}" for n in range(20)
        ]
        ingestor.ingest_lines(
            [
                orjson.dumps(
                    Event(
                        i, 1_795_175_000_000, "u", "x", None, "IMPRESSION", None, None, None
                    )._asdict()
                )
                for i in ids
            ],
            f"writer{worker}",
        )


def test_two_processes_appending_at_once_keep_offsets_dense_and_ids_unique(
    tmp_path: Path,
) -> None:
    context = multiprocessing.get_context("spawn")
    procs = [context.Process(target=_writer, args=(str(tmp_path), w, 15)) for w in (1, 2)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0
    log = EventLog(tmp_path)
    table = pa.concat_tables(t for _, t in log.events.read_range(0, SEGMENT_ARROW_SCHEMA))
    ids = table.column("event_id").to_pylist()
    assert len(ids) == len(set(ids)) == 2 * 15 * 20 + 15 * 20
    assert table.column("offset").to_pylist() == list(range(len(ids)))


def test_publishing_needs_a_staged_segment_with_rows(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="empty"):
        Topic(tmp_path).stage([])


def test_archiving_moves_a_prefix_out_of_the_listed_folder_and_every_offset_stays(
    tmp_path: Path,
) -> None:
    topic, reader = Topic(tmp_path / "t"), Topic(tmp_path / "t")
    columns = pa.table({"n": [0]})
    segments = [topic.append(lines(n), columns.set_column(0, "n", [[n]])) for n in range(5)]
    listed_before = reader.segments()  # a reader that listed before the archive
    # Only a prefix moves: asking for 0, 1 and 3 moves 0 and 1; the newest never moves.
    assert topic.archive([segments[0], segments[1], segments[3]]) == 2
    assert topic.archive(segments) == 2  # 2 and 3; 4, the newest, stays
    assert [s.first for s in topic.live_segments()] == [4]
    assert sorted(p.name for p in (tmp_path / "t").iterdir()) == [
        "_archive",
        SIDECAR_DIR,
        "_staging",
        segments[4].path.name,
    ]
    # Each move merged its small segments into one: 0-1, then 2-3.
    assert [(s.first, s.count) for s in reader.archived()] == [(0, 2), (2, 2)]
    assert [s.first for s in reader.segments()] == [0, 2, 4]
    assert [s.first for s in reader.segments(from_offset=4)] == [4]  # the folder alone
    assert reader.head() == topic.head() == 5
    rows = pa.concat_tables(t for _, t in reader.read_range(0, SCHEMA)).to_pylist()
    assert rows == [{"offset": n, "n": n} for n in range(5)]
    # A segment listed before it was merged is still read (its offsets of the merged one).
    moved = reader.read(listed_before[1], SCHEMA).to_pylist()
    assert moved == [{"offset": 1, "n": 1}]
    assert all(s.sidecar.exists() for s in reader.archived())  # merged Arrow copies
    appended = topic.append(lines(5))
    assert appended.first == 5 and reader.head() == 6


def test_archived_segments_come_back_as_a_suffix_and_readers_follow_them(tmp_path: Path) -> None:
    topic, reader = Topic(tmp_path / "t", merge_bytes=0), Topic(tmp_path / "t")
    columns = pa.table({"n": [0]})
    segments = [topic.append(lines(n), columns.set_column(0, "n", [[n]])) for n in range(6)]
    assert topic.archive(segments) == 5
    listed_in_archive = reader.segments()
    # Everything holding an offset at or after 3 comes back, with its Arrow copy; 0-2 stay.
    assert topic.unarchive(3) == 2
    assert [s.first for s in topic.live_segments()] == [3, 4, 5]
    assert [s.first for s in topic.archived()] == [0, 1, 2]
    assert (tmp_path / "t" / SIDECAR_DIR / segments[3].sidecar.name).exists()
    assert [s.first for s in reader.segments()] == list(range(6))
    # A segment listed in the archive and read after it came back is found in the folder.
    assert reader.read(listed_in_archive[4], SCHEMA).to_pylist() == [{"offset": 4, "n": 4}]
    assert topic.unarchive(3) == 0  # nothing left at or after 3 in the archive
    assert topic.archive(topic.live_segments()) == 2 and topic.head() == 6


def test_a_listing_that_races_a_segment_coming_back_lists_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    topic, reader = Topic(tmp_path / "t", merge_bytes=0), Topic(tmp_path / "t")
    segments = [topic.append(lines(n)) for n in range(4)]
    topic.archive(segments)
    archived = Topic.archived
    calls = []

    def archived_then_moved(self: Topic) -> list:  # type: ignore[type-arg]
        calls.append(1)
        if len(calls) == 1:  # the folder was listed before, the archive after: 1-2 in neither
            topic.unarchive(1)
        return archived(self)

    monkeypatch.setattr(Topic, "archived", archived_then_moved)
    assert [s.first for s in reader.segments()] == [0, 1, 2, 3]
    assert len(calls) == 3  # the racing listing's, the unarchive's, the second listing's


def _log_watermarks(topic: Topic) -> dict[int, int]:
    """Each record's log watermark as the speed job computes it from a segment file: the
    greater of the name's watermark and the record's ``prior_ms``."""
    marks = {}
    for segment in topic.segments():
        path = segment.path if segment.path.exists() else topic.find(segment.path.name)
        assert path is not None
        records = Path(getattr(path, "path", path)).read_bytes().splitlines()
        assert len(records) == segment.count
        for n, line in enumerate(records):
            marks[segment.first + n] = max(segment.watermark_ms, orjson.loads(line)["prior_ms"])
    return marks


def _events(ingestor: Ingestor, batch: int, times: list[int]) -> None:
    ingestor.ingest_lines(
        [
            orjson.dumps(
                Event(
                    f"e{batch}-{n}", t, f"u{n}", "x", None, "IMPRESSION", None, None, None
                )._asdict()
            )
            for n, t in enumerate(times)
        ],
        "test",
    )


def test_merged_archive_segments_keep_every_records_offset_row_and_log_watermark(
    tmp_path: Path,
) -> None:
    """A fresh speed job re-reads archived segments: merged, each record must keep its
    offset, its fields and the log watermark its lateness is decided on."""
    log = EventLog(tmp_path / "log")
    ingestor = Ingestor(log, clock=lambda: 1_795_176_000_000)
    base = 1_795_175_000_000
    # Out of order within and across calls: later calls start below what came before.
    for batch in range(6):
        _events(ingestor, batch, [base + 9_000 * batch, base + 1_000 * batch, base + 30_000])
    before_rows = pa.concat_tables(t for _, t in log.events.read_range(0, SEGMENT_ARROW_SCHEMA))
    before_marks = _log_watermarks(log.events)
    assert len({s.watermark_ms for s in log.events.segments()}) > 2  # the names differ
    assert log.events.archive(log.events.live_segments()) == 5
    merged = log.events.archived()
    assert [(s.first, s.count) for s in merged] == [(0, 15)]
    assert merged[0].sidecar.exists()
    after_rows = pa.concat_tables(t for _, t in log.events.read_range(0, SEGMENT_ARROW_SCHEMA))
    assert after_rows.equals(before_rows)
    assert _log_watermarks(log.events) == before_marks
    # Brought back for a fresh job, the merged segment reads the same from its JSON too.
    merged[0].sidecar.unlink()
    assert log.events.unarchive(0) == 1
    from_json = [t for _, t in log.events.read_range(0, SEGMENT_ARROW_SCHEMA)]
    assert [r for t in from_json for r in t.to_pylist()] == before_rows.to_pylist()
    assert _log_watermarks(log.events) == before_marks


def test_parts_a_crash_left_beside_their_merged_segment_are_ignored_then_removed(
    tmp_path: Path,
) -> None:
    topic, reader = Topic(tmp_path / "t"), Topic(tmp_path / "t")
    segments = [topic.append(lines(n, n + 100)) for n in range(0, 8, 2)]
    kept = {s.path.name: s.path.read_bytes() for s in segments[1:3]}
    assert topic.archive(segments) == 3
    for name, payload in kept.items():  # the parts' removal never happened
        (tmp_path / "t" / name).write_bytes(payload)
    for listing in (reader.segments(), reader.segments(2), reader.segments(5)):
        assert all(a.end == b.first for a, b in itertools.pairwise(listing))
    rows = pa.concat_tables(t for _, t in reader.read_range(0, SCHEMA)).to_pylist()
    assert [r["offset"] for r in rows] == list(range(8))
    assert topic.drop_covered() == 2
    assert [s.first for s in topic.live_segments()] == [6]
    assert [(s.first, s.count) for s in topic.archived()] == [(0, 6)]
    # Brought back, the merged segment is the only copy of its offsets in the folder.
    assert topic.unarchive(0) == 1
    assert [(s.first, s.count) for s in topic.live_segments()] == [(0, 6), (6, 2)]


def test_large_segments_and_a_falling_watermark_are_not_merged(tmp_path: Path) -> None:
    topic = Topic(tmp_path / "t", merge_bytes=400)
    small = [orjson.dumps({"n": n, "pad": "x" * 20}) for n in range(2)]  # ~60 bytes
    big = [orjson.dumps({"n": 9, "pad": "x" * 120})]  # over a quarter of 400 bytes
    for first, payload, watermark in [
        (0, small, 5),
        (2, small, 6),
        (4, big, 7),
        (5, small, 8),
        (7, small, 3),  # below the run's first: a new run starts
        (9, small, 9),
        (11, small, 9),
    ]:
        topic.publish(topic.stage(payload), watermark, first)
    assert topic.archive(topic.live_segments()) == 6
    assert [(s.first, s.count) for s in topic.archived()] == [(0, 4), (4, 1), (5, 2), (7, 4)]
