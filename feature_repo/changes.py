"""The speed rows' change log, kept beside them in the SQLite online store.

After each write of speed rows the writer appends one record ``(seq, entity, ids)`` in
its own transaction, *after* the rows' transaction committed; a server asks for the
records after the position it holds *before* it reads rows. So a change is never missed:
at worst a server re-merges a row it had already read fresh. Positions are contiguous
(each record takes the next one inside the appending transaction), so a reader that
finds the first record after its position missing knows the log was trimmed past it and
drops everything it cached. Records older than ``RETENTION_MS`` are trimmed by the writer
(the newest is always kept, so the position never goes back).

Redis carries the same design over: an ``INCR``'d position and a capped stream or list.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import orjson

from saiki.core.timeutil import now_ms
from saiki.feature_repo.online import Changes

TABLE: Final = "saiki_speed_changes"
RETENTION_MS: Final = 120_000
_CREATE: Final = (
    f"CREATE TABLE IF NOT EXISTS {TABLE} (seq INTEGER PRIMARY KEY, entity TEXT NOT NULL, "
    "ids BLOB NOT NULL, written_ms INTEGER NOT NULL)"
)


class ChangeLogWriter:
    """Appends change records (one connection, used from the sink's writing thread)."""

    def __init__(self, path: Path) -> None:
        self._connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._connection.execute("PRAGMA journal_mode=WAL")
        self._connection.execute(_CREATE)

    def append(self, entity: str, ids: Sequence[str]) -> None:
        """Record that these ids' rows were just written (call after their commit)."""
        written = now_ms()
        with self._connection:  # one transaction: the position and the trim
            self._connection.execute("BEGIN IMMEDIATE")
            self._connection.execute(
                f"INSERT INTO {TABLE} (seq, entity, ids, written_ms) "
                f"VALUES ((SELECT COALESCE(MAX(seq), 0) + 1 FROM {TABLE}), ?, ?, ?)",
                (entity, orjson.dumps(list(ids)), written),
            )
            self._connection.execute(
                f"DELETE FROM {TABLE} WHERE written_ms < ? "
                f"AND seq < (SELECT MAX(seq) FROM {TABLE})",
                (written - RETENTION_MS,),
            )

    def close(self) -> None:
        """Close the connection."""
        self._connection.close()


def read_changes(connection: sqlite3.Connection, seq: int | None) -> Changes:
    """The changes after ``seq`` through a (read-only) connection to the online store."""
    try:
        if seq is None:
            newest = connection.execute(f"SELECT MAX(seq) FROM {TABLE}").fetchone()[0]
            return Changes(int(newest or 0), {})
        rows = connection.execute(
            f"SELECT seq, entity, ids FROM {TABLE} WHERE seq > ? ORDER BY seq", (seq,)
        ).fetchall()
    except sqlite3.OperationalError as exc:
        if "no such table" not in str(exc):
            raise
        return Changes(0, {} if not seq else None)  # no speed rows written yet
    if not rows:
        return Changes(seq, {})
    if rows[0][0] != seq + 1:  # trimmed past us
        return Changes(int(rows[-1][0]), None)
    entities: dict[str, set[str]] = {}
    for _, entity, ids in rows:
        entities.setdefault(entity, set()).update(orjson.loads(ids))
    return Changes(int(rows[-1][0]), {e: frozenset(i) for e, i in entities.items()})
