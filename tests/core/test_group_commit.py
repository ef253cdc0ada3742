"""Group commit: many callers, one segment and one fsync per group, each caller told
exactly what became of its own events, and nobody acknowledged before the fsync."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import orjson
import pytest

from saiki.core import eventlog
from saiki.core.eventlog import EventLog, Topic
from saiki.core.group_commit import GroupCommitter
from saiki.core.ingest import Ingestor, IngestResult, RawEvent
from saiki.core.schema import Rejection
from tests.conftest import END_MS
from tests.core.test_ingest import NOW, all_events


def raw(event_id: str, event_time: int = END_MS - 1000) -> RawEvent:
    record = {
        "event_id": event_id,
        "event_time": event_time,
        "user_id": "u1",
        "item_id": "i1",
        "event_type": "IMPRESSION",
    }
    return RawEvent(orjson.dumps(record).decode(), record, "test")


def bad(reason: str) -> RawEvent:
    return RawEvent('{"x": 1}', Rejection("", "event_id", reason), "test")


def _submit_together(committer: GroupCommitter, calls: list[list[RawEvent]]) -> list[IngestResult]:
    results: list[IngestResult | None] = [None] * len(calls)
    threads = [
        threading.Thread(target=lambda i=i: results.__setitem__(i, committer.submit(calls[i])))
        for i in range(len(calls))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert all(r is not None for r in results)
    return results  # type: ignore[return-value]


def test_calls_in_one_linger_share_one_segment_with_exact_counts(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "log")
    ingestor = Ingestor(log, clock=lambda: NOW)
    ingestor.ingest([raw("old")])  # already in the log
    committer = GroupCommitter(ingestor, linger_ms=500)
    calls = [
        [raw("a"), raw("b"), raw("old")],
        [raw("b"), raw("c"), bad("missing")],
        [raw("c"), raw("c"), raw("d")],
    ]
    results = _submit_together(committer, calls)
    committer.close()
    assert committer.groups == 1 and committer.calls == 3
    assert len(log.events.segments()) == 2  # "old", then the whole group
    # Whichever call the group took first owns an id two calls share (b, c).
    assert sum(r.accepted for r in results) == 4  # a, b, c, d: each once
    assert sum(r.duplicates for r in results) == 4  # old, b, c and the repeated c
    assert sum(r.quarantined for r in results) == 1
    assert [r.quarantined for r in results] == [0, 1, 0]
    assert results[1].rejections[0][0] == 2  # the caller's own index
    ids = all_events(log).column("event_id").to_pylist()
    assert sorted(ids) == ["a", "b", "c", "d", "old"]


def test_no_caller_is_acknowledged_before_the_fsync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = EventLog(tmp_path / "log")
    committer = GroupCommitter(Ingestor(log, clock=lambda: NOW), linger_ms=0)
    release, entered = threading.Event(), threading.Event()
    real_fsync = eventlog.fsync_path

    def slow_fsync(path: Path) -> None:
        if path == log.events.directory:  # the publish's directory fsync
            entered.set()
            assert release.wait(30)
        real_fsync(path)

    monkeypatch.setattr(eventlog, "fsync_path", slow_fsync)
    answered: list[IngestResult] = []
    caller = threading.Thread(target=lambda: answered.append(committer.submit([raw("a")])))
    caller.start()
    assert entered.wait(30)
    caller.join(0.5)
    assert caller.is_alive() and not answered  # renamed, not yet durable: no answer
    release.set()
    caller.join(30)
    committer.close()
    assert answered[0].accepted == 1


def test_a_failed_append_reaches_every_caller_of_the_group_and_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = EventLog(tmp_path / "log")
    committer = GroupCommitter(Ingestor(log, clock=lambda: NOW), linger_ms=300)
    real_publish = Topic.publish

    def failing(self: Topic, staged: object, *args: object, **kwargs: object) -> object:
        raise OSError("disk full")

    monkeypatch.setattr(Topic, "publish", failing)
    errors: list[str] = []

    def call(events: list[RawEvent]) -> None:
        try:
            committer.submit(events)
        except OSError as exc:
            errors.append(str(exc))

    threads = [threading.Thread(target=call, args=([raw(x)],)) for x in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == ["disk full", "disk full"] and log.events.head() == 0
    monkeypatch.setattr(Topic, "publish", real_publish)
    retried = _submit_together(committer, [[raw("a")], [raw("b")]])
    assert [r.accepted for r in retried] == [1, 1]
    resent = committer.submit([raw("a"), raw("b")])  # a group the log holds whole
    committer.close()
    assert (resent.accepted, resent.duplicates) == (0, 2)
    assert sorted(all_events(log).column("event_id").to_pylist()) == ["a", "b"]


def test_the_linger_is_a_floor_between_commits_not_a_wait_after_quiet(tmp_path: Path) -> None:
    """Calls in a stream share one segment per linger; a call after a quiet spell is
    committed at once."""
    log = EventLog(tmp_path / "log")
    linger_s = 1.5
    committer = GroupCommitter(Ingestor(log, clock=lambda: NOW), linger_ms=linger_s * 1000)
    time.sleep(linger_s)  # quiet since the committer started
    began = time.monotonic()
    committer.submit([raw("quiet")])
    assert time.monotonic() - began < linger_s / 2  # not held for the linger
    # A stream of calls, each sent once the previous one is answered: the next group is
    # taken no sooner than a linger after the previous one began.
    taken = []
    for n in range(3):
        committer.submit([raw(f"s{n}")])
        taken.append(time.monotonic())
    committer.close()
    gaps = [b - a for a, b in zip([began, *taken], taken, strict=False)]
    assert all(gap >= linger_s * 0.95 for gap in gaps), gaps
    assert len(log.events.segments()) == 4 and committer.groups == 4
