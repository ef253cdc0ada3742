"""Speed rows in the online store: their packing and the seam the layers write and read by.

The speed layer keeps, per entity, one online row holding that entity's per-minute tiles
since the oldest cutoff any server may still use: ``tiles`` is a packed little-endian
int64 matrix with one row per minute, ``(minute, *aggregations)`` in spec order, sorted
by minute; ``tiles_from_ms`` says from which time on the row is complete. One row per
entity means one online-store round per entity kind per request, however many minutes
have passed since the cutoff.

Writers and readers are small protocols: Feast-backed implementations live in
``feature_repo/speed_rows.py`` and ``feature_repo/online_readers.py``; the in-memory
ones here are for fast unit tests.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt

from saiki.core.files import atomic_write
from saiki.feature_repo.spec import AGGREGATION_NAMES

IntArray = npt.NDArray[np.int64]
WIDTH = 1 + len(AGGREGATION_NAMES)
# The speed layer publishes its SpeedStatus here, under <data>/speed/.
STATUS_FILE = "status.json"


def pack_tiles(minutes: IntArray, values: IntArray) -> bytes:
    """Tiles as bytes: rows of (minute, *aggregations), little-endian int64."""
    rows = np.empty((len(minutes), WIDTH), dtype="<i8")
    rows[:, 0] = minutes
    rows[:, 1:] = values
    return rows.tobytes()


def unpack_tiles(blob: bytes) -> tuple[IntArray, IntArray]:
    """The inverse of :func:`pack_tiles`: (minutes, values)."""
    rows = np.frombuffer(blob, dtype="<i8").reshape(-1, WIDTH)
    return rows[:, 0].astype(np.int64), rows[:, 1:].astype(np.int64)


@dataclass(frozen=True)
class SpeedRow:
    """One entity's online speed row."""

    entity_id: str
    tiles: bytes
    tiles_from_ms: int
    updated_ms: int

    def unpacked(self) -> tuple[IntArray, IntArray]:
        """(minutes, values) of the row's tiles."""
        return unpack_tiles(self.tiles)


@dataclass
class SpeedStatus:
    """What the job reports (``saiki speed status``, and GetFeatures' speed_watermark)."""

    job_started_ms: int = 0
    start_offset: int = 0
    start_cutoff_ms: int = 0
    keep_from_ms: int = 0
    allowed_lateness_ms: int = 0
    events_seen: int = 0
    # The log offset below which every segment was read whole (segment files only): the
    # driver archives those segments once checkpoints cover them (speed/archive.py).
    read_through: int = 0
    events_tiled: int = 0
    late_events: int = 0
    max_event_ms: int = 0
    max_ingest_ms: int = 0
    watermark_ms: int = 0
    tiles_updated: int = 0
    rows_written: int = 0
    rows_removed: int = 0  # rows of entities left with no tile since the oldest cutoff
    flushes: int = 0
    last_flush_ms: int = 0
    last_flush_seconds: float = 0.0
    pending_rows: int = 0  # entity rows changed but not yet written
    state: str = "starting"


def read_status(speed_dir: Path) -> SpeedStatus | None:
    """The last status the sink published, or None if the job never ran."""
    try:
        return SpeedStatus(**json.loads((speed_dir / STATUS_FILE).read_text()))
    except (FileNotFoundError, json.JSONDecodeError, TypeError):
        return None


def write_status(speed_dir: Path, status: SpeedStatus) -> None:
    """Publish a status atomically (readers never see half a file). Advisory and
    rewritten every flush: not fsync'd (off the sink's hot path)."""
    atomic_write(speed_dir / STATUS_FILE, json.dumps(asdict(status)), durable=False)


class SpeedWriter(Protocol):
    """Where the speed layer's sink writes entity rows."""

    def write(self, entity: str, rows: Sequence[SpeedRow]) -> None:
        """Upsert rows of one entity kind."""

    def read_all(self, entity: str) -> list[SpeedRow]:
        """Every row of one entity kind (the sink rebuilds its state from them)."""

    def remove(self, entity: str, ids: Sequence[str]) -> None:
        """Delete these ids' speed rows (not their batch rows), then record the change:
        an entity with no tile since the oldest cutoff in use has nothing to serve."""


@dataclass(frozen=True)
class Changes:
    """Which entities' speed rows changed after a position of the change log.

    ``seq`` is the position to ask from next time. ``entities`` maps an entity kind to
    the ids written since; None means the log no longer reaches back that far (it is
    trimmed as readers catch up), so any row may have changed.
    """

    seq: int
    entities: Mapping[str, frozenset[str]] | None


class SpeedReader(Protocol):
    """What serving reads speed rows through: one round per entity kind."""

    def read(self, entity: str, ids: Sequence[str]) -> Mapping[str, SpeedRow]:
        """The rows of these ids that exist (missing ids: no tiles yet)."""

    def changes_since(self, seq: int | None) -> Changes | None:
        """The entities written after ``seq`` (None: from now on, nothing yet), for
        caches of what was read; None when the store cannot tell (nothing is cached).

        A writer records a change after its rows are committed, and a reader asks for
        changes before it reads rows: a write in between can only make a cache miss,
        never leave a stale row in it."""


class MemorySpeedStore:
    """An in-memory writer and reader, for unit tests of the sink and the merge."""

    def __init__(self, keep_changes: int = 1_000) -> None:
        self._rows: dict[tuple[str, str], SpeedRow] = {}
        self._lock = threading.Lock()
        self._changes: list[tuple[int, str, frozenset[str]]] = []
        self._keep = keep_changes
        self.writes = 0

    def write(self, entity: str, rows: Sequence[SpeedRow]) -> None:
        """Upsert rows, then record the change (as the real writer does: rows first)."""
        with self._lock:
            for row in rows:
                self._rows[entity, row.entity_id] = row
            self.writes += 1
            ids = frozenset(r.entity_id for r in rows)
            self._changes.append((self.writes, entity, ids))
            del self._changes[: -self._keep]

    def changes_since(self, seq: int | None) -> Changes:
        """The change log (the last ``keep_changes`` writes)."""
        with self._lock:
            if seq is None:
                return Changes(self.writes, {})
            newer = [c for c in self._changes if c[0] > seq]
            if seq < self.writes and (not newer or newer[0][0] != seq + 1):
                return Changes(self.writes, None)
            entities: dict[str, set[str]] = {}
            for _, entity, ids in newer:
                entities.setdefault(entity, set()).update(ids)
            return Changes(self.writes, {e: frozenset(ids) for e, ids in entities.items()})

    def remove(self, entity: str, ids: Sequence[str]) -> None:
        """Delete rows, then record the change (as :meth:`write` does)."""
        with self._lock:
            for entity_id in ids:
                self._rows.pop((entity, entity_id), None)
            self.writes += 1
            self._changes.append((self.writes, entity, frozenset(ids)))
            del self._changes[: -self._keep]

    def read_all(self, entity: str) -> list[SpeedRow]:
        """Every row of one entity kind."""
        with self._lock:
            return [row for (kind, _), row in self._rows.items() if kind == entity]

    def read(self, entity: str, ids: Iterable[str]) -> dict[str, SpeedRow]:
        """Rows of the given ids that exist."""
        with self._lock:
            found = {i: self._rows.get((entity, i)) for i in ids}
        return {i: row for i, row in found.items() if row is not None}
