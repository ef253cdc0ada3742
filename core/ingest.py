"""Ingestion into the event log: validate, de-duplicate by event_id, append durably.

Used by ``saiki ingest`` (JSON-lines files) and by the ``Ingest`` RPC. Every input ends in
exactly one place: the events topic (accepted, once per event_id), the duplicate count,
or the quarantine topic with its raw payload and the reason.

The work is split so that files use every core: :func:`stage_batch` (validate, drop
repeats within the batch, render canonical JSON and Arrow, write hidden fsync'd files)
runs in worker processes on byte ranges of the input (``core/ingest_files.py``), while
:meth:`Ingestor.commit` (drop ids the log already holds, publish by rename) runs in order
in one process under the log's writer lock.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

import pyarrow as pa

from saiki.core.errors import ComponentError, StorageError
from saiki.core.eventlog import EventLog
from saiki.core.log_records import (  # the records' formats, importable from here too
    LOG_ARROW_SCHEMA,
    QUARANTINE_ARROW_SCHEMA,
    QUARANTINE_RECORD_SCHEMA,
    RAW_PREFIX_BYTES,
    RECORD_KEYS,
    SEGMENT_ARROW_SCHEMA,
    bounded_payload,
    encode_records,
    gc_paused,
    lines_and_columns,
    quarantine_records,
)
from saiki.core.log_tail import LogTail
from saiki.core.schema import FIELDS, Event, Rejection, check_json_lines, validate_event
from saiki.core.segments import Segment, StagedSegment
from saiki.core.timeutil import now_ms

__all__ = [
    "LOG_ARROW_SCHEMA",
    "QUARANTINE_ARROW_SCHEMA",
    "QUARANTINE_RECORD_SCHEMA",
    "RAW_PREFIX_BYTES",
    "RECORD_KEYS",
    "SEGMENT_ARROW_SCHEMA",
    "IngestResult",
    "Ingestor",
    "RawEvent",
    "StagedBatch",
    "bounded_payload",
    "check_inputs",
    "check_lines",
    "encode_records",
    "quarantine_records",
    "split_checked",
    "stage_batch",
]


@dataclass(frozen=True, slots=True)
class RawEvent:
    """One decoded input event with its raw payload (kept if it is quarantined).

    ``raw`` is the payload, or a call that renders it: rendering an RPC's event as JSON
    cost more than validating it, and only a rejected event's payload is ever read."""

    raw: str | Callable[[], str]
    decoded: Mapping[str, Any] | Rejection
    source: str

    @property
    def payload(self) -> str:
        """The raw payload (rendered now if it was given as a call)."""
        return self.raw if isinstance(self.raw, str) else self.raw()


@dataclass
class StagedBatch:
    """A validated batch, de-duplicated within itself and staged in the log, not published."""

    size: int
    event_ids: list[str]
    events: StagedSegment | None
    duplicates: int
    rejections: list[tuple[int, Rejection]]
    quarantine: StagedSegment | None
    newest_ms: int = 0  # the newest capped event time of the staged events

    def discard(self) -> None:
        """Remove the staged files."""
        for staged in (self.events, self.quarantine):
            if staged is not None:
                staged.discard()


@dataclass
class IngestResult:
    """What happened to a batch of inputs."""

    accepted: int = 0
    duplicates: int = 0
    quarantined: int = 0
    # (index in the batch, why), for quarantined inputs.
    rejections: list[tuple[int, Rejection]] = field(default_factory=list)
    segments: list[Segment] = field(default_factory=list)

    def add(self, other: IngestResult, index_base: int = 0) -> None:
        """Fold another batch's result into this one."""
        self.accepted += other.accepted
        self.duplicates += other.duplicates
        self.quarantined += other.quarantined
        self.rejections.extend((index_base + i, r) for i, r in other.rejections)
        self.segments.extend(other.segments)


def stage_batch(
    log: EventLog,
    checked: Sequence[Event | Rejection],
    ingest_ms: int,
    describe: Callable[[int], tuple[str, str]],
) -> StagedBatch:
    """Stage validation outcomes: unique events to one segment, rejections to another.

    ``describe(i)`` gives the raw payload and source of input i (for quarantine only).
    Pure CPU plus staged writes: it runs in worker processes for files.
    """
    events, ids, rejected, duplicates = split_checked(checked)
    staged_events = None
    newest = 0
    if events:
        payload, table, newest = lines_and_columns(events, ingest_ms)
        staged_events = log.events.stage_payload(payload, len(events), table)
    staged_quarantine = None
    if rejected:
        records = quarantine_records(rejected, ingest_ms, describe)
        try:
            staged_quarantine = log.quarantine.stage(records)
        except StorageError:
            if staged_events is not None:
                staged_events.discard()
            raise
    return StagedBatch(
        len(checked), ids, staged_events, duplicates, rejected, staged_quarantine, newest
    )


def split_checked(
    checked: Sequence[Event | Rejection],
) -> tuple[list[Event], list[str], list[tuple[int, Rejection]], int]:
    """Validation outcomes split: the events (first occurrence of each id), their ids,
    the rejections with their input index, and how many repeats were dropped."""
    # Two comprehensions: faster than one loop that appends to either list.
    events: list[Event] = [o for o in checked if type(o) is not Rejection]  # type: ignore[misc]
    rejected: list[tuple[int, Rejection]] = []
    if len(events) < len(checked):
        rejected = [(i, o) for i, o in enumerate(checked) if isinstance(o, Rejection)]
    ids = list(map(itemgetter(0), events))  # event_id
    # id -> index of its first occurrence, built in C (later keys overwrite earlier ones).
    first = dict(zip(reversed(ids), range(len(ids) - 1, -1, -1), strict=True))
    duplicates = len(ids) - len(first)
    if duplicates:
        keep = sorted(first.values())
        events = [events[i] for i in keep]
        ids = [ids[i] for i in keep]
    return events, ids, rejected, duplicates


