"""Point-in-time-correct training sets: one row per impression, features as of its time.

For an impression at time t, feature ``{entity}_{agg}_{W}`` sums the entity's events with
``floor_minute(t - W) <= event_time < t`` — the online window semantics with q = t to
the millisecond, so nothing at or after the impression leaks in. The label ``clicked``
is 1 when the same user clicks the same item within 30 minutes after the impression, or
with the impression's ``request_id``.

The Beam pipeline groups events by entity shard (each shard sees every event of its
entities), computes features for that shard's impressions with prefix sums, labels them
in the user shards, and joins the user and item halves by impression bucket.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from saiki.batch.master import MasterDataset
from saiki.batch.pipeline import ReadSnapshot, SnapshotScan, invalid_rows, shards_of
from saiki.batch.run import catalog_properties, code_version, pipeline_options
from saiki.batch.tables import EVENTS_TABLE
from saiki.core.config import SaikiConfig
from saiki.core.errors import ComponentError, InvalidInputError, PreconditionError
from saiki.core.files import atomic_write
from saiki.core.timeutil import MS_PER_MINUTE, now_ms
from saiki.feature_repo.spec import (
    AGGREGATION_NAMES,
    ENTITIES,
    MAX_WINDOW,
    SPEC_VERSION,
    WINDOWS,
    Entity,
)
from saiki.feature_repo.tiles import (
    CompositeKeys,
    PrefixSums,
    contributions,
    encode,
    finalise,
)

LABEL_WINDOW_MS: Final = 30 * MS_PER_MINUTE
_BUCKET_ROWS: Final = 250_000
IMPRESSION_COLUMNS: Final = (
    "event_id",
    "event_time",
    "user_id",
    "item_id",
    "device_id",
    "request_id",
    "variant",
)
LINEAGE_KEY: Final = b"saiki.lineage"


@dataclass(frozen=True)
class TrainingSetLineage:
    """Where a training set came from; stored in the Parquet file's metadata."""

    snapshot_id: int
    from_ms: int
    to_ms: int
    spec_version: str
    code_version: str
    created_ms: int
    rows: int
    positives: int
    label_window_ms: int = LABEL_WINDOW_MS
    # "recomputed" from the master dataset, or "logged": the vectors the servers used
    # (batch/logged_training.py), from this snapshot of saiki.predictions.
    features: str = "recomputed"
    predictions_snapshot_id: int | None = None
    unmatched: int = 0  # impressions with no logged vector (logged mode): not in the set


class _KeyByShard(beam.DoFn):  # type: ignore[misc]
    """Route each valid event to the shard of its entity (for every entity kind)."""

    def __init__(self, shards: int) -> None:
        self._shards = shards

    def process(self, batch: pa.Table) -> Iterator[tuple[tuple[str, int], pa.Table]]:
        bad = invalid_rows(batch)
        if pc.any(bad).as_py():
            beam.metrics.Metrics.counter("saiki", "dead_letters").inc(pc.sum(bad).as_py())
            batch = batch.filter(pc.invert(bad))
        for entity in ENTITIES:
            shard = shards_of(batch.column(entity.key), self._shards)
            for number in np.unique(shard).tolist():
                yield (entity.name, number), batch.filter(pa.array(shard == number))


def point_in_time_features(events: pa.Table, entity: Entity, from_ms: int, to_ms: int) -> pa.Table:
    """Features of ``entity`` for each impression in [from, to) among ``events``, as of
    the impression's own time. Returns ``log_offset`` plus ``{entity}_{feature}`` columns.
    """
    _, codes = encode(events.column(entity.key))
    times = events.column("event_time").to_numpy()
    added = contributions(events.column("event_type"), events.column("dwell_ms"))
    values = np.column_stack([added[n].to_numpy() for n in AGGREGATION_NAMES]).astype(np.int64)
    sums = PrefixSums(codes, times, values)
    is_query = (
        (events.column("event_type").to_numpy(zero_copy_only=False) == "IMPRESSION")
        & (times >= from_ms)
        & (times < to_ms)
    )
    q_codes, q_times = codes[is_query], times[is_query]
    columns: dict[str, Any] = {"log_offset": events.column("log_offset").filter(is_query)}
    for window in WINDOWS:
        lower = q_times - window.ms
        lower -= lower % MS_PER_MINUTE  # floor_minute(t - W), exact to the minute
        window_sums = sums.between(q_codes, lower, q_times)
        named = {n: window_sums[:, i] for i, n in enumerate(AGGREGATION_NAMES)}
        for name, value in finalise(named, window).items():
            columns[f"{entity.name}_{name}"] = pa.array(value)
    return pa.table(columns)


