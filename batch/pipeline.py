"""The batch view as a Beam pipeline: master snapshot → per-minute tiles → view files.

Shaped after Beam's own examples: the logic is composite ``PTransform``s that take their
parameters in the constructor (:class:`ComputeBatchView`), I/O stays at the edges
(:class:`ReadSnapshotByDay`, :class:`WriteTables`), and bad rows leave through a tagged
dead-letter output.

The shape follows the data: the master dataset is partitioned by day and a per-minute
tile never spans two days, so the pipeline groups the (tiny) scan tasks by day, reads and
tiles each day inside one step, and writes its tiles where they are. What crosses the
shuffle is only each day's contribution to every entity's windows at the cutoff — a few
numbers per entity — which Beam's combiner adds up with the spec's arithmetic. Moving the
tiles themselves through the runner cost five times the work of computing them.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import apache_beam as beam
import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from apache_beam import pvalue

from saiki.batch.tables import iceberg_time
from saiki.feature_repo.spec import AGGREGATION_NAMES, ENTITIES, MAX_WINDOW, WINDOWS, Entity
from saiki.feature_repo.tiles import (
    ENTITY_ID,
    MINUTE,
    MS_PER_MINUTE,
    encode,
    finalise,
    tiles,
)

DEAD_LETTER: Final = "dead_letter"
READ_COLUMNS: Final = ("event_time", "user_id", "item_id", "event_type", "dwell_ms", "log_offset")

# Events read so far by in-process runs, keyed by run token: the driver's progress bar.
# (Remote runners report through Beam metrics instead.)
LOCAL_PROGRESS: dict[str, int] = {}


@dataclass(frozen=True)
class SnapshotScan:
    """What to read: a table at a pinned snapshot, events with lower <= event_time < upper."""

    catalog: dict[str, str]
    identifier: str
    snapshot_id: int
    lower_ms: int
    upper_ms: int
    columns: tuple[str, ...] = READ_COLUMNS

    def row_filter(self) -> Any:
        """The pyiceberg expression for the time range (prunes day partitions)."""
        from pyiceberg.expressions import And, GreaterThanOrEqual, LessThan

        return And(
            GreaterThanOrEqual("event_time", iceberg_time(self.lower_ms)),
            LessThan("event_time", iceberg_time(self.upper_ms)),
        )

    def plan(self) -> list[Any]:
        """The FileScanTasks of the scan (small, picklable: about 1.5 KB each)."""
        table = self._table()
        scan = table.scan(
            row_filter=self.row_filter(), snapshot_id=self.snapshot_id, selected_fields=self.columns
        )
        return list(scan.plan_files())

    def _table(self) -> Any:
        from pyiceberg.catalog import load_catalog

        properties = {k: v for k, v in self.catalog.items() if k != "name"}
        return load_catalog(self.catalog["name"], **properties).load_table(self.identifier)


def normalise_types(table: pa.Table) -> pa.Table:
    """Scan output in one shape: times as epoch-ms int64, strings as plain ``string``."""
    fields = []
    for field in table.schema:
        if pa.types.is_timestamp(field.type):
            fields.append(pa.field(field.name, pa.int64()))
        elif pa.types.is_large_string(field.type):
            fields.append(pa.field(field.name, pa.string()))
        else:
            fields.append(field)
    columns = [
        pc.divide(pc.cast(column, pa.int64()), 1000)
        if pa.types.is_timestamp(column.type)
        else column
        for column in table.columns
    ]
    return pa.Table.from_arrays(columns, schema=pa.schema(fields)).cast(pa.schema(fields))


class _ReadTask(beam.DoFn):  # type: ignore[misc]
    """Read one FileScanTask into Arrow batches with ``event_time`` as epoch ms."""

    def __init__(self, scan: SnapshotScan, token: str) -> None:
        self._scan = scan
        self._token = token
        self._arrow: Any = None

    def setup(self) -> None:
        from pyiceberg.io.pyarrow import ArrowScan

        table = self._scan._table()
        metadata = table.metadata
        snapshot = metadata.snapshot_by_id(self._scan.snapshot_id)
        schema = metadata.schema_by_id(snapshot.schema_id) if snapshot.schema_id else None
        projected = (schema or metadata.schema()).select(*self._scan.columns)
        self._arrow = ArrowScan(metadata, table.io, projected, self._scan.row_filter())

    def process(self, task: Any) -> Iterator[pa.Table]:
        table = self._arrow.to_table([task])
        if table.num_rows == 0:
            return
        table = normalise_types(table)
        beam.metrics.Metrics.counter("saiki", "events_read").inc(table.num_rows)
        LOCAL_PROGRESS[self._token] = LOCAL_PROGRESS.get(self._token, 0) + table.num_rows
        yield table


class ReadSnapshot(beam.PTransform):  # type: ignore[misc]
    """Events of a pinned master snapshot, as Arrow tables (one or more per data file)."""

    def __init__(self, scan: SnapshotScan, token: str = "") -> None:
        super().__init__()
        self._scan = scan
        self._token = token

    def expand(self, begin: Any) -> Any:
        return (
            begin
            | "PlanFiles" >> beam.Create(self._scan.plan())
            | "Reshuffle" >> beam.Reshuffle()
            | "ReadFiles" >> beam.ParDo(_ReadTask(self._scan, self._token))
        )


def task_day(task: Any) -> int:
    """The day partition (days since the epoch) of a scan task's data file."""
    return int(task.file.partition[0])


