"""Segment files of the event log: their names, and how runs of them merge into one.

A segment is named by its first offset, its length and the log watermark at its start
(``seg-0000000000001000-00000500-1795176000000.jsonl``); its Arrow copy lives in the
``_arrow/`` folder beside it (see ``core/eventlog.py`` for the log itself).

**The archive merges small segments.** Flink's file source pays for each file it reads
(a split handed over, a reader opened: about 7 ms on this machine), so a fresh job
re-reading the 7,000 segments of fifty events each that a quarter of an hour of
``Ingest`` calls leaves took four times as long as over the same events in a few files
(``benchmarks/bench_speed_replay.py``). :meth:`Topic.archive` therefore writes each run
of consecutive small segments as one archived segment of up to ``MERGE_BYTES``: the same
records in the same order, named by its first offset, its length and its first part's
log watermark, each record's ``prior_ms`` raised to its own part's watermark, so every
record keeps its log watermark (``core/eventlog.py``). The merged segment is durable
before its parts are removed; parts a crash left behind are covered by it, ignored by
every listing and removed before the next move (:meth:`Topic.drop_covered`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import orjson
import pyarrow as pa
import pyarrow.json as pa_json

SIDECAR_DIR = "_arrow"  # beside the segments; skipped by Flink's source like any "_" name
SEGMENT_NAME: Final = re.compile(r"^seg-(\d{16})-(\d{8})-(\d{13})\.jsonl$")
# The most one merged archived segment holds; a segment of a quarter of it or more is
# archived as it is (a merged one moved again is not rewritten).
MERGE_BYTES: Final = 4 << 20
# Every events record starts so (core/log_records.py); one that does not is re-encoded.
_PRIOR = re.compile(rb'^\{"ingest_ms":-?\d+,"prior_ms":(-?\d+)[,}]')


@dataclass(frozen=True, order=True)
class Segment:
    """One immutable segment file of a topic: offsets ``first .. first + count - 1``."""

    first: int
    count: int
    path: Path
    watermark_ms: int = 0  # the log watermark at the segment's first record

    @property
    def end(self) -> int:
        """The offset just after this segment."""
        return self.first + self.count

    @property
    def sidecar(self) -> Path:
        """Where the Arrow copy of this segment lives (if the topic keeps one)."""
        return self.path.parent / SIDECAR_DIR / (self.path.name.removesuffix(".jsonl") + ".arrow")


@dataclass(frozen=True)
class StagedSegment:
    """A segment written and fsync'd under hidden names, not yet part of the topic."""

    count: int
    path: Path
    sidecar: Path | None

    def discard(self) -> None:
        """Remove the staged files (the batch was not published)."""
        self.path.unlink(missing_ok=True)
        if self.sidecar is not None:
            self.sidecar.unlink(missing_ok=True)


def read_json(path: Path, options: pa_json.ParseOptions) -> pa.Table:
    """Read a JSON-lines file whatever its longest line: pyarrow's reader refuses a line
    longer than its block (1 MiB by default), so such a file is read again as one block."""
    try:
        return pa_json.read_json(path, parse_options=options)
    except pa.ArrowInvalid as exc:
        if "straddling" not in str(exc):
            raise
    whole = pa_json.ReadOptions(block_size=max(path.stat().st_size + 1, 1 << 20))
    return pa_json.read_json(path, read_options=whole, parse_options=options)


def first_offset(segment: Segment) -> int:
    return segment.first


def widest_first(segment: Segment) -> tuple[int, int]:
    return segment.first, -segment.count


def uncovered(ordered: list[Segment]) -> list[Segment]:
    """``ordered`` (by first offset, the widest first) without the segments whose offsets
    an earlier one already holds: a part beside the segment it was merged into, or one
    segment listed in both folders."""
    kept: list[Segment] = []
    for segment in ordered:
        if not kept or segment.end > kept[-1].end:
            kept.append(segment)
    return kept


def merge_groups(segments: Sequence[Segment], limit: int) -> Iterator[list[Segment]]:
    """Consecutive runs of small segments, each of at most ``limit`` bytes and of parts
    whose log watermark is at least the run's first's; a large segment stands alone."""
    group: list[Segment] = []
    size = 0
    for segment in segments:
        try:
            length = segment.path.stat().st_size
        except FileNotFoundError:
            length = limit  # moved meanwhile: left to archive() to report
        small = length < limit // 4
        joins = (
            small
            and group
            and size + length <= limit
            and segment.watermark_ms >= group[0].watermark_ms
        )
        if not joins and group:
            yield group
            group, size = [], 0
        group.append(segment)
        size += length
        if not small:
            yield group
            group, size = [], 0
    if group:
        yield group


def merged_payload(parts: Sequence[Segment]) -> bytes:
    """Consecutive segments' lines as one segment's, each record keeping its log watermark:
    a later part's ``prior_ms`` below its own part's watermark is raised to it."""
    later = (raised_priors(part.path.read_bytes(), part.watermark_ms) for part in parts[1:])
    return parts[0].path.read_bytes() + b"".join(later)


def raised_priors(payload: bytes, floor_ms: int) -> bytes:
    """A segment's lines with every ``prior_ms`` below ``floor_ms`` raised to it."""
    if floor_ms <= 0:
        return payload
    floor = str(floor_ms).encode()
    lines = payload.split(b"\n")
    for number, line in enumerate(lines):
        if not line:
            continue
        match = _PRIOR.match(line)
        if match is not None:
            if int(match[1]) < floor_ms:
                lines[number] = line[: match.start(1)] + floor + line[match.end(1) :]
            continue
        record = orjson.loads(line)
        if (record.get("prior_ms") or 0) < floor_ms:
            record["prior_ms"] = floor_ms
            lines[number] = orjson.dumps(record)
    return b"\n".join(lines)


def concat_sidecars(parts: Sequence[Segment]) -> pa.Table | None:
    """The parts' Arrow copies as one table; None when any part lacks a sound one (the
    copy is a cache: the merged segment's JSON is then read instead)."""
    tables = []
    for part in parts:
        try:
            with pa.memory_map(str(part.sidecar)) as source:
                table = pa.ipc.open_file(source).read_all()
        except (pa.ArrowInvalid, OSError):
            return None
        if table.num_rows != part.count:
            return None
        tables.append(table)
    try:
        return pa.concat_tables(tables)
    except pa.ArrowInvalid:  # copies of different schemas
        return None


def arrow_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    payload: bytes = sink.getvalue().to_pybytes()
    return payload
