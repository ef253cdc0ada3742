"""The master dataset's tables: their names, Iceberg schemas, and log rows in their
Arrow shape; what one load added. Shared by the loaders (``batch/master.py``, and
``batch/kafka_load.py`` for the Kafka event log)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.schema import Schema
from pyiceberg.types import LongType, NestedField, StringType, TimestamptzType

from saiki.core.schema import EVENT_FIELDS

EVENTS_TABLE: Final = "events"
QUARANTINE_TABLE: Final = "events_quarantine"
NEXT_OFFSET: Final = "saiki.log.next-offset"

_ICEBERG_TYPES: Final = {pa.string(): StringType(), pa.int64(): LongType()}
# The event schema's fields in their order (their ids are the table's field ids), then
# where each row came from: its log offset and ingest time.
EVENTS_SCHEMA: Final = Schema(
    *(
        NestedField(
            n,
            f.name,
            TimestamptzType() if f.is_time else _ICEBERG_TYPES[f.type],
            required=f.required,
        )
        for n, f in enumerate(EVENT_FIELDS, start=1)
    ),
    NestedField(len(EVENT_FIELDS) + 1, "log_offset", LongType(), required=True),
    NestedField(len(EVENT_FIELDS) + 2, "ingest_time", TimestamptzType(), required=True),
)
QUARANTINE_SCHEMA: Final = Schema(
    NestedField(1, "ingest_time", TimestamptzType(), required=True),
    NestedField(2, "source", StringType(), required=False),
    NestedField(3, "event_id", StringType(), required=False),
    NestedField(4, "field", StringType(), required=False),
    NestedField(5, "reason", StringType(), required=True),
    NestedField(6, "raw_payload", StringType(), required=True),
    NestedField(7, "log_offset", LongType(), required=True),
    # raw_payload holds at most a prefix of an oversized payload: its size and hash here.
    NestedField(8, "raw_bytes", LongType(), required=False),
    NestedField(9, "raw_sha256", StringType(), required=False),
)
_TIMESTAMP: Final = pa.timestamp("us", tz="UTC")


@dataclass(frozen=True)
class LoadResult:
    """What one load added to a table."""

    table: str
    rows: int
    snapshots: int
    next_offset: int


def events_to_iceberg(table: pa.Table) -> pa.Table:
    """Log rows (times in epoch ms) in the master table's Arrow shape."""

    def micros(column: str) -> pa.Array:
        return pc.multiply(table.column(column), 1000).cast(pa.int64()).cast(_TIMESTAMP)

    arrays = [micros(f.name) if f.is_time else table.column(f.name) for f in EVENT_FIELDS]
    arrays += [table.column("offset"), micros("ingest_ms")]
    return pa.Table.from_arrays(arrays, schema=EVENTS_SCHEMA.as_arrow())


def quarantine_to_iceberg(table: pa.Table) -> pa.Table:
    ingest = pc.multiply(table.column("ingest_ms"), 1000).cast(pa.int64()).cast(_TIMESTAMP)
    arrays = [
        ingest,
        table.column("source"),
        table.column("event_id"),
        table.column("field"),
        pc.fill_null(table.column("reason"), ""),
        pc.fill_null(table.column("raw"), ""),
        table.column("offset"),
        table.column("raw_bytes"),
        table.column("raw_sha256"),
    ]
    return pa.Table.from_arrays(arrays, schema=QUARANTINE_SCHEMA.as_arrow())


def iceberg_time(ms: int) -> str:
    """An epoch-ms instant as the ISO literal pyiceberg compares timestamptz columns with."""
    from datetime import UTC, datetime, timedelta

    instant = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)
    return instant.isoformat(timespec="microseconds")
