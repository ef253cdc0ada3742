"""The aggregation arithmetic of the spec, written once and vectorised.

A partial aggregate is a vector with one sum per aggregation (``AGGREGATION_NAMES``):

* create: :func:`contributions` — what each event adds (1 for a count, the value for a sum)
* add / merge: :func:`tiles` groups contributions by (entity, minute); :func:`merge_tiles`
  adds partial tiles with the same key — the same ``+`` either way
* finalise: :func:`finalise` turns a window's sums into the named features, derived
  ones included

Beam's CombineFn and the serving merge call these; Flink's SQL is rendered from the same
definitions by :func:`sql_contribution`. :class:`PrefixSums` answers "the sum of an
entity's values with key < x" for many (entity, x) at once, which is how every window is
read: a window is a difference of two prefix sums.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from saiki.feature_repo.spec import (
    AGGREGATION_NAMES,
    AGGREGATIONS,
    DERIVATIONS,
    WINDOWS,
    Aggregation,
    Window,
)

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]

MS_PER_MINUTE: Final = 60_000
ENTITY_ID: Final = "entity_id"
MINUTE: Final = "minute"  # minutes since the epoch: event_time // 60_000
TILE_SCHEMA: Final = pa.schema(
    [pa.field(ENTITY_ID, pa.string()), pa.field(MINUTE, pa.int64())]
    + [pa.field(name, pa.int64()) for name in AGGREGATION_NAMES]
)


def contributions(event_type: pa.Array, dwell_ms: pa.Array) -> dict[str, pa.Array]:
    """What each event adds to each aggregation (int64 arrays, one value per event)."""
    out = {}
    for aggregation in AGGREGATIONS:
        matches = pc.equal(event_type, aggregation.event_type)
        if aggregation.value is None:
            value = pc.cast(matches, pa.int64())
        else:
            field = {"dwell_ms": dwell_ms}[aggregation.value]
            value = pc.if_else(matches, pc.fill_null(field, 0), 0)
        out[aggregation.name] = pc.cast(pc.fill_null(value, 0), pa.int64())
    return out


def tiles(
    entity_ids: pa.Array, event_time_ms: pa.Array, event_type: pa.Array, dwell_ms: pa.Array
) -> pa.Table:
    """Per-minute tiles: the sums of the events of each (entity, minute)."""
    minute = pc.divide(event_time_ms, MS_PER_MINUTE)  # integer division for int64
    table = pa.table({ENTITY_ID: entity_ids, MINUTE: minute, **contributions(event_type, dwell_ms)})
    return _sum_by_key(table)


def merge_tiles(parts: Sequence[pa.Table]) -> pa.Table:
    """Add partial tiles that share (entity, minute): merging partial aggregates."""
    if not parts:
        return TILE_SCHEMA.empty_table()
    return _sum_by_key(pa.concat_tables(parts))


def _sum_by_key(table: pa.Table) -> pa.Table:
    grouped = table.group_by([ENTITY_ID, MINUTE]).aggregate(
        [(name, "sum") for name in AGGREGATION_NAMES]
    )
    columns = [grouped.column(ENTITY_ID), grouped.column(MINUTE)] + [
        grouped.column(f"{name}_sum") for name in AGGREGATION_NAMES
    ]
    return pa.Table.from_arrays(columns, schema=TILE_SCHEMA)


def finalise(sums: Mapping[str, FloatArray | IntArray], window: Window) -> dict[str, FloatArray]:
    """A window's aggregation sums as named features, derived features included."""
    as_float = {name: np.asarray(sums[name], dtype=np.float64) for name in AGGREGATION_NAMES}
    features = {f"{name}_{window.name}": value for name, value in as_float.items()}
    for derived, formula in DERIVATIONS.items():
        features[f"{derived}_{window.name}"] = np.asarray(formula(as_float), dtype=np.float64)
    return features


def empty_features() -> dict[str, float]:
    """Every feature's value for an entity with no events in any window."""
    zeros = {name: np.zeros(1) for name in AGGREGATION_NAMES}
    return {
        name: float(value[0])
        for window in WINDOWS
        for name, value in finalise(zeros, window).items()
    }


