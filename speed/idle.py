"""Which checkpoint holds the whole log: so that a restore with nothing new to read is known.

A job restored from a checkpoint learns its counters (records read, late events, the
segments read whole) from Flink's keyed state, which PyFlink lets the sink read only while
it handles a record. A job restored with nothing left to read gets no record, so its
status says it has read nothing: ``saiki speed run --until-idle`` run again with nothing
new waited for ever, and ``saiki status`` showed the whole log as lag.

The driver knows better from outside. When the job has read the log's whole head ``H``
and written every row, and a checkpoint completes after that while the head is still
``H``, that checkpoint holds exactly the records up to ``H``: it was taken after all of
them were read, and before any other existed. The driver records it (``idle.json``:
the checkpoint, ``H``, and the status then); a later start whose newest checkpoint is the
recorded one, on a log whose head is still ``H``, has nothing to read (``nothing_new``);
a job restored from it knows its counters from the start (``restored_counters``).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

from saiki.core.config import SaikiConfig
from saiki.core.files import atomic_write
from saiki.core.timeutil import now_ms
from saiki.feature_repo.online import SpeedStatus, write_status
from saiki.speed.archive import ARCHIVED_FILE, restore_covered
from saiki.speed.job import latest_checkpoint, load_lineage
from saiki.speed.progress import SpeedProgress, progress
from saiki.speed.shape import JOB_SHAPE, checkpoint_root

IDLE_FILE = "idle.json"  # in the speed folder


def _completed_ms(checkpoint: Path) -> int:
    return int(os.path.getmtime(checkpoint / "_metadata") * 1000)


class IdleWatch:
    """Follows the driver's looks at the job; records each checkpoint that holds the whole
    log (see the module's doc)."""

    def __init__(self, speed_dir: Path) -> None:
        self._record = speed_dir / IDLE_FILE
        self._since: tuple[int, int, SpeedStatus] | None = None  # (when, head, status)
        self._recorded: str | None = None

    def look(self, caught_up: bool, head: int, status: SpeedStatus | None, at_ms: int) -> None:
        """One look: whether every record up to ``head`` was read and every row written."""
        if not caught_up or status is None:
            self._since = None
        elif self._since is None or self._since[1] != head:
            self._since = (at_ms, head, status)

    def checkpointed(self, newest: Path | None, head: int) -> bool:
        """Record ``newest`` if it completed while the job stayed caught up at ``head``
        (``head`` read after it completed); returns whether it holds the whole log."""
        if self._since is None or newest is None or head != self._since[1]:
            return False
        try:
            if _completed_ms(newest) <= self._since[0]:
                return False
        except FileNotFoundError:  # removed as a newer one completed
            return False
        if str(newest) != self._recorded:
            record = {"checkpoint": str(newest), "head": head, "status": asdict(self._since[2])}
            atomic_write(self._record, json.dumps(record))
            self._recorded = str(newest)
        return True


def recorded(speed_dir: Path, checkpoint: Path | None) -> tuple[int, SpeedStatus] | None:
    """The head and status recorded for ``checkpoint``: what a job restored from it has
    read (its counters, exactly). None if it is not the recorded one, or no readable
    record exists."""
    try:
        record = json.loads((speed_dir / IDLE_FILE).read_text())
        if checkpoint is None or record["checkpoint"] != str(checkpoint):
            return None
        return int(record["head"]), SpeedStatus(**record["status"])
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return None


def nothing_new(speed_dir: Path, newest: Path | None, head: int) -> SpeedStatus | None:
    """The recorded status when ``newest`` (the checkpoint a start would restore) is the
    recorded one and the log's head is still the recorded head: a restored job would
    read nothing. None otherwise."""
    known = recorded(speed_dir, newest)
    return known[1] if known is not None and known[0] == head else None


# What a restored job publishes from its start when its checkpoint is the recorded one.
RESTORED_COUNTERS = (
    "events_seen",
    "read_through",
    "late_events",
    "max_event_ms",
    "max_ingest_ms",
    "watermark_ms",
)


def restored_counters(speed_dir: Path, checkpoint: Path | None) -> tuple[tuple[str, int], ...]:
    """:data:`RESTORED_COUNTERS` of the status recorded for ``checkpoint`` (none if it is
    not the recorded one): the sink publishes them at its start, before the first record
    lets it read them from its state."""
    known = recorded(speed_dir, checkpoint)
    if known is None:
        return ()
    return tuple((name, int(getattr(known[1], name))) for name in RESTORED_COUNTERS)


def watch_once(config: SaikiConfig, idle: IdleWatch) -> tuple[bool, SpeedProgress]:
    """One look at the job for ``idle``; whether the newest checkpoint holds the whole log
    (the log's head is read after the checkpoint is listed, as ``IdleWatch`` needs)."""
    newest = latest_checkpoint(checkpoint_folder(config))
    look = progress(config)
    status = look.status
    caught_up = status is not None and not look.lag_events and not status.pending_rows
    idle.look(caught_up, look.log_head, status, now_ms())
    return idle.checkpointed(newest, look.log_head), look


def checkpoint_folder(config: SaikiConfig) -> Path:
    """Where the job's checkpoints are (the lineage's folder, else the configured one)."""
    spec = load_lineage(config.data_dir / "speed")
    return spec.checkpoints if spec else checkpoint_root(config.data_dir, "")


def skip_if_nothing_new(config: SaikiConfig) -> SpeedProgress | None:
    """The last run's progress when a restore would read nothing: its newest checkpoint
    holds the whole log, and nothing was appended since (speed/idle.py); else None."""
    lineage = load_lineage(config.data_dir / "speed")
    if config.log.backend != "segments" or lineage is None or lineage.shape != JOB_SHAPE:
        return None
    checkpoint = latest_checkpoint(checkpoint_root(config.data_dir, config.speed.checkpoint_dir))
    if checkpoint is None or not restore_covered(checkpoint, lineage.speed_dir / ARCHIVED_FILE):
        return None
    status = nothing_new(lineage.speed_dir, checkpoint, progress(config).log_head)
    if status is None:
        return None
    write_status(lineage.speed_dir, status)
    return progress(config)
