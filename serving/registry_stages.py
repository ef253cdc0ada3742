"""Where the model registry keeps its stages (production, history, shadow): a JSON file
beside the artifacts under a file lock (one machine, or a shared filesystem), or a row in
a SQL database (``[models] metadata``, e.g. PostgreSQL) whose row lock serialises every
change — what replicas that share object storage need, since it has neither rename nor
lock. Both hold the same JSON document; ``stamp`` changes with every write, so servers
poll it to pick up a promotion.
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

REGISTRY_FILE = "registry.json"
TABLE = "saiki_model_registry"


def empty_stages() -> dict[str, Any]:
    """The document of a registry with nothing registered."""
    return {"production": None, "history": [], "stages": {}}


class StageStore(Protocol):
    """Reads and writes the stages document; writes only inside :meth:`locked`."""

    def locked(self) -> Any: ...

    def read(self) -> dict[str, Any]: ...

    def write(self, stages: dict[str, Any]) -> None: ...

    def stamp(self) -> float: ...


class FileStages:
    """``registry.json`` in ``root``, changed atomically under ``root/.lock``."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @contextmanager
    def locked(self) -> Iterator[None]:
        with file_lock(self.root / ".lock"):
            yield

    def read(self) -> dict[str, Any]:
        try:
            stages: dict[str, Any] = json.loads((self.root / REGISTRY_FILE).read_text())
        except FileNotFoundError:
            stages = empty_stages()
        return stages

    def write(self, stages: dict[str, Any]) -> None:
        atomic_write(self.root / REGISTRY_FILE, json.dumps(stages, indent=2, sort_keys=True))

    def stamp(self) -> float:
        try:
            return os.stat(self.root / REGISTRY_FILE).st_mtime
        except FileNotFoundError:
            return 0.0


class SqlStages:
    """One row of ``saiki_model_registry`` per registry name, in a SQLAlchemy database.

    :meth:`locked` opens a transaction and takes the row's write lock first (an
    ``UPDATE`` of the row: a row lock on PostgreSQL, the database's write lock on
    SQLite), so a concurrent promote waits instead of overwriting.
    """

    def __init__(self, url: str, name: str = "models") -> None:
        from sqlalchemy import create_engine, text

        self._text = text
        self._engine = create_engine(url, pool_pre_ping=True)
        self._name = name
        self._local = threading.local()
        try:
            with self._engine.begin() as conn:
                conn.execute(
                    text(
                        f"CREATE TABLE IF NOT EXISTS {TABLE} (name VARCHAR(200) PRIMARY KEY, "
                        "doc TEXT NOT NULL, seq BIGINT NOT NULL)"
                    )
                )
        except Exception as exc:  # two processes creating it at once: one wins
            if not self._table_exists():
                raise ComponentError(f"model registry metadata at {url}: {exc}") from exc

    def _table_exists(self) -> bool:
        from sqlalchemy import inspect

        return bool(inspect(self._engine).has_table(TABLE))

    @contextmanager
    def locked(self) -> Iterator[None]:
        text = self._text
        with self._engine.begin() as conn:
            conn.execute(
                text(
                    f"INSERT INTO {TABLE} (name, doc, seq) VALUES (:n, :d, 0) "
                    "ON CONFLICT (name) DO NOTHING"
                ),
                {"n": self._name, "d": json.dumps(empty_stages())},
            )
            conn.execute(text(f"UPDATE {TABLE} SET seq = seq WHERE name = :n"), {"n": self._name})
            self._local.conn = conn
            try:
                yield
            finally:
                self._local.conn = None

    def _row(self) -> tuple[str, int] | None:
        query = self._text(f"SELECT doc, seq FROM {TABLE} WHERE name = :n")
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            row = conn.execute(query, {"n": self._name}).first()
        else:
            with self._engine.connect() as fresh:
                row = fresh.execute(query, {"n": self._name}).first()
        return (str(row[0]), int(row[1])) if row is not None else None

    def read(self) -> dict[str, Any]:
        row = self._row()
        stages: dict[str, Any] = json.loads(row[0]) if row is not None else empty_stages()
        return stages

    def write(self, stages: dict[str, Any]) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            raise RuntimeError("stages are written only under SqlStages.locked()")
        conn.execute(
            self._text(f"UPDATE {TABLE} SET doc = :d, seq = seq + 1 WHERE name = :n"),
            {"d": json.dumps(stages, sort_keys=True), "n": self._name},
        )

    def stamp(self) -> float:
        row = self._row()
        return float(row[1]) if row is not None else 0.0