def sql_contribution(aggregation: Aggregation, event_type: str = "event_type") -> str:
    """The same contribution as :func:`contributions`, as a Flink SQL expression."""
    matches = f"{event_type} = '{aggregation.event_type}'"
    if aggregation.value is None:
        return f"CASE WHEN {matches} THEN 1 ELSE 0 END"
    return f"CASE WHEN {matches} THEN COALESCE({aggregation.value}, 0) ELSE 0 END"


def encode(ids: pa.Array | pa.ChunkedArray) -> tuple[pa.Array, IntArray]:
    """Distinct ids and each row's code into them (a C++ hash, no Python string sort)."""
    encoded = pc.dictionary_encode(ids)
    if isinstance(encoded, pa.ChunkedArray):
        encoded = encoded.combine_chunks()
    return encoded.dictionary, encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)


class CompositeKeys:
    """Packs (code, key) pairs into sortable int64s: ``code << bits | (key - base)``.

    ``bits`` is just wide enough for the keys' span, leaving the rest for codes: a
    30-day span of milliseconds needs 32 bits and leaves room for 2**31 codes.
    """

    def __init__(self, keys: IntArray, max_code: int) -> None:
        self.base = int(keys.min()) if len(keys) else 0
        span = (int(keys.max()) - self.base + 1) if len(keys) else 1
        self.bits = max(span.bit_length(), 1)
        if max_code >= 1 << (63 - self.bits):
            raise ValueError(f"{max_code + 1} codes do not fit beside a {self.bits}-bit span")

    def pack(self, codes: IntArray, keys: IntArray) -> IntArray:
        """Composite keys; keys outside the span are clipped to its ends."""
        relative = np.clip(keys.astype(np.int64) - self.base, 0, (1 << self.bits) - 1)
        packed: IntArray = (codes.astype(np.int64) << self.bits) | relative
        return packed


class PrefixSums:
    """Sums of each entity's values over keys below a bound, for many queries at once.

    Built from rows (entity code, key, values); keys are minutes or milliseconds. A query
    (code, x) returns the sum of that entity's rows with key < x, by one binary search
    over packed (code, key) composites and a difference of cumulative sums.
    """

    def __init__(self, codes: IntArray, keys: IntArray, values: IntArray) -> None:
        self._keys = CompositeKeys(keys, int(codes.max()) if len(codes) else 0)
        composite = self._keys.pack(codes, keys)
        order = np.argsort(composite, kind="stable")
        self._composite = composite[order]
        self._lowest = int(keys.min()) if len(keys) else 0
        cumulative = np.zeros((len(order) + 1, values.shape[1]), dtype=np.int64)
        np.cumsum(values[order], axis=0, out=cumulative[1:])
        self._cumulative = cumulative

    def before(self, codes: IntArray, bounds: IntArray) -> IntArray:
        """For each (code, bound): the sums of that entity's rows with key < bound."""
        codes64 = codes.astype(np.int64)
        start = np.searchsorted(self._composite, codes64 << self._keys.bits, side="left")
        # A bound at or below the lowest key counts nothing; pack() clips it onto the span.
        stop = np.searchsorted(self._composite, self._keys.pack(codes64, bounds), side="left")
        stop = np.where(bounds <= self._lowest, start, stop)
        result: IntArray = self._cumulative[stop] - self._cumulative[start]
        return result

    def between(self, codes: IntArray, lower: IntArray, upper: IntArray) -> IntArray:
        """For each (code, lower, upper): the sums of rows with lower <= key < upper."""
        result: IntArray = self.before(codes, upper) - self.before(codes, lower)
        return result

    def between_each(self, codes: IntArray, lowers: IntArray, upper: int) -> IntArray:
        """(codes, len(lowers), values): for each code and each lower bound, the sums of
        rows with lower <= key < upper. All windows of a request in one call: the cost
        of a query is mostly numpy's per-call overhead, not the searches."""
        count = len(lowers)
        every = np.repeat(codes.astype(np.int64), count)
        bounds = np.tile(np.asarray(lowers, dtype=np.int64), len(codes))
        top = np.full(len(every), upper, dtype=np.int64)
        sums = self.between(every, np.minimum(bounds, upper), top)
        result: IntArray = sums.reshape(len(codes), count, -1)
        return result
