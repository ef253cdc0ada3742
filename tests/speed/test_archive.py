"""The running archive: what a job read whole leaves the folder once checkpoints cover it."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import orjson
import pytest

from saiki.core.eventlog import Topic
from saiki.core.segments import Segment
from saiki.feature_repo.online import SpeedStatus
from saiki.speed.archive import RunningArchive, restore_covered
from saiki.speed.job import latest_checkpoint


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def checkpoint(root: Path, n: int) -> None:
    """A completed checkpoint, as Flink leaves it (newest by its metadata's mtime)."""
    metadata = root / "job" / f"chk-{n}" / "_metadata"
    metadata.parent.mkdir(parents=True)
    metadata.write_bytes(b"x")
    os.utime(metadata, (n, n))


def running(
    tmp_path: Path, segments: int, events: int, every_s: float = 0.0
) -> tuple[Topic, Path, Path, RunningArchive, Clock]:
    """A log of ``segments`` segments of ``events`` each, and a running archive over it:
    the topic, the checkpoints' folder, the record, the archive and its clock."""
    topic = Topic(tmp_path / "log")
    for n in range(segments):
        topic.append([orjson.dumps({"n": n})] * events)
    checkpoints, record, clock = tmp_path / "checkpoints", tmp_path / "archived.json", Clock()
    archive = RunningArchive(topic, checkpoints, record, every_s=every_s, clock=clock)
    return topic, checkpoints, record, archive, clock


def move_due(archive: RunningArchive, checkpoints: Path, read_through: int) -> None:
    """The job has read through ``read_through`` at checkpoint 1, and two checkpoints
    complete after: the next tick moves what was read."""
    checkpoint(checkpoints, 1)
    assert archive.tick(SpeedStatus(read_through=read_through)) == 0
    checkpoint(checkpoints, 2)
    assert archive.tick(None) == 0
    checkpoint(checkpoints, 3)


def test_read_segments_leave_the_folder_after_two_later_checkpoints(tmp_path: Path) -> None:
    # segments at 0, 10, ..., 50
    topic, checkpoints, record, archive, clock = running(tmp_path, 6, 10, every_s=5.0)
    checkpoint(checkpoints, 1)
    status = SpeedStatus(read_through=30)
    assert archive.tick(status) == 0  # not 5 s since it started
    clock.now = 5.0
    assert archive.tick(status) == 0  # watching 30 from now on
    status.read_through = 60  # read on: what is watched stays 30
    assert archive.tick(status) == 0
    checkpoint(checkpoints, 2)  # may have begun before the sink saw 30
    assert archive.tick(status) == 0
    assert [s.first for s in topic.live_segments()] == [0, 10, 20, 30, 40, 50]
    checkpoint(checkpoints, 3)
    assert archive.tick(status) == 3  # 0, 10, 20: wholly below 30
    assert [s.first for s in topic.live_segments()] == [30, 40, 50]
    # A restore from checkpoint 3 or a newer one has read everything before 30.
    assert json.loads(record.read_text()) == {"through": 30, "checkpoint_ms": 3000}
    # The next round waits its 5 s, then watches 60: the newest segment always stays.
    clock.now = 9.0
    assert archive.tick(status) == 0
    clock.now = 10.5
    archive.tick(status)
    checkpoint(checkpoints, 4)
    checkpoint(checkpoints, 5)
    assert archive.tick(status) == 0  # one change seen: 5 is the newest
    checkpoint(checkpoints, 6)
    assert archive.tick(status) == 2
    assert [s.first for s in topic.live_segments()] == [50] and archive.archived == 5
    assert json.loads(record.read_text()) == {"through": 60, "checkpoint_ms": 6000}
    # Each burst left the archive as one merged segment; every offset stays in the log.
    assert [(s.first, s.end) for s in topic.segments()] == [(0, 30), (30, 50), (50, 60)]


def test_the_record_is_written_before_anything_moves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Merged segments have names no checkpoint's source has seen: a driver that dies
    mid-move must leave a record saying which restores may not get them back."""
    topic, checkpoints, record, archive, _ = running(tmp_path, 3, 10)
    move_due(archive, checkpoints, 20)

    def dies(segments: list[Segment]) -> int:
        raise OSError("killed mid-move")

    monkeypatch.setattr(topic, "archive", dies)
    with pytest.raises(OSError):
        archive.tick(None)
    assert json.loads(record.read_text()) == {"through": 20, "checkpoint_ms": 3000}


def test_a_restore_older_than_the_last_archive_is_refused(tmp_path: Path) -> None:
    checkpoints = tmp_path / "checkpoints"
    for n in (1, 2, 3):
        checkpoint(checkpoints, n)
    record = tmp_path / "archived.json"
    chk = [checkpoints / "job" / f"chk-{n}" for n in (1, 2, 3)]
    assert restore_covered(chk[0], record)  # nothing archived since the fresh start
    record.write_text(json.dumps({"through": 20, "checkpoint_ms": 2000}))
    assert [restore_covered(c, record) for c in chk] == [False, True, True]
    record.write_text("{")  # unreadable: no restore can be shown safe
    assert not restore_covered(chk[2], record)


def test_nothing_moves_while_nothing_below_the_folder_start_was_read(tmp_path: Path) -> None:
    topic, checkpoints, record, archive, _ = running(tmp_path, 3, 1)
    for n in range(1, 5):
        checkpoint(checkpoints, n)
        assert archive.tick(SpeedStatus(read_through=0)) == 0
        assert archive.tick(None) == 0
    assert len(topic.live_segments()) == 3
    assert not record.exists()


def test_a_checkpoint_removed_while_segments_move_still_covers_the_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Moving thousands of segments takes seconds, in which Flink completes checkpoints
    and removes all but the newest three, the one noted included: the record keeps the
    time noted when the checkpoint was seen, and the driver goes on (it used to stop on
    the missing folder, and the job with it)."""
    topic, checkpoints, record, archive, _ = running(tmp_path, 4, 10)
    move_due(archive, checkpoints, 20)
    move = topic.archive

    def slow_move(segments: list[Segment]) -> int:
        shutil.rmtree(checkpoints / "job" / "chk-3")  # retired while the segments move
        return move(segments)

    monkeypatch.setattr(topic, "archive", slow_move)
    assert archive.tick(None) == 2
    assert json.loads(record.read_text()) == {"through": 20, "checkpoint_ms": 3000}
    # A checkpoint listed and gone before it could be read counts for nothing.
    monkeypatch.setattr(
        "saiki.speed.archive.latest_checkpoint", lambda _: checkpoints / "job" / "chk-9"
    )
    assert archive.tick(SpeedStatus(read_through=40)) == 0


def test_the_newest_checkpoint_passes_over_one_removed_while_listed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "checkpoints"
    checkpoint(root, 1)
    checkpoint(root, 2)
    real = os.path.getmtime

    def racing(path: str) -> float:
        if "chk-2" in str(path):
            raise FileNotFoundError(path)  # retired between the listing and this look
        return real(path)

    monkeypatch.setattr(os.path, "getmtime", racing)
    assert latest_checkpoint(root) == root / "job" / "chk-1"