def check_lines(lines: Sequence[bytes], ingest_ms: int) -> list[Event | Rejection]:
    """Decode and validate raw JSON lines; a broken line is a Rejection, never an error."""
    with gc_paused():
        return check_json_lines(lines, ingest_ms)


def check_inputs(inputs: Sequence[RawEvent], ingest_ms: int) -> list[Event | Rejection]:
    """Validate decoded inputs; one that did not decode is already a Rejection."""
    return [
        item.decoded
        if isinstance(item.decoded, Rejection)
        else validate_event(item.decoded, ingest_ms)
        for item in inputs
    ]


class Ingestor:
    """Publishes staged batches in order, de-duplicated against the whole log."""

    def __init__(self, log: EventLog, clock: Callable[[], int] = now_ms) -> None:
        self.log = log
        self.clock = clock
        for topic in (log.events, log.quarantine):
            topic.sweep_staged()  # what a writer that crashed over an hour ago left staged
        self._tail = LogTail(log)

    def close(self) -> None:
        """Release the id index."""
        self._tail.close()

    def ingest(self, inputs: Sequence[RawEvent]) -> IngestResult:
        """Validate and append a batch of decoded inputs (the RPC path)."""
        ingest_ms = self.clock()
        checked = check_inputs(inputs, ingest_ms)
        return self.commit(
            stage_batch(
                self.log, checked, ingest_ms, lambda i: (inputs[i].payload, inputs[i].source)
            )
        )

    def ingest_lines(
        self, lines: Sequence[bytes], source: str, first_line: int = 1
    ) -> IngestResult:
        """Validate and append raw JSON lines in this process."""
        ingest_ms = self.clock()
        staged = stage_batch(
            self.log,
            check_lines(lines, ingest_ms),
            ingest_ms,
            lambda i: (lines[i].decode("utf-8", "replace"), f"{source}:{first_line + i}"),
        )
        return self.commit(staged)

    def commit(self, batch: StagedBatch) -> IngestResult:
        """Publish a staged batch: its events not yet in the log, and its quarantine.

        Under the writer lock: commit the entry to the id index (its ids, the new heads;
        an id already there sends the batch through :meth:`_without` first), then rename
        the segments in (``core/id_index.py``).
        """
        result = IngestResult(duplicates=batch.duplicates, quarantined=len(batch.rejections))
        result.rejections = batch.rejections
        try:
            with self.log.writer_lock():
                self._publish(batch, result)
        finally:
            batch.discard()  # whatever was not published (no-op for published files)
        return result

    def _publish(self, batch: StagedBatch, result: IngestResult) -> None:
        tail = self._tail
        state = tail.catch_up()
        staged, newest = batch.events, batch.newest_ms
        quarantine = None
        if batch.quarantine is not None:
            quarantine = self.log.quarantine.next_segment(
                state.quarantine_head, batch.quarantine.count
            )
        for _ in range(2):
            events = None
            if staged is not None:
                events = self.log.events.next_segment(
                    state.events_head, staged.count, state.watermark_ms
                )
            if events is None and quarantine is None:
                return
            if tail.index.append(
                batch.event_ids if staged is not None else [],
                state,
                (events.path.name, events.end) if events is not None else None,
                (quarantine.path.name, quarantine.end) if quarantine is not None else None,
                max(state.watermark_ms, newest),
            ):
                break
            # A resend: some ids are in the log already.
            known = tail.index.known(batch.event_ids)
            assert staged is not None  # an entry without ids cannot collide
            staged, dropped, newest = self._without(staged, batch.event_ids, known)
            result.duplicates += dropped
            batch.events = staged
        else:
            raise StorageError(f"the event id index {tail.index.path} disagrees with the log")
        published = [False, False]
        try:
            if staged is not None and events is not None:
                segment = self.log.events.publish(staged, state.watermark_ms, events.first)
                result.segments.append(segment)
                result.accepted = staged.count
            published[0] = True
            if batch.quarantine is not None and quarantine is not None:
                self.log.quarantine.publish(batch.quarantine, first=quarantine.first)
            published[1] = True
        except BaseException:
            tail.index.settle(*published)  # a crash here is settled by the next appender
            raise
        tail.confirmed = (
            events.path.name if events is not None else "",
            quarantine.path.name if quarantine is not None else "",
        )

    def _without(
        self, staged: StagedSegment, event_ids: list[str], known: set[str]
    ) -> tuple[StagedSegment | None, int, int]:
        """Re-stage a segment without the events the log already holds (retries)."""
        keep = [i for i, event_id in enumerate(event_ids) if event_id not in known]
        dropped = len(event_ids) - len(keep)
        if not keep:
            staged.discard()
            return None, dropped, 0
        if staged.sidecar is None:  # events segments always carry their columns
            raise ComponentError(f"staged segment {staged.path} lost its Arrow copy")
        with pa.memory_map(str(staged.sidecar)) as source:
            rows = pa.ipc.open_file(source).read_all().take(keep)
        ingest_ms = int(rows.column("ingest_ms")[0].as_py())
        with gc_paused():  # column by column: a fifth of the time of to_pylist() rows
            columns = [rows.column(name).to_pylist() for name in FIELDS]
            events = list(map(Event._make, zip(*columns, strict=True)))
        # Re-rendered: each record's prior_ms must only count records that stay.
        payload, table, newest = lines_and_columns(events, ingest_ms)
        fresh = self.log.events.stage_payload(payload, len(events), table)
        staged.discard()
        event_ids[:] = [event_ids[i] for i in keep]
        return fresh, dropped, newest
