"""The speed layer's sink: Flink's tile updates → one packed online row per entity.

Flink emits each per-minute tile as an updating aggregate (its full value so far, many
times a second while its minute is open). The sink keeps, per entity, the tiles since the
oldest cutoff a server may still be using, and writes the changed entities' rows in
micro-batches through a :class:`~feature_repo.online.SpeedWriter`.

Two properties keep it exact across restarts and handoffs:

* **Tiles only grow** (every contribution is non-negative), so the sink merges an update
  into what it holds by element-wise maximum. A replay after a restart, or a tile whose
  Flink state was dropped and rebuilt, can never lower a value that was written.
* **Handoff by cutoff**: rows keep tiles from the *previous* batch cutoff on, so a server
  still on the old view finds every tile it needs while a server on the new view simply
  ignores the older minutes; a row says from when it is complete (``tiles_from_ms``).

A user removed by ``saiki forget`` (``core/forgotten.py``) loses the tiles it holds and
every tile of a minute up to the deletion's, replayed or not; later minutes are kept.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from saiki.core.forgotten import Forgotten
from saiki.core.timeutil import MS_PER_MINUTE, now_ms
from saiki.feature_repo.online import SpeedRow, SpeedStatus, SpeedWriter, pack_tiles, write_status
from saiki.feature_repo.spec import AGGREGATION_NAMES, ENTITIES

Key = tuple[str, str]
IntArray = npt.NDArray[np.int64]
_USERS = ENTITIES[0].name  # the entity ``saiki forget`` removes


class _HeldTiles:
    """One entity's tiles: rows of ``(minute, *aggregations, events)`` kept sorted by
    minute, so that a flush packs them with one slice instead of sorting and stacking
    hundreds of small arrays per row (most of a flush's own time on a backlog)."""

    __slots__ = ("_index", "_rows", "_size", "_sorted")

    def __init__(self) -> None:
        self._rows: IntArray = np.zeros((4, 2 + len(AGGREGATION_NAMES)), dtype=np.int64)
        self._size = 0
        self._index: dict[int, int] = {}
        self._sorted = True

    def merge(self, minute: int, update: Sequence[int] | IntArray) -> int:
        """Max-merge ``(*aggregations, events)`` into a minute; returns by how much its
        event count grew. Called per tile update: plain ints in and out, no array made."""
        position = self._index.get(minute)
        if position is not None:
            row = self._rows[position, 1:]
            before = int(row[-1])
            np.maximum(row, update, out=row)
            return int(row[-1]) - before
        if self._size == len(self._rows):
            self._rows = np.concatenate([self._rows, np.zeros_like(self._rows)])
        if self._size and minute < self._rows[self._size - 1, 0]:
            self._sorted = False
        self._rows[self._size, 0] = minute
        self._rows[self._size, 1:] = update
        self._index[minute] = self._size
        self._size += 1
        return int(update[-1])

    def __len__(self) -> int:
        return self._size

    def drop_before(self, first_minute: int) -> None:
        """Forget every minute before ``first_minute``."""
        rows = self._rows[: self._size]
        rows = rows[rows[:, 0] >= first_minute]
        rows = rows[np.argsort(rows[:, 0], kind="stable")]
        self._rows = np.concatenate([rows, np.zeros_like(self._rows[:1])])
        self._size = len(rows)
        self._index = {minute: n for n, minute in enumerate(rows[:, 0].tolist())}
        self._sorted = True

    def packed(self, keep_minute: int) -> bytes:
        """Drop minutes before ``keep_minute``; the rest as packed online tiles."""
        rows = self._rows[: self._size]
        if not self._sorted or (self._size and rows[0, 0] < keep_minute):
            rows = rows[np.argsort(rows[:, 0], kind="stable")]
            rows = rows[rows[:, 0] >= keep_minute]
            self._rows = np.concatenate([rows, np.zeros_like(rows[:1])])
            self._size = len(rows)
            self._index = {minute: n for n, minute in enumerate(rows[:, 0].tolist())}
            self._sorted = True
        return pack_tiles(rows[:, 0], rows[:, 1:-1])


@dataclass(frozen=True)
class WriteBatch:
    """Packed rows taken from the sink, per entity kind, and when they were taken."""

    by_entity: dict[str, list[SpeedRow]]
    started_ms: int
    # Entities whose every tile is older than the oldest cutoff in use: their rows go.
    removed: dict[str, list[str]] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return sum(len(rows) for rows in self.by_entity.values())


class TileSink:
    """Merges tile updates and writes changed entity rows; not thread-safe by itself."""

    def __init__(
        self,
        writer: SpeedWriter | None,
        speed_dir: Path,
        current_cutoff: Callable[[], int | None],
        status: SpeedStatus,
        clock: Callable[[], int] = now_ms,
        *,
        forgotten: Forgotten | None = None,
    ) -> None:
        self._writer = writer
        self._forgotten = forgotten
        # Forgotten users seen: id → the first minute kept (None: not forgotten).
        self._first_minute: dict[str, int | None] = {}
        self._dir = speed_dir
        self._current_cutoff = current_cutoff
        self._clock = clock
        self.status = status
        self._tiles: dict[Key, _HeldTiles] = {}
        self._dirty: set[Key] = set()
        self._cutoffs: list[int] = []
        self._in_flight = 0  # rows taken for a write that has not finished
        self.read_ahead: dict[int, int] = {}  # segments read whole past read_through
        self._lock = threading.Lock()
        self._observe_cutoff()

    def attach(self, writer: SpeedWriter) -> None:
        """Set the writer of a sink made without one (opening Feast takes seconds; the
        sink merges updates meanwhile, and is not to be flushed before this)."""
        self._writer = writer

    def restore(self) -> int:
        """Rebuild the held tiles from the online store (after a restart); returns rows.

        May run while updates arrive: merging is a maximum, so the order does not matter.
        """
        assert self._writer is not None, "attach a writer first"
        count = 0
        for entity in ENTITIES:
            for row in self._writer.read_all(entity.name):
                minutes, values = row.unpacked()
                with self._lock:
                    first = self._kept_from(entity.name, row.entity_id)
                    held = self._tiles.setdefault((entity.name, row.entity_id), _HeldTiles())
                    for minute, value in zip(minutes.tolist(), values, strict=True):
                        if first is not None and minute < first:
                            continue
                        # The event count is not stored online; a restored tile counts 0
                        # until Flink replays it.
                        held.merge(minute, np.append(value, 0))
                    keep_from = self.status.keep_from_ms
                    if (
                        row.tiles_from_ms < keep_from
                        or not len(minutes)
                        or int(minutes.min()) < keep_from // MS_PER_MINUTE
                    ):
                        # Written before the cutoff this job starts from (``saiki up``
                        # restarts it fresh after each handoff): repack it, or remove it
                        # if nothing is left, at the first flush.
                        self._dirty.add((entity.name, row.entity_id))
                count += 1
        return count

    def _observe_cutoff(self) -> None:
        cutoff = self._current_cutoff()
        if cutoff is not None and (not self._cutoffs or cutoff != self._cutoffs[-1]):
            self._cutoffs = [*self._cutoffs[-1:], cutoff]
            keep_from = min(self._cutoffs)
            if keep_from != self.status.keep_from_ms:
                self.status.keep_from_ms = keep_from
                self._dirty.update(self._tiles)  # every row is repacked from the new bound

    def _kept_from(self, entity: str, entity_id: str) -> int | None:
        """For a forgotten user, the first minute whose tiles are kept; else None."""
        if entity != _USERS or self._forgotten is None or not self._forgotten:
            return None
        if entity_id not in self._first_minute:
            at = self._forgotten.at(entity_id)
            self._first_minute[entity_id] = None if at is None else at // MS_PER_MINUTE + 1
        return self._first_minute[entity_id]

    def _observe_forgotten(self) -> None:
        """Drop what is held of users forgotten since the last look (under the lock)."""
        if self._forgotten is None or not self._forgotten.refresh():
            return
        self._first_minute.clear()
        for key in [k for k in self._tiles if k[0] == _USERS]:
            first = self._kept_from(*key)
            if first is not None:
                held = self._tiles[key]
                held.drop_before(first)
                if not len(held):  # its online row is being deleted, not rewritten
                    del self._tiles[key]
                    self._dirty.discard(key)

    def on_tile(
        self, entity: str, entity_id: str, minute_ms: int, values: tuple[int, ...], events: int
    ) -> None:
        """One tile update from Flink: its full value so far, and its count of events."""
        with self._lock:
            key = (entity, entity_id)
            minute = minute_ms // MS_PER_MINUTE
            first = self._kept_from(entity, entity_id)
            if first is not None and minute < first:
                return  # made before the user was forgotten: never written again
            held = self._tiles.get(key)
            if held is None:
                held = self._tiles[key] = _HeldTiles()
            # Held internally with the tile's event count last (it is not written online).
            grew = held.merge(minute, (*values, events))
            self._dirty.add(key)
            self.status.tiles_updated += 1
            if entity == ENTITIES[0].name:  # each event lands in one tile per entity kind
                self.status.events_tiled += grew

    def on_late(self, total: int) -> None:
        """How many events, in all, arrived after their tile closed: left to the next
        batch run. Totals only grow (a replay repeats one), hence the maximum."""
        with self._lock:
            self.status.late_events = max(self.status.late_events, total)

    def on_progress(self, total: int, max_event_ms: int, max_ingest_ms: int) -> None:
        """What the source has read in all (every event, tiled or not), counted from
        the first offset the job read (``status.start_offset``)."""
        with self._lock:
            self.status.events_seen = max(self.status.events_seen, self.status.start_offset + total)
            self.status.max_event_ms = max(self.status.max_event_ms, max_event_ms)
            self.status.max_ingest_ms = max(self.status.max_ingest_ms, max_ingest_ms)
            self.status.watermark_ms = max(
                self.status.watermark_ms, self.status.max_event_ms - self.status.allowed_lateness_ms
            )

    def on_segment(self, first: int, count: int, read: int) -> None:
        """``read`` records of the segment at ``first`` (``count`` long) read so far. Once
        it is read whole, ``status.read_through`` (every segment before it read whole)
        moves over it and every whole one right after it; ``read_ahead`` holds those
        read whole beyond a gap (files found in one listing are read in any order)."""
        with self._lock:
            if read < count or first < self.status.read_through:
                return
            self.read_ahead[first] = first + count
            while self.status.read_through in self.read_ahead:
                self.status.read_through = self.read_ahead.pop(self.status.read_through)

    def flush(self) -> int:
        """Write every changed entity row; returns the number of rows written."""
        return self.write(self.take())

    def take(self) -> WriteBatch:
        """The changed rows, packed, to be written by :meth:`write` (possibly from another
        thread while updates go on arriving: they dirty their rows for the next batch)."""
        with self._lock:
            self._observe_cutoff()
            self._observe_forgotten()
            started = self._clock()
            keep_minute = self.status.keep_from_ms // MS_PER_MINUTE
            by_entity: dict[str, list[SpeedRow]] = {}
            removed: dict[str, list[str]] = {}
            for key in self._dirty:
                held = self._tiles[key]
                tiles = held.packed(keep_minute)
                if not len(held):
                    # Nothing since the oldest cutoff in use: forgotten, and its row goes.
                    del self._tiles[key]
                    removed.setdefault(key[0], []).append(key[1])
                    continue
                by_entity.setdefault(key[0], []).append(
                    SpeedRow(key[1], tiles, self.status.keep_from_ms, started)
                )
            self._dirty.clear()
            batch = WriteBatch(by_entity, started, removed)
            self._in_flight += batch.rows
            return batch

    def write(self, batch: WriteBatch) -> int:
        """Write a batch from :meth:`take`; returns the number of rows written."""
        assert self._writer is not None, "attach a writer first"
        try:
            for entity, rows in batch.by_entity.items():
                self._writer.write(entity, rows)
            for entity, ids in batch.removed.items():
                self._writer.remove(entity, ids)
        finally:
            with self._lock:
                self._in_flight -= batch.rows
        with self._lock:
            finished = self._clock()
            self.status.rows_written += batch.rows
            self.status.rows_removed += sum(len(ids) for ids in batch.removed.values())
            self.status.flushes += 1
            self.status.last_flush_ms = finished
            self.status.last_flush_seconds = (finished - batch.started_ms) / 1000
            self.publish_status()
        return batch.rows

    def publish_status(self) -> None:
        """Write status.json atomically (readers never see half a file)."""
        self.status.pending_rows = len(self._dirty) + self._in_flight
        write_status(self._dir, self.status)
