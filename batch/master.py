"""The immutable master dataset: Iceberg tables ``saiki.events`` and ``saiki.events_quarantine``.

The loader appends event-log segments to the tables **exactly once**: every snapshot it
commits carries, in its summary, the log offset just after the last record it holds
(``saiki.log.next-offset``). A rerun resumes from that offset; a crash after data files
were written but before the commit leaves only unreferenced files (the snapshot never
happened) and the rerun writes the same rows again, once. Concurrent loaders are
serialised by a file lock and, beyond one machine, by Iceberg's optimistic commit.
"""

from __future__ import annotations

import itertools
import json
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import yaml
from pyiceberg.catalog import Catalog, load_catalog
from pyiceberg.exceptions import CommitFailedException, NoSuchTableError
from pyiceberg.partitioning import PartitionField, PartitionSpec
from pyiceberg.table import Table
from pyiceberg.transforms import DayTransform

from saiki.batch.predictions import (
    DROPPED,
    FILES_PER_COMMIT,
    HOLD_MS,
    LOADED_FILES,
    PREDICTIONS_SCHEMA,
    PREDICTIONS_TABLE,
    PredictionsLoad,
    drop_forgotten,
    finish_last_commit,
    pending_files,
    read_files,
)
from saiki.batch.tables import (
    EVENTS_SCHEMA,
    EVENTS_TABLE,
    NEXT_OFFSET,
    QUARANTINE_SCHEMA,
    QUARANTINE_TABLE,
    LoadResult,
    events_to_iceberg,
    quarantine_to_iceberg,
)
from saiki.core.config import SaikiConfig
from saiki.core.errors import ComponentError
from saiki.core.eventlog import EventLog, Topic
from saiki.core.files import atomic_write, file_lock
from saiki.core.forgotten import Forgotten
from saiki.core.ingest import QUARANTINE_RECORD_SCHEMA, SEGMENT_ARROW_SCHEMA

# Each table's schema and the field its day partition is taken from.
_SCHEMAS: Final = {
    EVENTS_TABLE: (EVENTS_SCHEMA, 2),
    QUARANTINE_TABLE: (QUARANTINE_SCHEMA, 1),
    PREDICTIONS_TABLE: (PREDICTIONS_SCHEMA, 1),
}


@dataclass(frozen=True)
class SnapshotInfo:
    """One snapshot of saiki.events, as ``saiki master snapshots`` lists it."""

    snapshot_id: int
    timestamp_ms: int
    operation: str
    added_records: int
    total_records: int
    next_offset: int


def write_pyiceberg_yaml(config: SaikiConfig) -> Path:
    """Write ``<data dir>/.pyiceberg.yaml`` so stock tools open the catalog as ``saiki``."""
    path = config.data_dir / ".pyiceberg.yaml"
    catalog = config.iceberg_properties  # credentials too: the data dir is private
    text = yaml.safe_dump({"catalog": {config.catalog.name: catalog}}, sort_keys=False)
    if not path.exists() or path.read_text() != text:
        atomic_write(path, text)
    return path


def open_catalog(config: SaikiConfig) -> Catalog:
    """The Iceberg catalog named by the configuration (SqlCatalog on SQLite by default)."""
    write_pyiceberg_yaml(config)
    (config.data_dir / "warehouse").mkdir(parents=True, exist_ok=True)
    return load_catalog(config.catalog.name, **config.iceberg_properties)


def _evolved(table: Table, name: str) -> Table:
    """A table created by an earlier saiki, given the columns added since (Iceberg schema
    evolution: old rows read them as null)."""
    wanted = _SCHEMAS[name][0]
    have = {f.name for f in table.schema().fields}
    missing = [f for f in wanted.fields if f.name not in have]
    if missing:
        with table.update_schema() as update:
            for field in missing:
                update.add_column(field.name, field.field_type, doc=field.doc)
    return table