class _ReadDay(_ReadTask):
    """Read every scan task of one day into one table of that day's events."""

    def process(self, element: tuple[int, Iterable[Any]]) -> Iterator[tuple[int, pa.Table]]:
        day, tasks = element
        table = self._arrow.to_table(list(tasks))
        if table.num_rows == 0:
            return
        table = normalise_types(table)
        beam.metrics.Metrics.counter("saiki", "events_read").inc(table.num_rows)
        LOCAL_PROGRESS[self._token] = LOCAL_PROGRESS.get(self._token, 0) + table.num_rows
        yield day, table


class ReadSnapshotByDay(beam.PTransform):  # type: ignore[misc]
    """Events of a pinned master snapshot as (day, all of that day's events)."""

    def __init__(self, scan: SnapshotScan, token: str = "") -> None:
        super().__init__()
        self._scan = scan
        self._token = token

    def expand(self, begin: Any) -> Any:
        return (
            begin
            | "PlanFiles" >> beam.Create(self._scan.plan())
            | "KeyByDay" >> beam.Map(lambda task: (task_day(task), task))
            | "GroupByDay" >> beam.GroupByKey()
            | "ReadDays" >> beam.ParDo(_ReadDay(self._scan, self._token))
        )


def shard_of(entity_id: str, shards: int) -> int:
    """The stable shard of an entity id (crc32, the same in every process)."""
    return zlib.crc32(entity_id.encode()) % shards


def shards_of(ids: pa.Array | pa.ChunkedArray, shards: int) -> npt.NDArray[np.int64]:
    """The shard of every row's id, hashing each distinct id once."""
    dictionary, codes = encode(ids)
    per_id = np.fromiter(
        (shard_of(i, shards) for i in dictionary.to_pylist()), np.int64, len(dictionary)
    )
    result: npt.NDArray[np.int64] = per_id[codes]
    return result


def invalid_rows(batch: pa.Table) -> pa.Array:
    """Rows the master dataset should never hold: missing ids, unknown type, bad dwell."""
    bad = pa.array(np.zeros(batch.num_rows, dtype=bool))
    for entity in ENTITIES:
        ids = batch.column(entity.key)
        bad = pc.or_kleene(bad, pc.or_kleene(pc.is_null(ids), pc.equal(pc.utf8_length(ids), 0)))
    known = pc.is_in(batch.column("event_type"), pa.array(["IMPRESSION", "CLICK"]))
    bad = pc.or_kleene(bad, pc.invert(pc.fill_null(known, False)))
    dwell = batch.column("dwell_ms")
    bad = pc.or_kleene(bad, pc.fill_null(pc.less(dwell, 0), False))
    return pc.fill_null(pc.or_kleene(bad, pc.is_null(batch.column("event_time"))), True)


