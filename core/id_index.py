"""The event ids the log holds, on disk: exact duplicate detection in bounded memory.

Every appender must know whether an ``event_id`` is already in the log, whenever it was
first sent. Holding every id in memory made each server grow with uptime (about 100
bytes an id: 360 MB an hour at 1,000 events/s) and made every process that appends
re-read the whole log's ids at start. The ids live instead in one SQLite table beside
the log (``<log>/ids.sqlite``, keyed by ``event_id``), with the log's head and
watermark: memory is SQLite's page cache (``CACHE_KIB``), a start reads a few rows, and
the check stays exact for any resend, even one that changed its ``event_time``.

**The index follows the log; the log stays the truth.** Under the log's writer lock an
appender (``core/ingest.py``) records its *intent* (the names of the segments it is
about to publish) and commits it, renames the segments in, then commits their ids with
the new heads, clearing the intent. Both commits are fsync'd (WAL, ``synchronous=FULL``).
A writer that died between the two leaves an intent: the next one finds each named
segment in the topic (index it) or not (forget it). Each process also compares the index
with a listing of the topic once, at its first append, and takes in whatever the index
lacks (a log written before the index existed, a lost index file); an index ahead of
the log (a log replaced under it) is rebuilt from the log.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from saiki.core.errors import StorageError

INDEX_FILE: Final = "ids.sqlite"
CACHE_KIB: Final = 16 * 1024  # SQLite's page cache per connection: the memory bound
_CHUNK: Final = 900  # ids per lookup statement (SQLite's default limit is 999 variables)

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS ids (event_id TEXT PRIMARY KEY) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID",
)


@dataclass(frozen=True)
class IndexState:
    """What the index says of the log: the next offset of each topic, the events topic's
    watermark, and the segment names a writer meant to publish (empty when none)."""

    events_head: int = 0
    quarantine_head: int = 0
    watermark_ms: int = 0
    events_intent: str = ""
    quarantine_intent: str = ""


class IdIndex:
    """The log's event ids and heads in a SQLite file; one connection per process."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # Used under the log's writer lock only, by whichever thread holds it.
            self._db = sqlite3.connect(
                path, isolation_level=None, check_same_thread=False, timeout=60
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
            for statement in _SCHEMA:
                self._db.execute(statement)
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open the event id index {path}: {exc}") from exc

    def close(self) -> None:
        """Close the connection."""
        self._db.close()

    def state(self) -> IndexState:
        """The heads, watermark and intents as last committed (by any process)."""
        rows: dict[str, Any] = {
            str(k): v for k, v in self._query("SELECT key, value FROM meta", ())
        }
        return IndexState(
            events_head=int(rows.get("events_head", 0)),
            quarantine_head=int(rows.get("quarantine_head", 0)),
            watermark_ms=int(rows.get("watermark_ms", 0)),
            events_intent=str(rows.get("events_intent", "")),
            quarantine_intent=str(rows.get("quarantine_intent", "")),
        )

    def known(self, event_ids: Sequence[str]) -> set[str]:
        """Which of these ids the index holds."""
        found: set[str] = set()
        for start in range(0, len(event_ids), _CHUNK):
            chunk = event_ids[start : start + _CHUNK]
            marks = ",".join("?" * len(chunk))
            rows = self._query(f"SELECT event_id FROM ids WHERE event_id IN ({marks})", chunk)
            found.update(str(row[0]) for row in rows)
        return found

    def intend(self, events: str, quarantine: str) -> None:
        """Record, durably, the segment names about to be published."""
        self._commit({"events_intent": events, "quarantine_intent": quarantine})

    def record(
        self,
        event_ids: Iterable[str],
        events_head: int | None = None,
        quarantine_head: int | None = None,
        watermark_ms: int | None = None,
        strict: bool = True,
    ) -> None:
        """Add published ids and the new heads in one durable commit; clears the intents.

        When ``strict``, raises :class:`StorageError` if an id is already indexed: the
        caller checked them under the writer lock, so that would mean the index and the
        log disagree. Catching up from the log (``strict=False``) skips such ids.
        """
        values: dict[str, int | str] = {"events_intent": "", "quarantine_intent": ""}
        for key, value in (
            ("events_head", events_head),
            ("quarantine_head", quarantine_head),
            ("watermark_ms", watermark_ms),
        ):
            if value is not None:
                values[key] = value
        self._commit(values, event_ids, strict)

    def reset(self) -> None:
        """Forget everything (the index is rebuilt from the log)."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("DELETE FROM ids")
            self._db.execute("DELETE FROM meta")
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            raise StorageError(f"cannot reset the event id index {self.path}: {exc}") from exc

    def count(self) -> int:
        """How many ids the index holds."""
        value: Any = self._query("SELECT count(*) FROM ids", ())[0][0]
        return int(value)

    def _commit(
        self, values: dict[str, int | str], event_ids: Iterable[str] = (), strict: bool = True
    ) -> None:
        insert = "INSERT INTO ids VALUES (?)" if strict else "INSERT OR IGNORE INTO ids VALUES (?)"
        try:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany(insert, ((i,) for i in event_ids))
            self._db.executemany(
                "INSERT OR REPLACE INTO meta VALUES (?, ?)", sorted(values.items())
            )
            self._db.execute("COMMIT")
        except sqlite3.IntegrityError as exc:
            self._rollback()
            raise StorageError(
                f"event id index {self.path} already holds an id being added: {exc}"
            ) from exc
        except sqlite3.Error as exc:
            self._rollback()
            raise StorageError(f"cannot write the event id index {self.path}: {exc}") from exc

    def _query(self, sql: str, args: Sequence[object]) -> list[tuple[object, ...]]:
        try:
            return self._db.execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise StorageError(f"cannot read the event id index {self.path}: {exc}") from exc

    def _rollback(self) -> None:
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")