def click_labels(events: pa.Table, from_ms: int, to_ms: int) -> pa.Table:
    """``clicked`` for each impression in [from, to): a click on the same user and item
    within 30 minutes after it, or carrying its request_id. Needs all of a user's events.
    """
    kinds = events.column("event_type").to_numpy(zero_copy_only=False)
    times = events.column("event_time").to_numpy()
    pair = pc.binary_join_element_wise(events.column("user_id"), events.column("item_id"), "\x1f")
    _, pair_codes = encode(pair)
    clicks = kinds == "CLICK"
    is_query = (kinds == "IMPRESSION") & (times >= from_ms) & (times < to_ms)
    # The first click at or after each impression, among clicks of the same (user, item).
    keys = CompositeKeys(times, int(pair_codes.max()) if len(pair_codes) else 0)
    click_keys = np.sort(keys.pack(pair_codes[clicks], times[clicks]))
    position = np.searchsorted(click_keys, keys.pack(pair_codes[is_query], times[is_query]))
    exists = position < len(click_keys)
    found = (
        click_keys[np.minimum(position, max(len(click_keys) - 1, 0))]
        if len(click_keys)
        else (np.zeros(len(position), dtype=np.int64))
    )
    same_pair = exists & (found >> keys.bits == pair_codes[is_query])
    found_time = (found & ((1 << keys.bits) - 1)) + keys.base
    soon = same_pair & (found_time - times[is_query] <= LABEL_WINDOW_MS)
    # Or a click anywhere in range carrying the impression's request_id.
    request = events.column("request_id")
    keyed = pc.binary_join_element_wise(pair, pc.fill_null(request, ""), "\x1f")
    clicked_requests = pc.unique(
        keyed.filter(pa.array(clicks & request.is_valid().to_numpy(zero_copy_only=False)))
    )
    by_request = pc.and_kleene(
        request.filter(pa.array(is_query)).is_valid(),
        pc.is_in(keyed.filter(pa.array(is_query)), clicked_requests),
    ).to_numpy(zero_copy_only=False)
    query_rows = events.filter(pa.array(is_query))
    table = query_rows.select(["log_offset", *IMPRESSION_COLUMNS])
    return table.append_column("clicked", pa.array((soon | by_request).astype(np.int8)))


class _ShardFeatures(beam.DoFn):  # type: ignore[misc]
    """All events of one shard → its impressions' features (and labels, in user shards)."""

    def __init__(self, from_ms: int, to_ms: int) -> None:
        self._from = from_ms
        self._to = to_ms

    def process(self, element: tuple[tuple[str, int], Iterable[pa.Table]]) -> Iterator[Any]:
        (entity_name, _), parts = element
        events = pa.concat_tables(list(parts))
        entity = next(e for e in ENTITIES if e.name == entity_name)
        features = point_in_time_features(events, entity, self._from, self._to)
        if entity_name == "user":
            labels = click_labels(events, self._from, self._to)
            features = labels.join(features, "log_offset", join_type="inner")
        bucket = pc.divide(features.column("log_offset"), _BUCKET_ROWS).to_numpy()
        for number in np.unique(bucket).tolist():
            yield number, (entity_name, features.filter(pa.array(bucket == number)))


class _JoinBucket(beam.DoFn):  # type: ignore[misc]
    """User and item halves of one bucket of impressions → complete training rows."""

    def __init__(self, folder: str) -> None:
        self._folder = folder

    def process(self, element: tuple[int, Iterable[tuple[str, pa.Table]]]) -> Iterator[int]:
        bucket, halves = element
        by_entity: dict[str, list[pa.Table]] = {}
        for entity_name, table in halves:
            by_entity.setdefault(entity_name, []).append(table)
        users = pa.concat_tables(by_entity.get("user", []))
        items = pa.concat_tables(by_entity.get("item", []))
        rows = users.join(items, "log_offset", join_type="inner").sort_by("log_offset")
        if rows.num_rows != users.num_rows or rows.num_rows != items.num_rows:
            raise ComponentError(f"bucket {bucket}: user and item halves do not match")
        pq.write_table(rows, Path(self._folder) / f"bucket-{bucket:08d}.parquet")
        yield rows.num_rows


