"""The event log: saiki's embedded stand-in for a Kafka topic.

A topic is a folder of immutable segment files. Each append writes one segment named
by its first offset, its length and the log watermark at its start
(``seg-0000000000001000-00000500-1795176000000.jsonl`` holds offsets 1000..1499, line n
being offset 1000 + n), one canonical JSON object per line, and makes
it visible atomically: it is *staged* in the topic's ``_staging/`` subfolder and fsync'd
(by any process, in parallel), then *published* by a rename into the topic's folder under
the writer lock, and the folder fsync'd. Readers therefore never see a partial segment,
and Flink's filesystem source (which skips names starting with ``.`` or ``_``) picks each
segment up exactly once.

**Names leave the topic's folder rarely and in bursts.** Flink's source lists the folder
by reading its names, then stat'ing each; a name that vanished in between fails the whole
listing, and the source retries only at its next monitor interval. Files staged in the
folder itself made that race likelier the longer the folder grew, until the speed layer
saw no new segment for seconds at a time (docs/speed.md). Staged files therefore live in
``_staging/``, whose renames only ever *add* a name to the folder. Old segments leave it
for ``_archive/`` only through :meth:`Topic.archive`, always a prefix of the log and never
the newest segment: before a job starts, and while it runs, every few seconds, the
segments it has read whole and checkpointed (``speed/archive.py``), so the folder it
re-lists stays small and a listing that races a burst costs one interval. Before a job
starts, :meth:`Topic.unarchive` brings back the segments it may need to read. A reader
asking for offsets before the first segment in the folder gets the archived ones too, so
every offset stays readable and the head never moves back. The archive merges runs of
small segments into one (``core/segments.py`` says how, and why).

The events topic also keeps an Arrow IPC copy of each segment (``_arrow/seg-….arrow``):
the same rows, columnar, so that the master loader does not parse JSON again. It is a
cache: when it is missing the JSON segment is read instead. The copies live in a
subfolder that Flink's source skips whole (its name starts with ``_``), so the folder it
re-lists several times a second holds the segments alone.

Appends are serialised across processes by an ``flock`` on ``<log>/.lock`` (the gRPC
server and ``saiki ingest`` may run at once).

**The log watermark** of a record is the newest event time (capped at its ingest time,
so a clock running ahead cannot drag it forward) among all records *before* it in the
log. It is a property of the log, not of who reads it or in what order, which is what
makes the speed layer's lateness decisions replayable. It is stored in two parts: the
segment's name holds the value at the segment's start, and each record's ``prior_ms``
the newest capped time among earlier records of its own segment.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Final

import pyarrow as pa
import pyarrow.json as pa_json

from saiki.core.errors import ComponentError, StorageError
from saiki.core.files import file_lock, fsync_path, write_synced
from saiki.core.segments import (
    MERGE_BYTES,
    SEGMENT_NAME,
    SIDECAR_DIR,
    Segment,
    StagedSegment,
    arrow_bytes,
    concat_sidecars,
    first_offset,
    merge_groups,
    merged_payload,
    read_json,
    uncovered,
    widest_first,
)

_STAGE_COUNTER = itertools.count()

EVENTS_TOPIC: Final = "events"
QUARANTINE_TOPIC: Final = "quarantine"

STAGING_DIR = "_staging"  # where segments are written before they are published
ARCHIVE_DIR = "_archive"  # old segments, out of the folder Flink's source lists
_STAGED_MAX_AGE_S: Final = 3600
_LISTING_TRIES: Final = 5

OFFSET_FIELD: Final = pa.field("offset", pa.int64(), nullable=False)
INGEST_FIELD: Final = pa.field("ingest_ms", pa.int64(), nullable=False)


class Topic:
    """An append-only sequence of segments in one folder.

    A Topic remembers the segment names it has parsed (names are never reused), so a
    caller that lists the folder often, like the speed layer's driver twice a second,
    keeps one Topic: listing 20,000 segments then costs a directory scan, not 20,000
    parses (250 → 20 ms).
    """

    def __init__(self, directory: Path, merge_bytes: int = MERGE_BYTES) -> None:
        self.directory = directory
        self.merge_bytes = merge_bytes  # 0: archive every segment as it is
        self._parsed: dict[str, Segment] = {}
        self._archived: tuple[int, list[Segment]] = (-1, [])  # (folder mtime, segments)
        self._parsed_archived: dict[str, Segment] = {}

    def segments(self, from_offset: int = 0) -> list[Segment]:
        """The committed segments holding any offset at or after ``from_offset``, in order
        (archived ones included when ``from_offset`` lies before the folder's first)."""
        if not self.directory.exists():
            return []
        for _ in range(_LISTING_TRIES):
            found = self._scan(self.directory, from_offset, self._parsed)
            if not found or found[0].first > from_offset:
                # Listed after the folder: a segment archived meanwhile is in one or both
                # (the same, or merged into one that covers it).
                older = [s for s in self.archived() if s.end > from_offset]
                found = sorted(older + found, key=widest_first)
            found = uncovered(found)
            # A segment brought back from the archive between the two listings is in
            # neither: the offsets then have a gap (a topic starts at offset 0 and keeps
            # every segment), and the folders are listed again.
            starts = not found or found[0].first <= from_offset or found[0].first == 0
            if starts and all(a.end == b.first for a, b in itertools.pairwise(found)):
                return found
        raise ComponentError(f"{self.directory}: segments moved during {_LISTING_TRIES} listings")

    def live_segments(self) -> list[Segment]:
        """The segments in the folder Flink's source lists (not archived)."""
        return self._scan(self.directory, 0, self._parsed) if self.directory.exists() else []

    def archived(self) -> list[Segment]:
        """The archived segments, in order (re-listed only when the archive changed)."""
        folder = self.directory / ARCHIVE_DIR
        try:
            stamp = folder.stat().st_mtime_ns
        except FileNotFoundError:
            return []
        if stamp != self._archived[0]:
            self._archived = (stamp, self._scan(folder, 0, self._parsed_archived))
        return self._archived[1]

    @staticmethod
    def _scan(folder: Path, from_offset: int, parsed: dict[str, Segment]) -> list[Segment]:
        found = []
        for entry in os.scandir(folder):
            segment = parsed.get(entry.name)
            if segment is None:
                match = SEGMENT_NAME.match(entry.name)
                if not match:
                    continue
                segment = Segment(int(match[1]), int(match[2]), Path(entry.path), int(match[3]))
                parsed[entry.name] = segment
            if segment.end > from_offset:
                found.append(segment)
        found.sort(key=first_offset)
        return found

    def archive(self, segments: Sequence[Segment]) -> int:
        """Move a prefix of the folder's segments (and their Arrow copies) to ``_archive/``:
        those of ``segments`` from the folder's first on, each run of small ones merged
        into one (see the module doc). The newest segment always stays, so the head is
        found in the folder. Returns how many left the folder."""
        self.drop_covered()
        live = self.live_segments()
        wanted = {s.first for s in segments}
        prefix = list(itertools.takewhile(lambda s: s.first in wanted, live[:-1]))
        if not prefix:
            return 0
        folder = self.directory / ARCHIVE_DIR
        (folder / SIDECAR_DIR).mkdir(parents=True, exist_ok=True)
        for group in merge_groups(prefix, self.merge_bytes):
            if len(group) > 1:
                self._merge(group, folder)
                continue
            segment = group[0]
            if segment.sidecar.exists():
                os.rename(segment.sidecar, folder / SIDECAR_DIR / segment.sidecar.name)
            os.rename(segment.path, folder / segment.path.name)
            self._parsed.pop(segment.path.name, None)
        self._sync_folders()
        return len(prefix)

    def _merge(self, parts: Sequence[Segment], folder: Path) -> Segment:
        """Write consecutive segments as one in ``folder`` (durably), then remove them.

        Every record keeps its log watermark: the merged segment's name holds the first
        part's, and a record of a later part whose ``prior_ms`` is below its own part's
        watermark gets that instead (``merge_groups`` only groups parts whose watermark
        is at least the first's, so the maximum of the two is unchanged)."""
        columns = concat_sidecars(parts)
        staged = self.stage_payload(merged_payload(parts), sum(p.count for p in parts), columns)
        first, watermark = parts[0].first, parts[0].watermark_ms
        name = self.next_segment(first, staged.count, watermark).path.name
        merged = Segment(first, staged.count, folder / name, watermark)
        if staged.sidecar is not None:
            os.rename(staged.sidecar, merged.sidecar)
            fsync_path(merged.sidecar.parent)
        os.rename(staged.path, merged.path)
        fsync_path(folder)
        for part in parts:  # the merged segment is durable: its parts can go
            part.path.unlink(missing_ok=True)
            part.sidecar.unlink(missing_ok=True)
            self._parsed.pop(part.path.name, None)
        return merged

    def drop_covered(self) -> int:
        """Remove segments whose offsets a merged segment holds (parts a crash left behind
        after their merged segment was written), in the folder or the archive; every
        listing already ignores them. Returns how many went."""
        everything = sorted(self.live_segments() + self.archived(), key=widest_first)
        kept = uncovered(everything)
        if len(kept) == len(everything):
            return 0
        keep = {s.path for s in kept}
        gone = [s for s in everything if s.path not in keep]
        for segment in gone:
            segment.path.unlink(missing_ok=True)
            segment.sidecar.unlink(missing_ok=True)
            self._parsed.pop(segment.path.name, None)
            self._parsed_archived.pop(segment.path.name, None)
        self._sync_folders()
        return len(gone)

    def unarchive(self, from_offset: int) -> int:
        """Bring back to the folder every archived segment holding an offset at or after
        ``from_offset`` (the archive's newest ones: a suffix of it, followed by the
        folder's first), with their Arrow copies; before a job that may read them starts.
        Returns how many moved."""
        back = [s for s in self.archived() if s.end > from_offset]
        if back:
            (self.directory / SIDECAR_DIR).mkdir(exist_ok=True)
        for segment in reversed(back):  # newest first: the folder's segments stay contiguous
            if segment.sidecar.exists():
                os.rename(segment.sidecar, self.directory / SIDECAR_DIR / segment.sidecar.name)
            os.rename(segment.path, self.directory / segment.path.name)
            self._parsed_archived.pop(segment.path.name, None)
        if back:
            self._sync_folders()
        return len(back)

    def _sync_folders(self) -> None:
        """Make renames between the folder and the archive durable (both, with copies)."""
        folder = self.directory / ARCHIVE_DIR
        for path in (folder / SIDECAR_DIR, folder, self.directory / SIDECAR_DIR, self.directory):
            if path.exists():  # a topic without Arrow copies has no copies' folders
                fsync_path(path)

    def head(self) -> int:
        """The next offset to be written (the number of records ever appended)."""
        # The newest segment never leaves the folder (see archive()).
        segments = self.live_segments() or self.archived()
        return segments[-1].end if segments else 0

    def stage(self, lines: Sequence[bytes], columns: pa.Table | None = None) -> StagedSegment:
        """Write a segment under hidden names and fsync it; safe from any process, no lock.

        ``lines`` are complete JSON objects without newlines; ``columns`` is the optional
        Arrow copy of the same rows (without the offset column: offsets come from the name).
        """
        if not lines:
            raise ValueError("an empty segment is never written")
        return self.stage_payload(b"\n".join(lines) + b"\n", len(lines), columns)

    def stage_payload(
        self, payload: bytes, count: int, columns: pa.Table | None = None
    ) -> StagedSegment:
        """:meth:`stage` for lines already joined: ``count`` lines, each ending in a newline."""
        if count <= 0:
            raise ValueError("an empty segment is never written")
        staging = self.directory / STAGING_DIR
        staging.mkdir(parents=True, exist_ok=True)
        token = f".staged-{os.getpid()}-{next(_STAGE_COUNTER)}-{time.time_ns()}"
        path = staging / f"{token}.jsonl"
        write_synced(path, payload)
        sidecar = None
        if columns is not None:
            sidecar = staging / f"{token}.arrow"
            try:
                write_synced(sidecar, arrow_bytes(columns))
            except StorageError:
                path.unlink(missing_ok=True)
                raise
        return StagedSegment(count, path, sidecar)

    def next_segment(self, first: int, count: int, watermark_ms: int = 0) -> Segment:
        """The segment a publish at offset ``first`` would make (nothing is written)."""
        name = f"seg-{first:016d}-{count:08d}-{watermark_ms:013d}.jsonl"
        return Segment(first, count, self.directory / name, watermark_ms)

    def find(self, name: str) -> Segment | None:
        """The committed segment of that file name, in the folder or archived; else None."""
        match = SEGMENT_NAME.match(name)
        if not match:
            return None
        for folder in (self.directory, self.directory / ARCHIVE_DIR):
            if (folder / name).exists():
                return Segment(int(match[1]), int(match[2]), folder / name, int(match[3]))
        return None

    def publish(
        self, staged: StagedSegment, watermark_ms: int = 0, first: int | None = None
    ) -> Segment:
        """Make a staged segment the next one of the topic; the caller holds the writer lock.

        ``watermark_ms`` is the log watermark at the segment's start (see the module doc).
        ``first`` is the head when the caller knows it (the ingest path keeps it in its id
        index); otherwise the folder is listed to find it.
        """
        first = self.head() if first is None else first
        segment = self.next_segment(first, staged.count, watermark_ms)
        if staged.sidecar is not None:
            segment.sidecar.parent.mkdir(exist_ok=True)
            os.rename(staged.sidecar, segment.sidecar)
            fsync_path(segment.sidecar.parent)
        os.rename(staged.path, segment.path)
        fsync_path(self.directory)
        return segment

    def append(self, lines: Sequence[bytes], columns: pa.Table | None = None) -> Segment:
        """Stage and publish in one go (no log watermark); the caller holds the lock."""
        return self.publish(self.stage(lines, columns))

    def sweep_staged(self, max_age_s: float = _STAGED_MAX_AGE_S) -> int:
        """Remove staged files a crashed writer left behind (older than max_age_s)."""
        removed = 0
        cutoff = time.time() - max_age_s
        folder = self.directory / STAGING_DIR
        if not folder.exists():
            return 0
        for entry in os.scandir(folder):
            if entry.name.startswith(".staged-") and entry.stat().st_mtime < cutoff:
                os.unlink(entry.path)
                removed += 1
        return removed

    def read(self, segment: Segment, schema: pa.Schema) -> pa.Table:
        """One segment's rows as Arrow, with their ``offset``: from the sidecar, else the JSON.

        ``schema`` names the record fields wanted (without ``offset``).
        """
        if not segment.path.exists():  # archived, or brought back, since it was listed
            moved = self.find(segment.path.name)
            if moved is not None:
                segment = moved
            else:  # merged into an archived segment that holds its offsets
                merged = next(
                    (s for s in self.archived() if s.first <= segment.first < s.end), None
                )
                if merged is not None and merged.end >= segment.end:
                    whole = self.read(merged, schema)
                    return whole.slice(segment.first - merged.first, segment.count)
        table = None
        sidecar = segment.sidecar if segment.sidecar.exists() else None
        if sidecar is not None:
            try:
                with pa.memory_map(str(sidecar)) as source:
                    cached = pa.ipc.open_file(source).read_all()
                if cached.num_rows == segment.count:
                    table = cached.select(schema.names)
            except (pa.ArrowInvalid, OSError, KeyError):
                table = None  # a damaged cache: fall back to the JSON source of truth
        if table is None:
            options = pa_json.ParseOptions(
                explicit_schema=schema, unexpected_field_behavior="ignore"
            )
            try:
                table = read_json(segment.path, options)
            except pa.ArrowInvalid as exc:
                raise ComponentError(
                    f"event log segment {segment.path} is unreadable: {exc}"
                ) from exc
            table = table.select(schema.names)
        offsets = pa.array(range(segment.first, segment.end), pa.int64())
        return table.add_column(0, OFFSET_FIELD, offsets)

    def read_range(self, from_offset: int, schema: pa.Schema) -> Iterator[tuple[Segment, pa.Table]]:
        """Every record at or after ``from_offset``, segment by segment."""
        for segment in self.segments(from_offset):
            table = self.read(segment, schema)
            if segment.first < from_offset:
                table = table.slice(from_offset - segment.first)
            yield segment, table


class EventLog:
    """The log's two topics: accepted ``events`` and ``quarantine``d records."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.events = Topic(root / EVENTS_TOPIC)
        self.quarantine = Topic(root / QUARANTINE_TOPIC)

    @contextmanager
    def writer_lock(self) -> Iterator[None]:
        """Hold the single-writer lock of the whole log (both topics)."""
        with file_lock(self.root / ".lock"):
            yield