def loader_summary(table: Table) -> dict[str, str]:
    """The current snapshot's ``saiki.*`` summary properties: what a loader resumes from
    (the log offset, the files of its last commit). A snapshot that rewrites a table
    (compaction, a deletion) carries them."""
    current = table.current_snapshot()
    summary = current.summary.additional_properties if current and current.summary else {}
    return {k: str(v) for k, v in summary.items() if k.startswith("saiki.")}


def data_files_by_day(table: Table, rows: pa.Table) -> Iterator[Any]:
    """Write rows as Iceberg data files, one or more per day partition.

    What ``Transaction.append`` does, minus its generic partition split, which sorts every
    row and round-trips the order through Python lists (70% of a load's time here). The
    log is nearly in time order, so a filter per day is cheap; pyiceberg's own
    ``write_file`` then writes the partitions in parallel, with field ids, as append would.
    """
    from pyiceberg.io.pyarrow import bin_pack_arrow_table, write_file
    from pyiceberg.partitioning import PartitionFieldValue, PartitionKey
    from pyiceberg.table import TableProperties, WriteTask

    metadata = table.metadata
    spec, schema = metadata.spec(), metadata.schema()
    (field,) = spec.fields  # saiki's tables have exactly one partition field: the day
    source = schema.find_field(field.source_id).name
    micros = pc.cast(rows.column(source), pa.int64())
    day = pc.divide(micros, 86_400_000_000).to_numpy()
    target = int(
        metadata.properties.get(
            TableProperties.WRITE_TARGET_FILE_SIZE_BYTES,
            TableProperties.WRITE_TARGET_FILE_SIZE_BYTES_DEFAULT,
        )
    )
    write_uuid, counter = uuid.uuid4(), itertools.count()
    tasks = []
    for value in np.unique(day).tolist():
        mask = day == value
        part = rows.filter(pa.array(mask))
        first = part.column(source)[0].as_py()
        key = PartitionKey(
            raw_partition_field_values=[PartitionFieldValue(field, first)],
            partition_spec=spec,
            schema=schema,
        )
        tasks += [
            WriteTask(
                write_uuid=write_uuid,
                task_id=next(counter),
                record_batches=batches,
                partition_key=key,
                schema=schema,
            )
            for batches in bin_pack_arrow_table(part, target)
        ]
    yield from write_file(io=table.io, table_metadata=metadata, tasks=iter(tasks))


