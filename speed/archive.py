"""The folder Flink's source re-lists, kept small: segments leave it once no job needs them.

Flink's filesystem source lists the whole segment folder every ``[speed] monitor_ms`` and
pays per file (docs/speed.md), so a folder that grew with the time since the last handoff
(72,000 segments an hour at 20 ``Ingest`` calls/s with a short linger) cost the job a core
while it had nothing to read. Two moves keep it to the last seconds of traffic:

* **While a local job runs** (:class:`RunningArchive`): the sink reports the offset below
  which every segment was read whole (``SpeedStatus.read_through``); once two checkpoints
  have completed after the driver saw it, no restore of this job can need those segments
  (a restore starts from the newest checkpoint, which records them as read), and they move
  to ``_archive/`` in one burst, a prefix of the log, never the newest segment.
* **Before a job starts** (:func:`arrange_for_start`): every archived segment the job may
  read comes back, so a restore never misses a file, and a fresh job re-reads everything
  since its cutoff; then a fresh job's folder loses the segments it would read for
  nothing (:func:`start_boundary`). Each running archive records how far it went and the
  checkpoint that covered it (``speed/archived.json``), before it moves anything: a job
  restored from that checkpoint or a newer one gets back only what lies beyond.

The archive merges runs of small segments into one (``core/eventlog.py``), so a fresh job
re-reads a few large files instead of thousands of small ones. A restored job's source
skips the segments its checkpoint has read by their paths, which a merged segment does
not share with its parts: a restore therefore never gets back a segment merged from what
it had read. From the newest checkpoint it does not (everything archived while it ran lies
below what the record says); from a checkpoint older than the record's (the newer ones
lost), the job starts fresh instead (:func:`restore_covered`), which is exact too.
"""

from __future__ import annotations

import functools
import itertools
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from saiki.core.config import SaikiConfig
from saiki.core.eventlog import EventLog, Topic
from saiki.core.files import atomic_write
from saiki.core.schema import MAX_FUTURE_MS
from saiki.feature_repo.online import SpeedStatus
from saiki.feature_repo.views import ViewCatalog
from saiki.speed.job import latest_checkpoint

# Checkpoints that must complete after read_through was seen before the segments below it
# move: the first may have begun before the sink saw them; the second began after.
CHECKPOINTS_BEFORE_ARCHIVE = 2
ARCHIVED_FILE = "archived.json"  # in the speed folder: what the running archive moved


@functools.lru_cache(maxsize=8)
def log_topic(log_dir: Path) -> Topic:
    """One events topic per log folder (it remembers the segment names it parsed)."""
    return EventLog(log_dir).events


def start_boundary(config: SaikiConfig, cutoff_ms: int) -> int:
    """The offset before which a job starting from ``cutoff_ms`` needs no segment: the end
    of the longest prefix of the log that the master dataset holds (the current view was
    computed past it) and whose every event lies before the cutoff. The next segment's
    name holds the log watermark, the newest event time capped at ingest time among all
    records before it; an event is at most ``MAX_FUTURE_MS`` ahead of its ingest time, so
    that watermark plus the bound at or before the cutoff proves it for every earlier
    segment."""
    view = ViewCatalog.open(config).current()
    if view is None:
        return 0
    events = log_topic(config.log_dir)
    boundary = 0
    for segment, following in itertools.pairwise(events.segments()):
        if segment.end > view.log_next_offset or following.watermark_ms + MAX_FUTURE_MS > cutoff_ms:
            break
        boundary = segment.end
    return boundary


