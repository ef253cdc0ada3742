"""What the speed job and its sink agree on: the job's spec and shape, and the one-line
format in which each change crosses from Flink's SQL to the Python sink.

Kept apart from :mod:`saiki.speed.job` (which declares the Flink job and so imports the
sink) so that the sink, running inside Flink, imports these without importing the job.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from saiki.feature_repo.spec import AGGREGATIONS

TILE_COLUMNS = tuple(f"a{i}" for i in range(len(AGGREGATIONS)))
# The job's shape: raised whenever a change makes old checkpoints unrestorable (the
# query's operators, the sink's state, or the module names its pickled functions carry).
# A checkpoint of another shape is not restored: the job starts fresh from the cutoff.
JOB_SHAPE = 5


@dataclass(frozen=True)
class SpeedJobSpec:
    """Everything the job needs; serialisable so the sink can rebuild it inside Flink."""

    data_dir: str
    log_dir: str
    epoch_cutoff_ms: int
    allowed_lateness_s: int
    checkpoint_interval_ms: int
    sink_flush_ms: int
    state_ttl_s: int = 900
    monitor_ms: int = 200
    # Cluster mode: read a Kafka topic instead of the segment files (``[log] backend``).
    kafka_bootstrap: str = ""
    kafka_topic: str = ""
    # ``[log.kafka_properties]`` as (key, value) pairs: the Kafka client's own settings
    # (a managed Kafka's SASL/TLS), passed to the source as ``properties.<key>``.
    kafka_properties: tuple[tuple[str, str], ...] = ()
    shape: int = JOB_SHAPE
    # The first log offset in the folder when the job started fresh (older segments had
    # been archived): the job's count of records read starts there.
    first_offset: int = 0
    # ``[speed] checkpoint_dir``; empty: under the speed folder.
    checkpoint_dir: str = ""
    object_reuse: bool = True  # Flink's pipeline.object-reuse ([speed] object_reuse)
    # A restore's counters, when the driver knows them (speed/idle.py): published from the
    # sink's start. Never saved with the lineage: they belong to one checkpoint.
    restored: tuple[tuple[str, int], ...] = ()

    @property
    def speed_dir(self) -> Path:
        """Where status and the job's lineage live."""
        return Path(self.data_dir) / "speed"

    @property
    def checkpoints(self) -> Path:
        """Where the job's checkpoints go."""
        return checkpoint_root(self.data_dir, self.checkpoint_dir)


def checkpoint_root(data_dir: str | Path, configured: str) -> Path:
    """``[speed] checkpoint_dir``, or ``<data>/speed/checkpoints`` when it is empty."""
    return Path(configured) if configured else Path(data_dir) / "speed" / "checkpoints"


# What the sink receives per change, as one line: a row of ten fields cost the JVM and
# Python about 60 µs to hand over (a field at a time, then a pyflink Row built around
# them), as much as everything else the job does per tile. The entity's id goes last,
# since it may hold any character; ``parse_sink_line`` splits a line back.
SINK_LINE_FIELDS = (
    "kind",
    "entity",
    "minute_ms",
    *TILE_COLUMNS,
    "events",
    "max_event_ms",
    "max_ingest_ms",
    "entity_id",
)
_SEPARATOR = "|"


class SinkLine(NamedTuple):
    """One change the sink receives: a tile's value so far, late events, progress, or
    the records read so far of one segment (``minute_ms`` its first offset,
    ``max_event_ms`` its length)."""

    kind: str
    entity: str
    entity_id: str
    minute_ms: int
    values: tuple[int, ...]
    events: int
    max_event_ms: int
    max_ingest_ms: int


def sink_line_sql() -> str:
    """The SQL expression that renders a row of :func:`union_query` as a sink line."""
    parts = ", ".join(f"COALESCE(CAST({c} AS STRING), '')" for c in SINK_LINE_FIELDS)
    return f"CONCAT_WS('{_SEPARATOR}', {parts})"


def parse_sink_line(line: str) -> SinkLine:
    """The inverse of :func:`sink_line_sql` (called once per change: kept lean)."""
    parts = line.split(_SEPARATOR, len(SINK_LINE_FIELDS) - 1)
    try:
        numbers = list(map(int, parts[2:-1]))
    except ValueError:  # a NULL rendered as ''
        numbers = [int(n or 0) for n in parts[2:-1]]
    return SinkLine(
        parts[0],
        parts[1],
        parts[-1],
        numbers[0],
        tuple(numbers[1:-3]),
        numbers[-3],
        numbers[-2],
        numbers[-1],
    )
