"""The speed layer's rows into the online store, and the removal of entities' rows
(``saiki forget``, and the sink's forgetting of idle entities).

On SQLite the rows are upserted straight into Feast's tables, in Feast's own row format:
its entity-key serialisation, its value protos, its ``value_text`` and timestamp
helpers, its upsert statement. Feast's ``write_to_online_store`` took a DataFrame through
Arrow to protos and ran one statement per value: in a profile of the speed layer under
1,000 events/s it was the largest part of the JVM's Python time. ``tests/feature_repo/
test_online_readers.py`` reads the directly written rows back through Feast's own
reader. A table of another shape (a Feast option that adds columns) is written through
Feast. Other stores (Redis) go through Feast's write path.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from datetime import UTC, datetime

import pandas as pd

from saiki.core.config import SaikiConfig
from saiki.feature_repo.changes import ChangeLogWriter
from saiki.feature_repo.feast_import import import_feast
from saiki.feature_repo.feast_repo import open_store
from saiki.feature_repo.layout import online_store_path
from saiki.feature_repo.online import SpeedRow
from saiki.feature_repo.online_readers import SqliteOnlineReader, online_reader
from saiki.feature_repo.redis_store import RedisChangeLog
from saiki.feature_repo.spec import ENTITY_BY_NAME


class FeastSpeedWriter:
    """The :class:`~saiki.feature_repo.online.SpeedWriter` of the real online store."""

    def __init__(self, config: SaikiConfig) -> None:
        self._store = open_store(config)
        self._config = config
        self._changes: ChangeLogWriter | RedisChangeLog = (
            RedisChangeLog(config)
            if config.feast.online_store == "redis"
            else ChangeLogWriter(online_store_path(config.data_dir))
        )
        self._direct = _SqliteSpeedTables(config) if config.feast.online_store == "sqlite" else None

    def write(self, entity: str, rows: Sequence[SpeedRow]) -> None:
        """Upsert rows in one micro-batch."""
        if not rows:
            return
        if self._direct is not None and self._direct.write(entity, rows):
            self._changes.append(entity, [r.entity_id for r in rows])  # after the commit
            return
        key = ENTITY_BY_NAME[entity].key
        stamp = datetime.now(UTC)
        frame = pd.DataFrame(
            {
                key: [r.entity_id for r in rows],
                "tiles": [r.tiles for r in rows],
                "tiles_from_ms": [r.tiles_from_ms for r in rows],
                "updated_ms": [r.updated_ms for r in rows],
                "event_timestamp": [stamp] * len(rows),
            }
        )
        self._store.write_to_online_store(f"{entity}_speed", frame)
        # After the rows' write: see feature_repo/changes.py and redis_store.py.
        self._changes.append(entity, [r.entity_id for r in rows])

    def read_all(self, entity: str) -> list[SpeedRow]:
        """Every speed row of an entity kind (the sink's state after a restart)."""
        return list(online_reader(self._config).read_speed(entity, None).values())

    def remove(self, entity: str, ids: Sequence[str]) -> None:
        """Delete these entities' speed rows (their batch rows stay), then record the
        change: the sink's way to forget entities with no tile left to serve."""
        delete_online_rows(self._config, entity, ids, speed_only=True)


def delete_online_rows(
    config: SaikiConfig, entity: str, ids: Sequence[str], *, speed_only: bool = False
) -> int:
    """Remove entities' online rows, the batch view's and the speed layer's (or only the
    speed layer's), then record the change (``feature_repo/changes.py``) so that servers
    drop them from their caches. Returns how many stored values (Redis: hashes) went."""
    if config.feast.online_store == "redis":
        redis_log = RedisChangeLog(config)
        try:
            # The hash holds both views' values.
            if speed_only:
                return redis_log.remove_speed(entity, ids)
            return redis_log.delete(entity, ids)
        finally:
            redis_log.close()
    path = online_store_path(config.data_dir)
    if not path.exists() or not ids:
        return 0
    views = (f"{entity}_speed",) if speed_only else (f"{entity}_batch", f"{entity}_speed")
    deleted = _delete_sqlite_rows(config, entity, ids, views)
    changes = ChangeLogWriter(path)
    try:
        changes.append(entity, ids)  # after the deletion's commit, as after a write
    finally:
        changes.close()
    return deleted


def _delete_sqlite_rows(
    config: SaikiConfig, entity: str, ids: Sequence[str], views: Sequence[str]
) -> int:
    """Delete entities' rows of these feature views from the SQLite online store, in one
    transaction; returns how many stored values went."""
    reader = SqliteOnlineReader(config)
    keys = [(reader.entity_key(entity, entity_id),) for entity_id in ids]
    deleted = 0
    connection = sqlite3.connect(online_store_path(config.data_dir), timeout=30)
    try:
        with connection:
            present = {
                row[0]
                for row in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")
            }
            for view in views:
                table = f"{config.feast.project}_{view}"
                if table in present:
                    cursor = connection.executemany(
                        f'DELETE FROM "{table}" WHERE entity_key = ?', keys
                    )
                    deleted += cursor.rowcount
    finally:
        connection.close()
    return deleted


class _SqliteSpeedTables:
    """Speed rows upserted into Feast's SQLite tables in Feast's row format (see the
    module's docstring): one ``executemany`` per kind, in one transaction."""

    # The columns Feast writes (vector_value stays NULL without its vector option).
    _WRITTEN = ("entity_key", "feature_name", "value", "value_text", "event_ts", "created_ts")
    _KNOWN = frozenset((*_WRITTEN, "vector_value"))

    def __init__(self, config: SaikiConfig) -> None:
        import_feast()
        # Importing Feast's SQLite store registers its datetime adapter (epoch seconds).
        from feast.infra.online_stores import sqlite as feast_sqlite  # noqa: F401
        from feast.infra.online_stores.helpers import extract_text_and_num
        from feast.protos.feast.types.Value_pb2 import Value
        from feast.utils import to_naive_utc

        self._config = config
        self._keys = SqliteOnlineReader(config)
        self._value, self._text = Value, extract_text_and_num
        self._naive = to_naive_utc
        self._connection: sqlite3.Connection | None = None
        self._tables: dict[str, str | None] = {}  # entity kind → upsert, None: not ours

    def _upsert(self, connection: sqlite3.Connection, entity: str) -> str | None:
        if entity not in self._tables:
            table = f"{self._config.feast.project}_{entity}_speed"
            columns = {row[1] for row in connection.execute(f'PRAGMA table_info("{table}")')}
            if not columns or not columns <= self._KNOWN:
                self._tables[entity] = None  # absent, or a shape Feast's options made
            else:
                names = ", ".join(self._WRITTEN)
                self._tables[entity] = (
                    f'INSERT INTO "{table}" ({names}) VALUES ({", ".join("?" * 6)}) '
                    "ON CONFLICT(entity_key, feature_name) DO UPDATE SET value = excluded.value, "
                    "value_text = excluded.value_text, event_ts = excluded.event_ts, "
                    "created_ts = excluded.created_ts"
                )
        return self._tables[entity]

    def write(self, entity: str, rows: Sequence[SpeedRow]) -> bool:
        """Upsert the rows; False (nothing written) when the table is not one to write
        directly, so that the caller goes through Feast."""
        if self._connection is None:
            path = online_store_path(self._config.data_dir)
            self._connection = sqlite3.connect(path, timeout=30, check_same_thread=False)
        connection = self._connection
        upsert = self._upsert(connection, entity)
        if upsert is None:
            return False
        stamp = self._naive(datetime.now(UTC))
        values: list[tuple[object, ...]] = []
        for row in rows:
            key = self._keys.entity_key(entity, row.entity_id)
            for name, value in (
                ("tiles", self._value(bytes_val=row.tiles)),
                ("tiles_from_ms", self._value(int64_val=row.tiles_from_ms)),
                ("updated_ms", self._value(int64_val=row.updated_ms)),
            ):
                text, _ = self._text(value, False)
                values.append((key, name, value.SerializeToString(), text, stamp, None))
        with connection:
            connection.executemany(upsert, values)
        return True