def arrange_for_start(
    config: SaikiConfig, cutoff_ms: int, restore: Path | None, record: Path
) -> tuple[int, int]:
    """Before a job starts (nothing lists the folder): bring back every archived segment
    at or after :func:`start_boundary` that it may read (for a restore from ``record``'s
    checkpoint or a newer one, only those past what was archived while it ran, and those
    before go); for a fresh job, archive those before the boundary. Returns (brought back,
    archived)."""
    events = log_topic(config.log_dir)
    boundary = start_boundary(config, cutoff_ms)
    events.drop_covered()  # parts a crash left beside their merged segment never come back
    if restore is None:
        record.unlink(missing_ok=True)  # a fresh job reads everything since the boundary
        back = events.unarchive(boundary)
        return back, events.archive([s for s in events.live_segments() if s.end <= boundary])
    archived = _read_record(record)
    through = int(archived["through"]) if archived is not None else 0
    back = events.unarchive(max(boundary, through))
    # What the checkpoint has read whole, left in the folder by an earlier start, goes.
    return back, events.archive([s for s in events.live_segments() if s.end <= through])


def restore_covered(restore: Path, record: Path) -> bool:
    """Whether a job may restore from ``restore``: nothing was archived since its fresh
    start, or the checkpoint is the one the newest archive recorded or newer (an older one
    may not have read what was merged since; a fresh start is exact instead)."""
    if not record.exists():
        return True
    archived = _read_record(record)
    try:
        return archived is not None and _mtime_ms(restore) >= int(archived["checkpoint_ms"])
    except FileNotFoundError:
        return False


def _read_record(record: Path) -> dict[str, int] | None:
    """What the running archive recorded (``through``, ``checkpoint_ms``); None if none
    or unreadable."""
    try:
        archived = json.loads(record.read_text())
        return {key: int(archived[key]) for key in ("through", "checkpoint_ms")}
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return None


def _mtime_ms(checkpoint: Path | None) -> int:
    """When a checkpoint completed (its metadata was written); 0 for none."""
    if checkpoint is None:
        return 0
    return int((checkpoint / "_metadata").stat().st_mtime * 1000)


class RunningArchive:
    """Archives what a running local job has read whole and checkpointed; the driver
    calls :meth:`tick` with each status it reads (twice a second)."""

    def __init__(
        self,
        topic: Topic,
        checkpoints: Path,
        record: Path,
        every_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._topic = topic
        self._checkpoints = checkpoints
        self._record = record
        self._every_s = every_s
        self._clock = clock
        self._last = clock()
        # (read_through seen, the newest checkpoint since and when it completed,
        # checkpoints completed since)
        self._watching: tuple[int, tuple[Path, int] | None, int] | None = None
        self.archived = 0

    def _newest(self) -> tuple[Path, int] | Literal[False] | None:
        """The newest checkpoint and when it completed; None when there is none; False
        when it was gone before it could be read (Flink keeps the newest three only, and
        removes the oldest as each completes: a listing can name one already removed)."""
        newest = latest_checkpoint(self._checkpoints)
        if newest is None:
            return None
        try:
            return newest, _mtime_ms(newest)
        except FileNotFoundError:
            return False

    def tick(self, status: SpeedStatus | None) -> int:
        """Start watching a new ``read_through``, or archive below the one watched once
        enough checkpoints have completed since; returns how many segments moved."""
        newest = self._newest()
        if newest is False:
            return 0  # looked at again on the next tick
        if self._watching is None:
            if status is None or self._clock() - self._last < self._every_s:
                return 0
            live = self._topic.live_segments()
            if len(live) > 1 and live[0].end <= status.read_through:
                self._watching = (status.read_through, newest, 0)
            return 0
        through, seen, completed = self._watching
        if newest != seen:
            seen, completed = newest, completed + 1
        if completed < CHECKPOINTS_BEFORE_ARCHIVE:
            self._watching = (through, seen, completed)
            return 0
        self._watching = None
        self._last = self._clock()
        below = [s for s in self._topic.live_segments() if s.end <= through]
        if not below or seen is None:
            return 0
        # A restore from this checkpoint or a newer one has read all of it: recorded
        # durably before anything moves, so no restore gets back what was merged from it.
        covered = {"through": through, "checkpoint_ms": seen[1]}
        atomic_write(self._record, json.dumps(covered))
        moved = self._topic.archive(below)
        self.archived += moved
        return moved