def build_training_set(
    config: SaikiConfig,
    from_ms: int,
    to_ms: int,
    out: Path,
    *,
    snapshot_id: int | None = None,
    runner: str = "DirectRunner",
    beam_args: tuple[str, ...] = (),
    shards: int = 8,
) -> TrainingSetLineage:
    """Run the pipeline and write one Parquet file with its lineage in the metadata."""
    if to_ms <= from_ms:
        raise InvalidInputError("--to", "must be after --from")
    master = MasterDataset(config)
    pinned = master.resolve_snapshot(snapshot_id)
    if pinned is None:
        raise PreconditionError("the master dataset has no snapshot: ingest events first")
    lower = from_ms - MAX_WINDOW.ms
    lower -= lower % MS_PER_MINUTE
    scan = SnapshotScan(
        catalog_properties(config),
        f"{config.catalog.namespace}.{EVENTS_TABLE}",
        pinned,
        lower,
        to_ms + LABEL_WINDOW_MS + 1,
        columns=(
            "event_id",
            "event_time",
            "user_id",
            "item_id",
            "device_id",
            "event_type",
            "dwell_ms",
            "request_id",
            "variant",
            "log_offset",
        ),
    )
    out = out.resolve()
    staging = out.parent / f".{out.name}.parts-{os.getpid()}-{time.time_ns()}"
    staging.mkdir(parents=True)
    try:
        with beam.Pipeline(options=pipeline_options(runner, beam_args)) as pipeline:
            _ = (
                pipeline
                | "ReadMaster" >> ReadSnapshot(scan)
                | "KeyByShard" >> beam.ParDo(_KeyByShard(shards))
                | "GroupShards" >> beam.GroupByKey()
                | "Features" >> beam.ParDo(_ShardFeatures(from_ms, to_ms))
                | "GroupBuckets" >> beam.GroupByKey()
                | "Join" >> beam.ParDo(_JoinBucket(str(staging)))
            )
        parts = sorted(staging.glob("*.parquet"))
        table = (
            pa.concat_tables(pq.read_table(p) for p in parts) if parts else _empty_training_table()
        )
    except ComponentError:
        raise
    except Exception as exc:
        raise ComponentError(f"the training-set pipeline failed: {exc}") from exc
    finally:
        for part in staging.glob("*"):
            part.unlink()
        staging.rmdir()
    table = table.drop_columns(["log_offset"])
    lineage = TrainingSetLineage(
        snapshot_id=pinned,
        from_ms=from_ms,
        to_ms=to_ms,
        spec_version=SPEC_VERSION,
        code_version=code_version(),
        created_ms=now_ms(),
        rows=table.num_rows,
        positives=int(pc.sum(table.column("clicked")).as_py() or 0),
    )
    write_training_set(table, lineage, out)
    return lineage


def _empty_training_table() -> pa.Table:
    columns = {"log_offset": pa.array([], pa.int64())}
    columns.update({c: pa.array([], pa.string()) for c in IMPRESSION_COLUMNS})
    columns["event_time"] = pa.array([], pa.int64())
    columns["clicked"] = pa.array([], pa.int8())
    return pa.table(columns)


def write_training_set(table: pa.Table, lineage: TrainingSetLineage, out: Path) -> None:
    """Write atomically and durably, the lineage in the Parquet file's metadata."""
    metadata = dict(table.schema.metadata or {})
    metadata[LINEAGE_KEY] = json.dumps(asdict(lineage)).encode()
    buffer = pa.BufferOutputStream()
    pq.write_table(table.replace_schema_metadata(metadata), buffer, compression="zstd")
    atomic_write(out, buffer.getvalue().to_pybytes())


def read_lineage(path: Path) -> TrainingSetLineage:
    """The lineage stored in a training set's Parquet metadata."""
    metadata = pq.read_schema(path).metadata or {}
    if LINEAGE_KEY not in metadata:
        raise InvalidInputError("--training-set", f"{path} has no saiki lineage")
    return TrainingSetLineage(**json.loads(metadata[LINEAGE_KEY]))


def features_at(
    events: pa.Table, entity: Entity, ids: list[str], q_ms: int, upper_ms: int | None = None
) -> dict[str, dict[str, float]]:
    """Every feature of ``ids`` at query time q, from raw events, with the same prefix-sum
    arithmetic as training sets (``saiki consistency`` compares serving against this).

    Events count from ``floor_minute(q - W)`` to ``upper_ms`` (default q): serving "now"
    reads the current minute whole, so it answers at t with ``upper_ms = ceil_minute(t)``.
    """
    upper = q_ms if upper_ms is None else upper_ms
    mine = events.filter(pc.is_in(events.column(entity.key), pa.array(ids, pa.string())))
    dictionary, codes = (
        encode(mine.column(entity.key))
        if mine.num_rows
        else (pa.array([], pa.string()), np.zeros(0, np.int64))
    )
    position = {entity_id: n for n, entity_id in enumerate(dictionary.to_pylist())}
    added = contributions(mine.column("event_type"), mine.column("dwell_ms"))
    values = (
        np.column_stack([added[n].to_numpy() for n in AGGREGATION_NAMES]).astype(np.int64)
        if mine.num_rows
        else np.zeros((0, len(AGGREGATION_NAMES)), np.int64)
    )
    sums = (
        PrefixSums(codes, mine.column("event_time").to_numpy(), values) if mine.num_rows else None
    )
    query = np.array([position.get(i, -1) for i in ids], dtype=np.int64)
    known = query >= 0
    out: dict[str, dict[str, float]] = {i: {} for i in ids}
    for window in WINDOWS:
        lower = q_ms - window.ms
        lower -= lower % MS_PER_MINUTE
        window_sums = np.zeros((len(ids), len(AGGREGATION_NAMES)), dtype=np.int64)
        if sums is not None and known.any():
            count = int(known.sum())
            window_sums[known] = sums.between(
                query[known], np.full(count, lower), np.full(count, upper)
            )
        named = {n: window_sums[:, a] for a, n in enumerate(AGGREGATION_NAMES)}
        for name, column in finalise(named, window).items():
            for entity_id, value in zip(ids, column.tolist(), strict=True):
                out[entity_id][name] = value
    return out
