"""Readers of speed rows for serving: SQLite read directly (Redis: ``redis_store.py``),
and Feast's generic path, the reference both are tested against."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Mapping, Sequence
from typing import Any, Final

from saiki.core.config import SaikiConfig
from saiki.core.errors import ComponentError
from saiki.feature_repo.changes import read_changes
from saiki.feature_repo.feast_import import import_feast
from saiki.feature_repo.feast_repo import ENTITY_KEY_SERIALIZATION_VERSION, open_store
from saiki.feature_repo.layout import online_store_path
from saiki.feature_repo.online import Changes, SpeedRow
from saiki.feature_repo.redis_store import RedisOnlineReader
from saiki.feature_repo.spec import ENTITY_BY_NAME

# The features of a speed row in the online store (feature_repo/definitions.py).
_SPEED_FIELDS: Final = ("tiles", "tiles_from_ms", "updated_ms")
_KEY_VERSION: Final = ENTITY_KEY_SERIALIZATION_VERSION


class SqliteOnlineReader:
    """Reads saiki's rows straight from Feast's SQLite online store, one query per kind.

    Uses Feast's own entity-key serialisation and value protos; skips Feast's generic
    read path (registry lookups, type checks, response assembly), which is most of its
    cost. Thread-safe: one read-only connection per thread.
    """

    def __init__(self, config: SaikiConfig) -> None:
        import_feast()
        from feast.infra.key_encoding_utils import deserialize_entity_key, serialize_entity_key
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.protos.feast.types.Value_pb2 import Value

        self._serialize, self._deserialize = serialize_entity_key, deserialize_entity_key
        self._entity_key, self._value = EntityKey, Value
        self._path = online_store_path(config.data_dir)
        self._project = config.feast.project
        self._local = threading.local()
        self._keys: dict[tuple[str, str], bytes] = {}

    def changes_since(self, seq: int | None) -> Changes | None:
        """The speed rows written after ``seq`` (see feature_repo/changes.py)."""
        if not self._path.exists():
            return Changes(0, {} if not seq else None)
        return read_changes(self._connection(), seq)

    def _connection(self) -> sqlite3.Connection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = sqlite3.connect(
                f"file:{self._path}?mode=ro", uri=True, check_same_thread=False
            )
            connection.execute("PRAGMA query_only=1")
            self._local.connection = connection
        return connection

    def entity_key(self, entity: str, entity_id: str) -> bytes:
        """An entity's key as the online store's tables hold it (Feast's serialisation)."""
        return self._key(entity, entity_id)

    def _key(self, entity: str, entity_id: str) -> bytes:
        cached = self._keys.get((entity, entity_id))
        if cached is None:
            proto = self._entity_key(
                join_keys=[ENTITY_BY_NAME[entity].key],
                entity_values=[self._value(string_val=entity_id)],
            )
            cached = self._serialize(proto, entity_key_serialization_version=_KEY_VERSION)
            if len(self._keys) < 1_000_000:
                self._keys[(entity, entity_id)] = cached
        return cached

    def _rows(
        self,
        table: str,
        entity: str,
        ids: Sequence[str] | None,
        features: Sequence[str] | None = None,
    ) -> dict[str, dict[str, Any]]:
        if not self._path.exists():
            return {}
        sql = f'SELECT entity_key, feature_name, value FROM "{self._project}_{table}" WHERE 1'
        parameters: list[Any] = []
        if features is not None:
            sql += f" AND feature_name IN ({','.join('?' * len(features))})"
            parameters += list(features)
        by_key: dict[bytes, str] = {}
        if ids is not None:
            by_key = {self._key(entity, i): i for i in ids}
            sql += f" AND entity_key IN ({','.join('?' * len(by_key))})"
            parameters += list(by_key)
        try:
            rows = self._connection().execute(sql, parameters).fetchall()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return {}
            raise ComponentError(f"online store read failed: {exc}") from exc
        found: dict[str, dict[str, Any]] = {}
        parse = self._value.FromString
        for key, name, blob in rows:
            entity_id = by_key.get(key)
            if entity_id is None:
                entity_id = (
                    self._deserialize(key, entity_key_serialization_version=_KEY_VERSION)
                    .entity_values[0]
                    .string_val
                )
            value = parse(blob)
            kind = value.WhichOneof("val")
            found.setdefault(entity_id, {})[name] = getattr(value, kind) if kind else None
        return found

    def read_speed(self, entity: str, ids: Sequence[str] | None) -> dict[str, SpeedRow]:
        """Speed rows of these ids (all rows when ids is None)."""
        rows = self._rows(f"{entity}_speed", entity, ids, _SPEED_FIELDS)
        return {
            i: SpeedRow(
                i,
                r.get("tiles") or b"",
                int(r.get("tiles_from_ms") or 0),
                int(r.get("updated_ms") or 0),
            )
            for i, r in rows.items()
        }

    def read(self, entity: str, ids: Sequence[str]) -> Mapping[str, SpeedRow]:
        """The SpeedReader protocol: one row per entity (tiles joined with their
        ``tiles_from_ms``), half the rows and none of the generic bookkeeping of
        :meth:`read_speed`, since serving calls this for every request."""
        if not ids or not self._path.exists():
            return {}
        by_key = {self._key(entity, i): i for i in ids}
        table = f'"{self._project}_{entity}_speed"'
        sql = (
            f"SELECT t.entity_key, t.value, f.value FROM {table} t LEFT JOIN {table} f "
            "ON f.entity_key = t.entity_key AND f.feature_name = 'tiles_from_ms' "
            f"WHERE t.feature_name = 'tiles' AND t.entity_key IN ({','.join('?' * len(by_key))})"
        )
        try:
            found = self._connection().execute(sql, list(by_key)).fetchall()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return {}
            raise ComponentError(f"online store read failed: {exc}") from exc
        parse = self._value.FromString
        rows = {}
        for key, tiles, start in found:
            entity_id = by_key[key]
            rows[entity_id] = SpeedRow(
                entity_id,
                parse(tiles).bytes_val,
                parse(start).int64_val if start is not None else 0,
                0,
            )
        return rows


class FeastOnlineReader:
    """Speed rows through Feast's generic ``get_online_features``: works with any online
    store Feast supports (Redis in cluster mode), at Feast's own read cost."""

    def __init__(self, config: SaikiConfig) -> None:
        self._store = open_store(config)

    def changes_since(self, seq: int | None) -> None:
        """Feast's generic read path cannot tell which rows changed: nothing is cached."""
        return None

    def read(self, entity: str, ids: Sequence[str]) -> Mapping[str, SpeedRow]:
        """The SpeedReader protocol."""
        if not ids:
            return {}
        key = ENTITY_BY_NAME[entity].key
        found = self._store.get_online_features(
            features=[f"{entity}_speed:{name}" for name in _SPEED_FIELDS],
            entity_rows=[{key: entity_id} for entity_id in ids],
        ).to_dict()
        rows = {}
        for n, entity_id in enumerate(found[key]):
            tiles = found["tiles"][n]
            if tiles is None:
                continue  # no speed row for this entity
            rows[entity_id] = SpeedRow(
                entity_id,
                tiles,
                int(found["tiles_from_ms"][n] or 0),
                int(found["updated_ms"][n] or 0),
            )
        return rows


def online_reader(config: SaikiConfig) -> SqliteOnlineReader | RedisOnlineReader:
    """The fast reader of the configured online store (SQLite or Redis, read directly in
    Feast's own layout); :class:`FeastOnlineReader` is Feast's generic path, kept as the
    reference the fast ones are tested against."""
    if config.feast.online_store == "redis":
        return RedisOnlineReader(config)
    return SqliteOnlineReader(config)