class _Validate(beam.DoFn):  # type: ignore[misc]
    """Pass a day's valid rows on; send the others, whole, to the dead-letter output."""

    def process(self, element: tuple[int, pa.Table]) -> Iterator[Any]:
        day, batch = element
        bad = invalid_rows(batch)
        if pc.any(bad).as_py():
            rejected = batch.filter(bad)
            beam.metrics.Metrics.counter("saiki", "dead_letters").inc(rejected.num_rows)
            yield pvalue.TaggedOutput(DEAD_LETTER, rejected)
            batch = batch.filter(pc.invert(bad))
        if batch.num_rows:
            yield day, batch


def window_parts(tile_table: pa.Table, cutoff_ms: int) -> pa.Table:
    """What these tiles add to each entity's windows at q = T: ``entity_id`` plus one
    column per (window, aggregation), named ``{aggregation}@{window}``."""
    ids, codes = encode(tile_table.column(ENTITY_ID))
    minutes = tile_table.column(MINUTE).to_numpy()
    values = np.column_stack([tile_table.column(n).to_numpy() for n in AGGREGATION_NAMES])
    columns: dict[str, Any] = {ENTITY_ID: ids.cast(pa.string())}
    for window in WINDOWS:
        inside = minutes >= (cutoff_ms - window.ms) // MS_PER_MINUTE
        for a, name in enumerate(AGGREGATION_NAMES):
            sums = np.bincount(codes[inside], weights=values[inside, a], minlength=len(ids))
            columns[f"{name}@{window.name}"] = pa.array(np.rint(sums).astype(np.int64))
    return pa.table(columns)


class SumWindowsFn(beam.CombineFn):  # type: ignore[misc]
    """Beam's combiner over days' window contributions: add them, then finalise.

    The output is shaped as the Feast batch source: the entity's join key, every feature
    of the spec, ``event_timestamp`` (T) and ``batch_cutoff_ms``.
    """

    def __init__(self, cutoff_ms: int, entity: Entity) -> None:
        self._cutoff = cutoff_ms
        self._entity = entity

    def create_accumulator(self) -> list[pa.Table]:
        return []

    def add_input(self, accumulator: list[pa.Table], element: pa.Table) -> list[pa.Table]:
        accumulator.append(element)
        return accumulator

    def merge_accumulators(self, accumulators: Iterable[list[pa.Table]]) -> list[pa.Table]:
        return [_sum_parts([t for acc in accumulators for t in acc])]

    def extract_output(self, accumulator: list[pa.Table]) -> pa.Table:
        summed = _sum_parts(accumulator).sort_by(ENTITY_ID)
        columns: dict[str, Any] = {self._entity.key: summed.column(ENTITY_ID)}
        for window in WINDOWS:
            named = {n: summed.column(f"{n}@{window.name}").to_numpy() for n in AGGREGATION_NAMES}
            for name, value in finalise(named, window).items():
                columns[name] = pa.array(value)
        count = summed.num_rows
        columns["event_timestamp"] = pa.array(
            np.full(count, self._cutoff * 1000, dtype=np.int64), pa.timestamp("us", tz="UTC")
        )
        columns["batch_cutoff_ms"] = pa.array(np.full(count, self._cutoff, dtype=np.int64))
        return pa.table(columns)


