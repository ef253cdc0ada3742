"""Loading the master dataset from the Kafka event log (``[log] backend = "kafka"``),
exactly once.

Each snapshot the loader commits carries, in its summary, the next offset of every
partition it read (``saiki.kafka.offsets``, JSON; with one partition also
``saiki.log.next-offset``, which the batch and speed layers read). A load reads from
those offsets to the end of each partition as it finds it, so a crash before a commit
rereads the same records and one after it starts where the commit says: no record is
loaded twice and none is skipped. A topic, unlike the segment files, may hold an event
twice (a client's resend, the same event sent to two replicas): the loader keeps the
first record of each ``event_id`` in a chunk and drops those the table already holds
(one scan of the table for the chunk's ids). The quarantine topic is loaded as it is.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, Protocol

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json
from pyiceberg.exceptions import CommitFailedException
from pyiceberg.expressions import And, GreaterThanOrEqual, In, LessThanOrEqual
from pyiceberg.table import Table

from saiki.batch.tables import (
    EVENTS_TABLE,
    NEXT_OFFSET,
    QUARANTINE_TABLE,
    LoadResult,
    events_to_iceberg,
    iceberg_time,
    quarantine_to_iceberg,
)
from saiki.core.errors import ComponentError
from saiki.core.eventlog import OFFSET_FIELD
from saiki.core.ingest import QUARANTINE_RECORD_SCHEMA, SEGMENT_ARROW_SCHEMA
from saiki.core.kafka_log import QUARANTINE_SUFFIX, read_topic

if TYPE_CHECKING:
    from saiki.core.config import SaikiConfig


class Master(Protocol):
    """What the load needs of ``batch.master.MasterDataset``."""

    config: SaikiConfig

    def table(self, name: str) -> Table: ...

    def append(
        self, table: Table, name: str, rows: pa.Table, properties: dict[str, str]
    ) -> Table: ...


KAFKA_OFFSETS: Final = "saiki.kafka.offsets"


def committed_positions(table: Table) -> dict[int, int]:
    """Partition → next offset, as the table's current snapshot recorded them."""
    snapshot = table.current_snapshot()
    if snapshot is None or snapshot.summary is None:
        return {}
    text = snapshot.summary.additional_properties.get(KAFKA_OFFSETS)
    return {int(p): int(o) for p, o in json.loads(text).items()} if text else {}


def parse_records(values: list[bytes], schema: pa.Schema) -> pa.Table:
    """The topic's JSON records as an Arrow table of ``schema`` (other keys ignored)."""
    data = b"\n".join(values)
    table = pa_json.read_json(
        pa.BufferReader(data),
        read_options=pa_json.ReadOptions(block_size=max(len(data) + 1, 1 << 20)),
        parse_options=pa_json.ParseOptions(
            explicit_schema=schema, unexpected_field_behavior="ignore"
        ),
    )
    return table.select(schema.names)


def new_events(table: Table, rows: pa.Table) -> pa.Table:
    """The rows whose ``event_id`` neither an earlier row nor ``table`` holds.

    A resend carries its event's own time, so only the table's rows in the chunk's range
    of event times are looked at: the day partitions and the files' time bounds prune the
    scan to the recent files, whatever the table's size.
    """
    ids = rows.column("event_id").to_pylist()
    first = dict(zip(reversed(ids), range(len(ids) - 1, -1, -1), strict=True))
    if len(first) < len(ids):
        rows = rows.take(sorted(first.values()))
    bounds = pc.min_max(rows.column("event_time"))
    in_range = And(
        GreaterThanOrEqual("event_time", iceberg_time(bounds["min"].as_py())),
        LessThanOrEqual("event_time", iceberg_time(bounds["max"].as_py())),
    )
    held = table.scan(
        row_filter=And(in_range, In("event_id", set(first))), selected_fields=("event_id",)
    )
    held_ids = held.to_arrow().column("event_id")
    if len(held_ids):
        rows = rows.filter(pc.invert(pc.is_in(rows.column("event_id"), held_ids)))
    return rows


def load_from_kafka(
    master: Master,
    rows_per_commit: int,
    progress: Callable[[int], None] | None = None,
) -> list[LoadResult]:
    """Append what the events and quarantine topics hold past the recorded offsets."""
    log = master.config.log
    results = []
    for name, topic, schema, convert, dedupe in (
        (EVENTS_TABLE, log.kafka_topic, SEGMENT_ARROW_SCHEMA, events_to_iceberg, True),
        (
            QUARANTINE_TABLE,
            log.kafka_topic + QUARANTINE_SUFFIX,
            QUARANTINE_RECORD_SCHEMA,
            quarantine_to_iceberg,
            False,
        ),
    ):
        table = master.table(name)
        start = committed_positions(table)
        rows_loaded = snapshots = 0
        positions = dict(start)
        for values, offsets, positions in read_topic(
            log.kafka_bootstrap, topic, start, rows_per_commit, log.kafka_properties
        ):
            rows = parse_records(values, schema)
            rows = rows.add_column(0, OFFSET_FIELD, pa.array(offsets, pa.int64()))
            if dedupe:
                rows = new_events(table, rows)
            if not rows.num_rows:
                continue  # all held already: the next load rereads them, harmlessly
            summary = {KAFKA_OFFSETS: json.dumps(positions, sort_keys=True)}
            if len(positions) == 1:
                summary[NEXT_OFFSET] = str(next(iter(positions.values())))
            try:
                table = master.append(table, name, convert(rows), summary)
            except CommitFailedException as exc:
                raise ComponentError(
                    f"concurrent load of saiki.{name} from Kafka topic {topic}: another "
                    "loader committed first; rerun the load"
                ) from exc
            rows_loaded, snapshots = rows_loaded + rows.num_rows, snapshots + 1
            if progress is not None and dedupe:
                progress(rows.num_rows)
        next_offset = sum(positions.values()) if positions else 0
        results.append(LoadResult(name, rows_loaded, snapshots, next_offset))
    return results
