"""The speed layer's rows through Feast's own write path (``write_to_online_store``), and
the removal of entities' rows (``saiki forget``)."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from datetime import UTC, datetime

import pandas as pd

from saiki.core.config import SaikiConfig
from saiki.feature_repo.changes import ChangeLogWriter
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

    def write(self, entity: str, rows: Sequence[SpeedRow]) -> None:
        """Upsert rows in one micro-batch."""
        if not rows:
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