def _sum_parts(parts: list[pa.Table]) -> pa.Table:
    if not parts:
        return pa.table({ENTITY_ID: pa.array([], pa.string())})
    table = pa.concat_tables(parts)
    sums = [c for c in table.column_names if c != ENTITY_ID]
    grouped = table.group_by(ENTITY_ID).aggregate([(c, "sum") for c in sums])
    return pa.table(
        {ENTITY_ID: grouped.column(ENTITY_ID), **{c: grouped.column(f"{c}_sum") for c in sums}}
    )


class ComputeBatchView(beam.PTransform):  # type: ignore[misc]
    """(day, that day's events before T) → per entity kind: tiles per day, and features.

    Each input element must hold all of its day's events (as ReadSnapshotByDay gives them):
    its tiles are then complete and are emitted as they are, keyed by day.
    """

    def __init__(self, cutoff_ms: int) -> None:
        super().__init__()
        if cutoff_ms % MS_PER_MINUTE:
            raise ValueError("the cutoff must be a whole minute")
        self._cutoff = cutoff_ms

    def expand(self, days: Any) -> dict[str, Any]:
        checked = days | "Validate" >> beam.ParDo(_Validate()).with_outputs(
            DEAD_LETTER, main="valid"
        )
        outputs: dict[str, Any] = {DEAD_LETTER: checked[DEAD_LETTER]}
        for entity in ENTITIES:
            tiled = checked.valid | f"Tile{entity.name}" >> beam.MapTuple(
                lambda day, events, entity=entity: (
                    day,
                    tiles(
                        events.column(entity.key),
                        events.column("event_time"),
                        events.column("event_type"),
                        events.column("dwell_ms"),
                    ),
                )
            )
            outputs[f"{entity.name}_tiles"] = tiled
            outputs[f"{entity.name}_features"] = (
                tiled
                | f"Windows{entity.name}"
                >> beam.MapTuple(
                    lambda day, table, name=entity.name: (name, window_parts(table, self._cutoff))
                )
                | f"Sum{entity.name}" >> beam.CombinePerKey(SumWindowsFn(self._cutoff, entity))
            )
        return outputs


class WriteTables(beam.PTransform):  # type: ignore[misc]
    """Write keyed tables as ``<folder>/<part>/<prefix>-NNNNNN.parquet``, one file per key.

    Deterministic names (not Beam's sink naming) make two runs byte-comparable; the whole
    view folder is published atomically by the driver after the pipeline succeeds.
    """

    def __init__(self, folder: Path, part: str, prefix: str) -> None:
        super().__init__()
        self._folder = folder
        self._part = part
        self._prefix = prefix

    def expand(self, keyed: Any) -> Any:
        return keyed | f"Write{self._part}" >> beam.MapTuple(self._write)

    def _write(self, key: int | str, table: pa.Table) -> str:
        target = self._folder / self._part
        target.mkdir(parents=True, exist_ok=True)
        name = f"{self._prefix}-{key:06d}" if isinstance(key, int) else f"{self._prefix}-{key}"
        path = target / f"{name}.parquet"
        pq.write_table(
            table.sort_by([(c, "ascending") for c in table.column_names[:2]]),
            path,
            compression="zstd",
        )
        return str(path)


class WriteDeadLetters(beam.PTransform):  # type: ignore[misc]
    """Refused rows, kept (never dropped silently) under ``dead_letter/``."""

    def __init__(self, folder: Path) -> None:
        super().__init__()
        self._folder = folder

    def expand(self, tables: Any) -> Any:
        return tables | "WriteDeadLetters" >> beam.Map(self._write)

    def _write(self, table: pa.Table) -> int:
        target = self._folder / DEAD_LETTER
        target.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha1(str(table.column("log_offset").to_pylist()).encode()).hexdigest()
        pq.write_table(table, target / f"rows-{digest[:16]}.parquet")
        return int(table.num_rows)


def window_lower_bound(cutoff_ms: int) -> int:
    """The oldest event time a view at this cutoff needs: floor_minute(T - max window)."""
    return cutoff_ms - MAX_WINDOW.ms
