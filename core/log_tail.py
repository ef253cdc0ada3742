"""What an appender must know of the whole log, kept in step under the writer lock.

:class:`LogTail` wraps the id index (``core/id_index.py``) for ``core/ingest.py``: it
settles a dead writer's last entry, compares the index with the log once per process,
and reads a segment's ids when it must take one in.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from saiki.core.eventlog import EventLog
from saiki.core.id_index import INDEX_FILE, IdIndex, IndexState
from saiki.core.segments import Segment


class LogTail:
    """What an appender must know of the whole log: which event_ids it holds, the next
    offset of each topic and the watermark.

    Kept on disk in the id index (``core/id_index.py``), exact (not a sketch: a duplicate
    must never be confused with a new event) in the bounded memory of SQLite's page cache,
    and caught up under the writer lock. No listing of the topic's folder on the way: the
    heads are the index's. A process compares the index with the log once, at its first
    append.
    """

    def __init__(self, log: EventLog) -> None:
        self._log = log
        self._index: IdIndex | None = None
        self._reconciled = False
        self.state = IndexState()
        self.confirmed = ("", "")  # the last entry's segment names, known to be published

    def close(self) -> None:
        """Close the index."""
        if self._index is not None:
            self._index.close()

    @property
    def index(self) -> IdIndex:
        """The id index, opened at first use: under the writer lock, so two processes
        starting at once never create its file together."""
        if self._index is None:
            self._index = IdIndex(self._log.root / INDEX_FILE)
        return self._index

    def catch_up(self) -> IndexState:
        """The index's state with whatever other processes appended (call under the lock)."""
        state = self.index.state()
        last = (state.last_events, state.last_quarantine)
        if any(last) and last != self.confirmed:
            # Another process's entry: did it live to rename its segments in?
            events = not last[0] or self._log.events.find(last[0]) is not None
            quarantine = not last[1] or self._log.quarantine.find(last[1]) is not None
            if events and quarantine:
                self.confirmed = last
            else:
                self.index.settle(events, quarantine)
                state = self.index.state()
        if not self._reconciled:
            state = self._reconcile(state)
            self._reconciled = True
        self.state = state
        return state

    def _reconcile(self, state: IndexState) -> IndexState:
        """Take in the segments the index lacks (a log older than the index, a lost index
        file); rebuild it if it is ahead of the log (a log replaced under it)."""
        events = self._log.events
        segments = events.segments(state.events_head)
        if events.head() < state.events_head or (
            segments and segments[0].first != state.events_head
        ):
            self.index.reset()
            state = IndexState()
            segments = events.segments(0)
        watermark = state.watermark_ms
        pending: list[str] = []
        for number, segment in enumerate(segments, start=1):
            ids, watermark = self._read(segment, watermark)
            pending.extend(ids)
            if len(pending) >= 200_000 or number == len(segments):
                self.index.catch_up(pending, events_head=segment.end, watermark_ms=watermark)
                pending = []
        quarantine_head = self._log.quarantine.head()
        if quarantine_head != state.quarantine_head:
            self.index.catch_up((), quarantine_head=quarantine_head)
        return self.index.state()

    def _read(self, segment: Segment, watermark_ms: int) -> tuple[list[str], int]:
        """A segment's event ids, and the watermark once it is taken in."""
        table = self._log.events.read(segment, _ID_SCHEMA)
        capped = pc.min_element_wise(table.column("event_time"), table.column("ingest_ms"))
        newest = int(pc.max(capped).as_py() or 0)
        ids: list[str] = table.column("event_id").to_pylist()
        return ids, max(watermark_ms, newest)


# What catching up reads of a segment (types as in the log's Arrow copies).
_ID_SCHEMA = pa.schema(
    [
        pa.field("event_id", pa.string()),
        pa.field("event_time", pa.int64()),
        pa.field("ingest_ms", pa.int64()),
    ]
)
