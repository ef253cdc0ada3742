"""The driver's record of a checkpoint that holds the whole log (speed/idle.py): written
only when the checkpoint completed after the job had read the log's head and the head
had not moved since; a start restoring that checkpoint on the same head reads nothing."""

from __future__ import annotations

import os
from pathlib import Path

from saiki.feature_repo.online import SpeedStatus
from saiki.speed.idle import IDLE_FILE, IdleWatch, nothing_new, restored_counters

T0 = 1_800_000_000_000


def checkpoint(root: Path, number: int, completed_ms: int) -> Path:
    folder = root / "job" / f"chk-{number}"
    folder.mkdir(parents=True)
    (folder / "_metadata").write_bytes(b"x")
    os.utime(folder / "_metadata", (completed_ms / 1000, completed_ms / 1000))
    return folder


def test_a_checkpoint_after_the_head_was_read_is_recorded_and_means_nothing_new(
    tmp_path: Path,
) -> None:
    watch = IdleWatch(tmp_path)
    status = SpeedStatus(events_seen=500, late_events=3, read_through=500)
    watch.look(True, 500, status, T0)
    later = checkpoint(tmp_path, 7, T0 + 1_000)
    assert watch.checkpointed(later, 500)
    assert nothing_new(tmp_path, later, 500) == status
    # Appended since, or another checkpoint to restore: the job has something to read.
    assert nothing_new(tmp_path, later, 501) is None
    # Whatever was appended since, a job restored from it has read exactly that much.
    counters = dict(restored_counters(tmp_path, later))
    assert counters["events_seen"] == 500 and counters["late_events"] == 3
    assert counters["read_through"] == 500
    other = checkpoint(tmp_path, 8, T0 + 3_000)
    assert nothing_new(tmp_path, other, 500) is None
    assert restored_counters(tmp_path, other) == ()


def test_no_record_unless_the_checkpoint_completed_after_the_head_was_read_and_it_stayed(
    tmp_path: Path,
) -> None:
    watch = IdleWatch(tmp_path)
    status = SpeedStatus(events_seen=500, read_through=500)
    before = checkpoint(tmp_path, 6, T0 - 1)
    watch.look(True, 500, status, T0)
    assert not watch.checkpointed(before, 500)  # may not hold every record up to 500
    later = checkpoint(tmp_path, 7, T0 + 1_000)
    # Appended after the look (the head read after the checkpoint moved): the checkpoint
    # may hold some of it.
    assert not watch.checkpointed(later, 520)
    watch.look(False, 520, status, T0 + 2_000)  # behind again
    assert not watch.checkpointed(checkpoint(tmp_path, 9, T0 + 3_000), 520)
    # Caught up at 520 again: only a checkpoint completed after that look counts.
    watch.look(True, 520, status, T0 + 4_000)
    assert not watch.checkpointed(checkpoint(tmp_path, 10, T0 + 3_500), 520)
    assert not (tmp_path / IDLE_FILE).exists()
    assert watch.checkpointed(checkpoint(tmp_path, 11, T0 + 4_500), 520)
    assert (tmp_path / IDLE_FILE).exists()


def test_no_record_or_a_torn_one_means_a_job_is_started(tmp_path: Path) -> None:
    newest = checkpoint(tmp_path, 1, T0)
    assert nothing_new(tmp_path, newest, 0) is None
    (tmp_path / IDLE_FILE).write_text('{"checkpoint": ')
    assert nothing_new(tmp_path, newest, 0) is None
    assert nothing_new(tmp_path, None, 0) is None
