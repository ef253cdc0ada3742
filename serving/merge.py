"""The lambda merge: batch view up to its cutoff T + speed tiles after T = exact windows.

For an entity, window W and query time q (``floor_minute(q - W) <= event_time < q``):

* the batch part sums the view's per-minute tiles over ``[floor_minute(q - W), T)``;
* the speed part sums the entity's online speed row over ``[max(floor_minute(q - W), T),
  q)`` — minutes are whole, so for a q inside a minute the tile of that minute is read
  whole (events time-stamped later in the same minute can only be clock-skewed ones);
* the sum is finalised with the spec's arithmetic (``feature_repo.tiles.finalise``).

The batch view is immutable, so each server process indexes it once in memory
(:class:`BatchViewIndex`) and swaps the index in one reference assignment when a newer
view is published: a request sees either the old view with tiles from the old cutoff or
the new view with tiles from the new one, never a mix. Speed rows are read once per
entity kind per request. A speed row packed for a newer cutoff than the view being served
(``tiles_from_ms > T``) proves a newer view exists: the merger switches first, then merges.

A merged row is a function of the view, the entity's speed row, ``floor_minute(q)`` and
whether q falls on a minute. While none of them changes it is served from memory: a
cache generation is keyed by the view id and q's minute, and within it each entity's row
holds until the speed rows' change log (``feature_repo/changes.py``) names that entity.
The log is read *before* the rows, and the sink records a change *after* its rows commit,
so a write in between can only make the cache miss: per entity, not per store, so a
speed layer flushing every 100 ms re-merges the entities it touched, not everyone. A
store that cannot tell what changed (Feast's generic reader) is never cached.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from saiki.core.errors import InvalidInputError, PreconditionError
from saiki.core.timeutil import MS_PER_MINUTE, ceil_minute, floor_minute, format_iso, now_ms
from saiki.feature_repo.online import WIDTH as TILE_WIDTH
from saiki.feature_repo.online import SpeedReader, SpeedRow, unpack_tiles
from saiki.feature_repo.spec import AGGREGATION_NAMES, ENTITY_BY_NAME, FEATURE_NAMES, WINDOWS
from saiki.feature_repo.tiles import ENTITY_ID, MINUTE, PrefixSums, encode, finalise
from saiki.feature_repo.views import ViewCatalog, ViewManifest
from saiki.serving.observability import FEATURE_CACHE

_CACHE_HITS, _CACHE_MISSES = FEATURE_CACHE.labels("hit"), FEATURE_CACHE.labels("miss")
# Generations kept per entity kind: now and as-of-now for this minute and the last.
_LIVE_GENERATIONS = 4

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
_WINDOW_MINUTES = np.array([w.minutes for w in WINDOWS], dtype=np.int64)
_POSITION = {name: i for i, name in enumerate(FEATURE_NAMES)}
# Merged rows kept per entity kind and generation; beyond this, rows are computed but not kept.
CACHE_LIMIT = 200_000


class _EntityTails:
    """One entity kind's tiles of a batch view, indexed for window sums."""

    def __init__(self, ids: list[str], sums: PrefixSums | None) -> None:
        self.codes = {entity_id: code for code, entity_id in enumerate(ids)}
        self.sums = sums


@dataclass(frozen=True)
class BatchViewIndex:
    """A published batch view, in memory: per entity kind, prefix sums of its tiles."""

    manifest: ViewManifest | None
    tails: dict[str, _EntityTails]

    @property
    def cutoff_ms(self) -> int:
        """The view's cutoff T (0 without a view: everything comes from the speed layer)."""
        return self.manifest.cutoff_ms if self.manifest else 0

    @property
    def view_id(self) -> str:
        """The view's id ("" without a view)."""
        return self.manifest.view_id if self.manifest else ""

    @classmethod
    def load(cls, catalog: ViewCatalog, view_id: str | None) -> BatchViewIndex:
        """Index a published view (or an empty index when there is none)."""
        if view_id is None:
            return cls(None, {e: _EntityTails([], None) for e in ENTITY_BY_NAME})
        manifest = catalog.manifest(view_id)
        tails = {}
        for entity in ENTITY_BY_NAME:
            table = catalog.read(view_id, f"{entity}_tiles")
            ids, codes = encode(table.column(ENTITY_ID))
            values = np.column_stack([table.column(n).to_numpy() for n in AGGREGATION_NAMES])
            sums = PrefixSums(codes, table.column(MINUTE).to_numpy(), values.astype(np.int64))
            tails[entity] = _EntityTails(ids.to_pylist(), sums)
        return cls(manifest, tails)

    def window_sums(self, entity: str, ids: Sequence[str], lower: IntArray) -> IntArray:
        """(ids, windows, aggregations): the sums over [lower[w], T) in minutes."""
        tails = self.tails[entity]
        codes = np.fromiter((tails.codes.get(i, -1) for i in ids), np.int64, len(ids))
        out = np.zeros((len(ids), len(WINDOWS), len(AGGREGATION_NAMES)), dtype=np.int64)
        known = codes >= 0
        if tails.sums is None or not known.any():
            return out
        cutoff = self.cutoff_ms // MS_PER_MINUTE
        # Every window in one pair of binary searches; a window wholly after T sums
        # [cutoff, cutoff): nothing from the batch view.
        mine = codes[known]
        out[known] = tails.sums.between_each(mine, np.minimum(lower, cutoff), cutoff)
        return out


