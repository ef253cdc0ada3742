"""One small JSON document that several processes change under a lock: a file under a
file lock (one machine, or a shared filesystem), or a row in a SQL database (e.g.
PostgreSQL) whose row lock serialises every change — what machines that share object
storage need, since it has neither rename nor lock. ``stamp`` changes with every write,
so readers poll it cheaply.

Used for the model registry's stages (``[models] metadata``) and the batch view catalog
(``[views] metadata``).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from saiki.core.errors import ComponentError
from saiki.core.files import atomic_write, file_lock


class Document(Protocol):
    """Reads and writes one JSON document; writes only inside :meth:`locked`."""

    def locked(self) -> Any: ...

    def read(self) -> dict[str, Any]: ...

    def write(self, doc: dict[str, Any]) -> None: ...

    def stamp(self) -> float: ...


class FileDocument:
    """The JSON file ``path``, changed atomically under ``lock`` (a file lock)."""

    def __init__(self, path: Path, lock: Path, empty: dict[str, Any]) -> None:
        self.path = path
        self._lock = lock
        self._empty = empty

    @contextmanager
    def locked(self) -> Iterator[None]:
        with file_lock(self._lock):
            yield

    def read(self) -> dict[str, Any]:
        try:
            doc: dict[str, Any] = json.loads(self.path.read_text())
        except FileNotFoundError:
            doc = json.loads(json.dumps(self._empty))
        return doc

    def write(self, doc: dict[str, Any]) -> None:
        atomic_write(self.path, json.dumps(doc, indent=2, sort_keys=True))

    def stamp(self) -> float:
        try:
            return os.stat(self.path).st_mtime
        except FileNotFoundError:
            return 0.0


class SqlDocument:
    """One row of ``table`` per document name, in a SQLAlchemy database.

    :meth:`locked` opens a transaction and takes the row's write lock first (an
    ``UPDATE`` of the row: a row lock on PostgreSQL, the database's write lock on
    SQLite), so a concurrent promote waits instead of overwriting.
    """

    def __init__(self, url: str, table: str, name: str, empty: dict[str, Any]) -> None:
        from sqlalchemy import create_engine, text

        self._text = text
        self._engine = create_engine(url, pool_pre_ping=True)
        self._table = table
        self._name = name
        self._empty = empty
        self._local = threading.local()
        try:
            with self._engine.begin() as conn:
                conn.execute(
                    text(
                        f"CREATE TABLE IF NOT EXISTS {self._table} (name VARCHAR(200) PRIMARY KEY, "
                        "doc TEXT NOT NULL, seq BIGINT NOT NULL)"
                    )
                )
        except Exception as exc:  # two processes creating it at once: one wins
            if not self._table_exists():
                raise ComponentError(f"{table} metadata at {url}: {exc}") from exc

    def _table_exists(self) -> bool:
        from sqlalchemy import inspect

        return bool(inspect(self._engine).has_table(self._table))

    @contextmanager
    def locked(self) -> Iterator[None]:
        text = self._text
        with self._engine.begin() as conn:
            conn.execute(
                text(
                    f"INSERT INTO {self._table} (name, doc, seq) VALUES (:n, :d, 0) "
                    "ON CONFLICT (name) DO NOTHING"
                ),
                {"n": self._name, "d": json.dumps(self._empty)},
            )
            conn.execute(
                text(f"UPDATE {self._table} SET seq = seq WHERE name = :n"), {"n": self._name}
            )
            self._local.conn = conn
            try:
                yield
            finally:
                self._local.conn = None

    def _row(self) -> tuple[str, int] | None:
        query = self._text(f"SELECT doc, seq FROM {self._table} WHERE name = :n")
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            row = conn.execute(query, {"n": self._name}).first()
        else:
            with self._engine.connect() as fresh:
                row = fresh.execute(query, {"n": self._name}).first()
        return (str(row[0]), int(row[1])) if row is not None else None

    def read(self) -> dict[str, Any]:
        row = self._row()
        doc: dict[str, Any] = json.loads(row[0] if row is not None else json.dumps(self._empty))
        return doc

    def write(self, doc: dict[str, Any]) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            raise RuntimeError("a document is written only under SqlDocument.locked()")
        conn.execute(
            self._text(f"UPDATE {self._table} SET doc = :d, seq = seq + 1 WHERE name = :n"),
            {"d": json.dumps(doc, sort_keys=True), "n": self._name},
        )

    def stamp(self) -> float:
        row = self._row()
        return float(row[1]) if row is not None else 0.0