class MasterDataset:
    """The Iceberg tables of the master dataset and the exactly-once loader into them."""

    def __init__(
        self, config: SaikiConfig, before_commit: Callable[[str, int], None] | None = None
    ) -> None:
        self.config = config
        self.catalog = open_catalog(config)
        # Called with (table, next offset) after data files are written, before the commit:
        # the seam the crash tests kill the loader at.
        self._before_commit = before_commit or (lambda table, offset: None)

    def _identifier(self, name: str) -> str:
        return f"{self.config.catalog.namespace}.{name}"

    def table(self, name: str = EVENTS_TABLE) -> Table:
        """Open (creating on first use) one of the master dataset's tables."""
        try:
            return _evolved(self.catalog.load_table(self._identifier(name)), name)
        except NoSuchTableError:
            pass
        self.catalog.create_namespace_if_not_exists(self.config.catalog.namespace)
        schema, time_field = _SCHEMAS[name]
        spec = PartitionSpec(
            PartitionField(
                source_id=time_field, field_id=1000, transform=DayTransform(), name="day"
            )
        )
        return self.catalog.create_table_if_not_exists(
            self._identifier(name),
            schema=schema,
            partition_spec=spec,
            properties={"write.parquet.compression-codec": "zstd"},
        )

    @staticmethod
    def committed_offset(table: Table) -> int:
        """The log offset just after the last record the table's current snapshot holds."""
        snapshot = table.current_snapshot()
        if snapshot is None or snapshot.summary is None:
            return 0
        return int(snapshot.summary.additional_properties.get(NEXT_OFFSET, 0))

    @contextmanager
    def loader_lock(self) -> Iterator[None]:
        """Hold the loader's lock (loads and table upkeep never overlap on this machine)."""
        with file_lock(self.config.data_dir / ".master.lock"):
            yield

    def load(
        self,
        log: EventLog,
        rows_per_commit: int = 2_000_000,
        progress: Callable[[int], None] | None = None,
    ) -> list[LoadResult]:
        """Append everything in the log that the tables do not hold yet, exactly once.

        With ``[log] backend = "kafka"`` the records come from the topic instead
        (``batch/kafka_load.py``).
        """
        if self.config.log.backend == "kafka":
            from saiki.batch.kafka_load import load_from_kafka

            with self.loader_lock():
                return load_from_kafka(self, rows_per_commit, progress)
        with self.loader_lock():
            return [
                self._load_topic(
                    name=EVENTS_TABLE,
                    topic=log.events,
                    schema=SEGMENT_ARROW_SCHEMA,
                    convert=events_to_iceberg,
                    rows_per_commit=rows_per_commit,
                    progress=progress,
                ),
                self._load_topic(
                    name=QUARANTINE_TABLE,
                    topic=log.quarantine,
                    schema=QUARANTINE_RECORD_SCHEMA,
                    convert=quarantine_to_iceberg,
                    rows_per_commit=rows_per_commit,
                    progress=None,
                ),
            ]

    def _load_topic(
        self,
        *,
        name: str,
        topic: Topic,
        schema: pa.Schema,
        convert: Callable[[pa.Table], pa.Table],
        rows_per_commit: int,
        progress: Callable[[int], None] | None,
    ) -> LoadResult:
        table = self.table(name)
        start = self.committed_offset(table)
        pending: list[pa.Table] = []
        pending_rows = rows = snapshots = 0
        next_offset = start
        for segment, rows_of_segment in topic.read_range(start, schema):
            pending.append(rows_of_segment)
            pending_rows += rows_of_segment.num_rows
            next_offset = segment.end
            if pending_rows >= rows_per_commit:
                table = self._commit(table, name, convert(pa.concat_tables(pending)), next_offset)
                rows, snapshots = rows + pending_rows, snapshots + 1
                if progress is not None:
                    progress(pending_rows)
                pending, pending_rows = [], 0
        if pending:
            table = self._commit(table, name, convert(pa.concat_tables(pending)), next_offset)
            rows, snapshots = rows + pending_rows, snapshots + 1
            if progress is not None:
                progress(pending_rows)
        return LoadResult(name, rows, snapshots, next_offset)

    def _commit(self, table: Table, name: str, rows: pa.Table, next_offset: int) -> Table:
        expected = self.committed_offset(table)
        try:
            return self.append(table, name, rows, {NEXT_OFFSET: str(next_offset)})
        except CommitFailedException as exc:
            # Another writer committed first (beyond this machine's lock): never guess.
            current = self.committed_offset(self.table(name))
            raise ComponentError(
                f"concurrent load of saiki.{name}: expected offset {expected}, table now at "
                f"{current}; rerun the load"
            ) from exc

    def append(self, table: Table, name: str, rows: pa.Table, properties: dict[str, str]) -> Table:
        """Commit ``rows`` as one snapshot whose summary carries ``properties``."""
        transaction = table.transaction()
        with transaction.update_snapshot(snapshot_properties=properties).fast_append() as add:
            for data_file in data_files_by_day(table, rows):
                add.append_data_file(data_file)
        self._before_commit(name, int(properties.get(NEXT_OFFSET, -1)))
        return transaction.commit_transaction()

    def load_predictions(
        self, folder: Path, now_ms: int, hold_ms: int = HOLD_MS
    ) -> PredictionsLoad:
        """Append the closed prediction-log files past ``hold_ms`` to saiki.predictions,
        exactly once, then remove them (``batch/predictions.py``)."""
        result = PredictionsLoad()
        with self.loader_lock():
            table = self.table(PREDICTIONS_TABLE)
            current = table.current_snapshot()
            summary = current.summary.additional_properties if current and current.summary else {}
            result.removed_after_crash = finish_last_commit(summary, folder)
            files = pending_files(folder, now_ms, hold_ms)
            for start in range(0, len(files), FILES_PER_COMMIT):
                batch = files[start : start + FILES_PER_COMMIT]
                rows, torn, dropped = read_files(batch)
                rows, forgotten = drop_forgotten(rows, Forgotten.of(self.config.data_dir))
                result.forgotten += forgotten
                properties = {
                    LOADED_FILES: json.dumps([p.name for p in batch]),
                    DROPPED: str(dropped),  # this commit's files noted so many not logged
                }
                if rows.num_rows:
                    table = self.append(table, PREDICTIONS_TABLE, rows, properties)
                    result.snapshots += 1
                for path in batch:  # durable in the table (or empty): the files go
                    path.unlink()
                result.rows += rows.num_rows
                result.files += len(batch)
                result.torn_lines += torn
                result.dropped += dropped
        return result

    def snapshots(self, name: str = EVENTS_TABLE) -> list[SnapshotInfo]:
        """Every snapshot of a table, oldest first."""
        table = self.table(name)
        found = []
        for snapshot in table.snapshots():
            summary: dict[str, Any] = (
                snapshot.summary.additional_properties if snapshot.summary else {}
            )
            found.append(
                SnapshotInfo(
                    snapshot_id=snapshot.snapshot_id,
                    timestamp_ms=snapshot.timestamp_ms,
                    operation=str(snapshot.summary.operation.value) if snapshot.summary else "",
                    added_records=int(summary.get("added-records", 0)),
                    total_records=int(summary.get("total-records", 0)),
                    next_offset=int(summary.get(NEXT_OFFSET, 0)),
                )
            )
        return found

    def resolve_snapshot(
        self, snapshot_id: int | None = None, as_of_ms: int | None = None
    ) -> int | None:
        """The snapshot to read: the one given, the newest at ``as_of_ms``, or the current."""
        from saiki.core.errors import NotFoundError

        table = self.table()
        if snapshot_id is not None:
            if table.snapshot_by_id(snapshot_id) is None:
                raise NotFoundError(f"saiki.events has no snapshot {snapshot_id}")
            return snapshot_id
        if as_of_ms is not None:
            snapshot = table.snapshot_as_of_timestamp(as_of_ms)
            if snapshot is None:
                raise NotFoundError(f"saiki.events has no snapshot at or before {as_of_ms}")
            return int(snapshot.snapshot_id)
        current = table.current_snapshot()
        return int(current.snapshot_id) if current else None

    def read(self, snapshot_id: int | None, columns: tuple[str, ...] = ("*",)) -> pa.Table:
        """All rows of saiki.events at a snapshot (empty before the first load)."""
        table = self.table()
        if snapshot_id is None:
            return EVENTS_SCHEMA.as_arrow().empty_table()
        return table.scan(snapshot_id=snapshot_id, selected_fields=columns).to_arrow()

    def counts(self, snapshot_id: int | None) -> pa.Table:
        """Rows per day and event type at a snapshot: the table ``saiki master show`` prints."""
        rows = self.read(snapshot_id, ("event_time", "event_type"))
        if rows.num_rows == 0:
            return pa.table({"day": pa.array([], pa.string()), "event_type": [], "events": []})
        day = pc.strftime(rows.column("event_time"), format="%Y-%m-%d")
        grouped = (
            pa.table({"day": day, "event_type": rows.column("event_type")})
            .group_by(["day", "event_type"])
            .aggregate([("event_type", "count")])
            .rename_columns(["day", "event_type", "events"])
        )
        return grouped.sort_by([("day", "ascending"), ("event_type", "ascending")])
