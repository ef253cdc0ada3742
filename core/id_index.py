"""The event ids the log holds, on disk: exact duplicate detection in bounded memory.

Every appender must know whether an ``event_id`` is already in the log, whenever it was
first sent. Holding every id in memory made each server grow with uptime (about 100
bytes an id: 360 MB an hour at 1,000 events/s) and made every process that appends
re-read the whole log's ids at start. The ids live instead in one SQLite table beside
the log (``<log>/ids.sqlite``, keyed by ``event_id``), with the log's head and
watermark: memory is SQLite's page cache (``CACHE_KIB``), a start reads a few rows, and
the check stays exact for any resend, even one that changed its ``event_time``.

**The index follows the log; the log stays the truth.** Under the log's writer lock an
appender (``core/ingest.py``) commits, in one fsync'd transaction (WAL,
``synchronous=FULL``), the new ids, the new heads and watermark, and the *entry*: the
names of the segments it is about to publish, the previous heads and its ids; then it
renames the segments in. An id already indexed fails the insert, and only then are the
batch's ids looked up one by one (a resend). The next appender finds the entry's segments
in the topic; if a writer died before its renames, they are missing and the entry is
undone (its ids deleted, the heads put back). Each process also compares the index with
a listing of the topic once, at its first append, and takes in whatever the index lacks
(a log written before the index existed, a lost index file); an index ahead of the log
(a log replaced under it) is rebuilt from the log.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import orjson

from saiki.core.errors import StorageError

INDEX_FILE: Final = "ids.sqlite"
CACHE_KIB: Final = 16 * 1024  # SQLite's page cache per connection: the memory bound

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS ids (event_id TEXT PRIMARY KEY) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID",
)


@dataclass(frozen=True)
class IndexState:
    """What the index says of the log: the next offset of each topic, the events topic's
    watermark, and the segment names of the last entry ("" when none or settled)."""

    events_head: int = 0
    quarantine_head: int = 0
    watermark_ms: int = 0
    last_events: str = ""
    last_quarantine: str = ""


class IdIndex:
    """The log's event ids and heads in a SQLite file; one connection per process."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        # Used under the log's writer lock only, by whichever thread holds it.
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=60)
        for attempt in range(50):
            try:
                # Large pages (set before the file's first table): a commit of sorted ids
                # rewrites fewer of them; 30% less time per id than 4 KiB pages.
                self._db.execute("PRAGMA page_size=65536")
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=FULL")
                self._db.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
                for statement in _SCHEMA:
                    self._db.execute(statement)
                break
            except sqlite3.OperationalError as exc:
                # Switching a new file to WAL while another connection opens it answers
                # "locked" at once, without waiting: try again shortly.
                if "locked" not in str(exc) or attempt == 49:
                    raise StorageError(f"cannot open the event id index {path}: {exc}") from exc
                time.sleep(0.1)
            except sqlite3.Error as exc:
                raise StorageError(f"cannot open the event id index {path}: {exc}") from exc

    def close(self) -> None:
        """Close the connection."""
        self._db.close()

    def state(self) -> IndexState:
        """The heads, watermark and last entry as last committed (by any process)."""
        rows = self._meta(*_STATE_KEYS)
        return IndexState(
            events_head=int(rows.get("events_head", 0)),
            quarantine_head=int(rows.get("quarantine_head", 0)),
            watermark_ms=int(rows.get("watermark_ms", 0)),
            last_events=str(rows.get("last_events", "")),
            last_quarantine=str(rows.get("last_quarantine", "")),
        )

    def known(self, event_ids: Sequence[str]) -> set[str]:
        """Which of these ids the index holds."""
        if not event_ids:
            return set()
        # One statement over a JSON array, in key order: each B-tree page is visited once,
        # and no Python call per id (a third of the time of chunked IN lists).
        rows = self._query(
            "SELECT j.value FROM json_each(?) AS j JOIN ids ON ids.event_id = j.value",
            (orjson.dumps(sorted(event_ids)),),
        )
        return {str(row[0]) for row in rows}

    def append(
        self,
        event_ids: Sequence[str],
        state: IndexState,
        events: tuple[str, int] | None,
        quarantine: tuple[str, int] | None,
        watermark_ms: int,
    ) -> bool:
        """Commit an entry before its segments are renamed in: ``events`` and ``quarantine``
        are (segment file name, head after it). False, with nothing written, when one of
        the ids is already indexed (the caller drops the known ones and tries again)."""
        ids = orjson.dumps(sorted(event_ids))
        values: dict[str, int | str | bytes] = {
            "prev_events_head": state.events_head,
            "prev_quarantine_head": state.quarantine_head,
            "prev_watermark_ms": state.watermark_ms,
            "last_events": events[0] if events else "",
            "last_quarantine": quarantine[0] if quarantine else "",
            "last_ids": ids,
            "events_head": events[1] if events else state.events_head,
            "quarantine_head": quarantine[1] if quarantine else state.quarantine_head,
            "watermark_ms": watermark_ms,
        }
        try:
            self._db.execute("BEGIN IMMEDIATE")
            if event_ids:
                self._db.execute("INSERT INTO ids SELECT value FROM json_each(?)", (ids,))
            self._set(values)
            self._db.execute("COMMIT")
        except sqlite3.IntegrityError:
            self._rollback()
            return False
        except sqlite3.Error as exc:
            self._rollback()
            raise StorageError(f"cannot write the event id index {self.path}: {exc}") from exc
        return True

    def settle(self, events_published: bool, quarantine_published: bool) -> None:
        """Close the last entry as its renames went: undo what was not published (an
        entry whose renames all happened needs no call: the next appender finds them)."""
        undo_events = not events_published and bool(self.state().last_events)
        self._write(
            lambda: self._settle(undo_events, quarantine_published),
            "settle the last entry of",
        )

    def _settle(self, undo_events: bool, quarantine_published: bool) -> None:
        rows = self._meta("prev_events_head", "prev_quarantine_head", "prev_watermark_ms")
        values: dict[str, int | str | bytes] = {
            "last_events": "",
            "last_quarantine": "",
            "last_ids": b"[]",
        }
        if undo_events:
            self._db.execute(
                "DELETE FROM ids WHERE event_id IN (SELECT j.value FROM json_each("
                "(SELECT value FROM meta WHERE key = 'last_ids')) AS j)"
            )
            values["events_head"] = int(rows.get("prev_events_head", 0))
            values["watermark_ms"] = int(rows.get("prev_watermark_ms", 0))
        if not quarantine_published:
            values["quarantine_head"] = int(rows.get("prev_quarantine_head", 0))
        self._set(values)

    def catch_up(
        self,
        event_ids: Iterable[str],
        events_head: int | None = None,
        quarantine_head: int | None = None,
        watermark_ms: int | None = None,
    ) -> None:
        """Take in ids and heads read from the log (ids already held are skipped)."""
        values: dict[str, int | str | bytes] = {}
        for key, value in (
            ("events_head", events_head),
            ("quarantine_head", quarantine_head),
            ("watermark_ms", watermark_ms),
        ):
            if value is not None:
                values[key] = value
        ids = orjson.dumps(sorted(event_ids))

        def write() -> None:
            self._db.execute("INSERT OR IGNORE INTO ids SELECT value FROM json_each(?)", (ids,))
            self._set(values)

        self._write(write, "catch up")

    def reset(self) -> None:
        """Forget everything (the index is rebuilt from the log)."""

        def write() -> None:
            self._db.execute("DELETE FROM ids")
            self._db.execute("DELETE FROM meta")

        self._write(write, "reset")

    def count(self) -> int:
        """How many ids the index holds."""
        value: Any = self._query("SELECT count(*) FROM ids", ())[0][0]
        return int(value)

    def _write(self, work: Callable[[], None], what: str) -> None:
        try:
            self._db.execute("BEGIN IMMEDIATE")
            work()
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            raise StorageError(f"cannot {what} the event id index {self.path}: {exc}") from exc

    def _set(self, values: dict[str, int | str | bytes]) -> None:
        self._db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", sorted(values.items()))

    def _meta(self, *keys: str) -> dict[str, Any]:
        marks = ",".join("?" * len(keys))
        rows = self._query(f"SELECT key, value FROM meta WHERE key IN ({marks})", keys)
        return {str(k): v for k, v in rows}

    def _query(self, sql: str, args: Sequence[object]) -> list[tuple[object, ...]]:
        try:
            return self._db.execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise StorageError(f"cannot read the event id index {self.path}: {exc}") from exc

    def _rollback(self) -> None:
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")


_STATE_KEYS: Final = (
    "events_head",
    "quarantine_head",
    "watermark_ms",
    "last_events",
    "last_quarantine",
)