@dataclass(frozen=True)
class MergedFeatures:
    """Features of many entities at one query time, with where they came from."""

    ids: list[str]
    values: FloatArray  # (ids, FEATURE_NAMES)
    query_ms: int
    batch_cutoff_ms: int
    view_id: str
    # The cached row objects served (one per id), when the rows came from the cache: a
    # row object is replaced whenever its entity is re-merged, so anything derived from
    # it (the wire bytes of GetFeatures) holds while the same object is served.
    rows: tuple[FloatArray, ...] | None = None


@dataclass
class _Generation:
    """Merged rows that hold while the view and q's minute stay put, each until the
    change log names its entity."""

    key: Hashable
    rows: dict[str, FloatArray] = field(default_factory=dict)


class FeatureMerger:
    """Answers features at any q >= T by merging the current view and the speed rows."""

    def __init__(
        self,
        catalog: ViewCatalog,
        speed: SpeedReader,
        clock: Callable[[], int] = now_ms,
        reload_interval_ms: int = 250,
        cache: bool = True,
    ) -> None:
        self._catalog = catalog
        self._cache = cache
        self._speed = speed
        self._clock = clock
        self._reload_interval_ms = reload_interval_ms
        self._index = BatchViewIndex.load(catalog, catalog.current_id())
        self._checked_ms = clock()
        self._loading = threading.Lock()
        # Per entity kind, the live generations by key, newest last: "now" (inside this
        # minute) and "as of now" (its ceiling) are both served from memory.
        self._generations: dict[str, dict[Hashable, _Generation]] = {}
        self._cache_lock = threading.Lock()
        self._changes_seq: int | None = None

    @property
    def index(self) -> BatchViewIndex:
        """The view index in use now."""
        return self._index

    def refresh(self, wait: bool = False) -> BatchViewIndex:
        """Switch to the current view if it changed (loading it outside the request path
        unless ``wait``); returns the index in use."""
        current = self._catalog.current_id()
        if current is None or current == self._index.view_id:
            return self._index
        if wait:
            with self._loading:
                if self._catalog.current_id() != self._index.view_id:
                    self._index = BatchViewIndex.load(self._catalog, self._catalog.current_id())
            return self._index
        if self._loading.acquire(blocking=False):
            threading.Thread(target=self._load_in_background, daemon=True).start()
        return self._index

    def _load_in_background(self) -> None:
        try:
            self._index = BatchViewIndex.load(self._catalog, self._catalog.current_id())
        finally:
            self._loading.release()

    def features(
        self, entity: str, ids: Sequence[str], as_of_ms: int | None = None
    ) -> MergedFeatures:
        """Every feature of ``ids`` at q = now, or at q = ceil_minute(as_of)."""
        if entity not in ENTITY_BY_NAME:
            raise InvalidInputError("entity", f"must be one of {sorted(ENTITY_BY_NAME)}")
        now = self._clock()
        if now - self._checked_ms >= self._reload_interval_ms:
            self._checked_ms = now
            self.refresh()
        q = now if as_of_ms is None else ceil_minute(as_of_ms)
        index = self._index
        _check_cutoff(q, index)
        minutes_ahead = q // MS_PER_MINUTE - now // MS_PER_MINUTE
        if not self._cache or not 0 <= minutes_ahead <= 1:
            # Only q in this minute or at the next boundary (what "now" and an as_of of
            # now round to) is cached: one client asking many other minutes must not
            # evict everyone's rows.
            return self._merge(entity, ids, q, index)
        with self._cache_lock:
            return self._cached(entity, ids, q, index)

    def _cached(
        self, entity: str, ids: Sequence[str], q: int, index: BatchViewIndex
    ) -> MergedFeatures:
        """Serve from memory what holds; re-merge the entities the change log names.

        Under one lock: the change log is read before the rows of a miss, and no other
        thread can evict an entity between that read and the rows' insertion.
        """
        # Read before the rows: a write in between makes the cache miss, never stale.
        changes = self._speed.changes_since(self._changes_seq)
        if changes is None:  # the store cannot tell what changed
            return self._merge(entity, ids, q, index)
        self._changes_seq = changes.seq
        if changes.entities is None:
            self._generations.clear()
        # A merged row is a function of the view, the entity's speed row, floor_minute(q)
        # and whether q is on a minute (see the module doc).
        key = (index.view_id, q // MS_PER_MINUTE, q % MS_PER_MINUTE == 0)
        for kind, generations in self._generations.items():
            changed = (changes.entities or {}).get(kind, ())
            if changed:
                for live in generations.values():
                    for entity_id in changed:
                        live.rows.pop(entity_id, None)
        held = self._generations.setdefault(entity, {})
        generation = held.get(key)
        if generation is None:
            generation = held[key] = _Generation(key)
            while len(held) > _LIVE_GENERATIONS:
                del held[next(iter(held))]  # the oldest
        rows: Mapping[str, FloatArray] = generation.rows
        missing = [i for i in dict.fromkeys(ids) if i not in rows]
        _CACHE_HITS.inc(len(ids) - len(missing))
        if missing:
            _CACHE_MISSES.inc(len(missing))
            merged = self._merge(entity, missing, q, index)
            if merged.view_id != index.view_id:  # switched views on the way: start over
                return self._merge(entity, ids, q, self._index)
            fresh = dict(zip(missing, merged.values, strict=True))
            if len(generation.rows) + len(fresh) <= CACHE_LIMIT:
                generation.rows.update(fresh)
            else:  # full: serve these without keeping them
                rows = collections.ChainMap(fresh, generation.rows)
        served = [rows[i] for i in ids]
        values = np.vstack(served) if ids else _no_rows()
        return MergedFeatures(list(ids), values, q, index.cutoff_ms, index.view_id, tuple(served))

    def _merge(
        self, entity: str, ids: Sequence[str], q: int, index: BatchViewIndex
    ) -> MergedFeatures:
        rows = self._speed.read(entity, list(ids))
        if any(row.tiles_from_ms > index.cutoff_ms for row in rows.values()):
            # The speed layer already dropped tiles this view needs: a newer view exists.
            index = self.refresh(wait=True)
            _check_cutoff(q, index)
        lower = (floor_minute(q) - _WINDOW_MINUTES * MS_PER_MINUTE) // MS_PER_MINUTE
        upper = -(-q // MS_PER_MINUTE)  # minutes strictly before ceil_minute(q)
        sums = index.window_sums(entity, ids, lower)
        sums += _speed_sums(rows, ids, lower, upper, index.cutoff_ms // MS_PER_MINUTE)
        values = np.empty((len(ids), len(FEATURE_NAMES)), dtype=np.float64)
        for w, window in enumerate(WINDOWS):
            named = {n: sums[:, w, a] for a, n in enumerate(AGGREGATION_NAMES)}
            for name, column in finalise(named, window).items():
                values[:, _POSITION[name]] = column
        return MergedFeatures(list(ids), values, q, index.cutoff_ms, index.view_id)


def _check_cutoff(q: int, index: BatchViewIndex) -> None:
    if q < index.cutoff_ms:
        raise PreconditionError(
            f"as_of {format_iso(q)} is before the batch cutoff {format_iso(index.cutoff_ms)}"
            "; features before the cutoff are not served online (use a training set)"
        )


def _no_rows() -> FloatArray:
    return np.empty((0, len(FEATURE_NAMES)), dtype=np.float64)


def _speed_sums(
    rows: Mapping[str, SpeedRow],
    ids: Sequence[str],
    lower: IntArray,
    upper: int,
    cutoff_minute: int,
) -> IntArray:
    """(ids, windows, aggregations) from speed rows: minutes in [max(lower, T), upper).

    Each window's sum is the difference of two prefix sums over the row's tiles, found by
    binary search: the work grows with the rows' tiles once (decoding, one cumulative
    sum), not with tiles x windows, which matters when a row holds a day of minutes
    because a recompute is late.
    """
    out = np.zeros((len(ids), len(WINDOWS), len(AGGREGATION_NAMES)), dtype=np.int64)
    positions, blobs = [], []
    for position, entity_id in enumerate(ids):
        row = rows.get(entity_id)
        if row is not None and row.tiles:
            positions.append(position)
            blobs.append(row.tiles)
    if not blobs:
        return out
    # Every row has the same layout: decode them all at once, one block per row.
    minutes, values = unpack_tiles(b"".join(blobs))
    counts = np.array([len(b) // (8 * TILE_WIDTH) for b in blobs], dtype=np.int64)
    block = np.repeat(np.arange(len(blobs), dtype=np.int64), counts)
    # (row, minute) as one sortable key: the sink keeps each row's minutes ascending.
    keys = (block << 32) + minutes
    if len(keys) > 1 and not bool(np.all(keys[1:] > keys[:-1])):
        order = np.argsort(keys, kind="stable")  # a row written by another writer
        keys, values = keys[order], values[order]
    prefix = np.zeros((len(minutes) + 1, values.shape[1]), dtype=np.int64)
    np.cumsum(values, axis=0, out=prefix[1:])
    rows_at = np.arange(len(blobs), dtype=np.int64) << 32
    bounds = np.maximum(lower, cutoff_minute)  # (windows,)
    ends = np.searchsorted(keys, rows_at + upper)  # first tile at or after upper
    begins = np.searchsorted(keys, rows_at[:, None] + bounds[None, :])  # (rows, windows)
    begins = np.minimum(begins, ends[:, None])
    sums = prefix[ends][:, None, :] - prefix[begins]
    out[positions] = sums
    return out
