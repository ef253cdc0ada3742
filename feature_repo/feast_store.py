"""saiki's Feast repo in-process: configuration, apply, materialisation, speed rows.

Everything that imports ``feast`` (about 5 s and 360 MB the first time) lives here, so
layers only pay for it when they touch Feast. The configuration is the one of
``feature_store.yaml`` built from :class:`core.config.SaikiConfig`: registry file, file
offline store and SQLite online store under the data dir, or a Redis online store and a
SQL registry by configuration.

Feast's SQLite online store keeps whatever is written last and ignores TTL on reads
(see ENVIRONMENT.md); saiki therefore tags every batch row with its cutoff and every
speed row with the time it is complete from, and serving checks both itself.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from saiki.core.config import SaikiConfig
from saiki.core.errors import ComponentError, ConfigError
from saiki.feature_repo.feast_import import import_feast as _import_feast
from saiki.feature_repo.layout import feast_dir, online_store_path, registry_path
from saiki.feature_repo.online import SpeedRow
from saiki.feature_repo.spec import ENTITIES, ENTITY_BY_NAME, SPEC_VERSION
from saiki.feature_repo.views import ViewCatalog, ViewManifest


def repo_config(config: SaikiConfig) -> Any:
    """The Feast RepoConfig of this data dir (absolute paths, no yaml needed)."""
    _import_feast()
    from feast.repo_config import RepoConfig

    feast_dir(config.data_dir).mkdir(parents=True, exist_ok=True)
    if config.feast.online_store == "sqlite":
        online: dict[str, Any] = {"type": "sqlite", "path": str(online_store_path(config.data_dir))}
    elif config.feast.online_store == "redis":
        online = {"type": "redis", "connection_string": config.feast.redis_connection}
    else:
        raise ConfigError(
            f"feast.online_store must be sqlite or redis, got {config.feast.online_store!r}"
        )
    registry: Any = str(registry_path(config.data_dir))
    if config.feast.registry:
        registry = {"registry_type": "sql", "path": config.feast.registry, "cache_ttl_seconds": 60}
    return RepoConfig(
        project=config.feast.project,
        provider="local",
        registry=registry,
        online_store=online,
        # By name, not as a dict: Feast then resolves it when first used, instead of
        # importing its dask-based class (0.6 s) to validate it; the speed layer's sink
        # and the server never use it.
        offline_store="file",
        entity_key_serialization_version=3,
        repo_path=Path(__file__).resolve().parent,
    )


_STORES: dict[Path, Any] = {}
_STORES_LOCK = threading.Lock()


def open_store(config: SaikiConfig) -> Any:
    """The FeatureStore of this data dir (one per process)."""
    with _STORES_LOCK:
        store = _STORES.get(config.data_dir)
        if store is None:
            feast = _import_feast()
            store = feast.FeatureStore(config=repo_config(config))
            _STORES[config.data_dir] = store
        return store


def feast_objects(data_dir: Path, view_id: str | None = None) -> dict[str, Any]:
    """The repo's Feast objects for this data dir, by name (see definitions.py)."""
    _import_feast()
    from saiki.feature_repo import definitions

    return definitions.build(data_dir, view_id)


_APPLIED = "applied.json"


def _applied_stamp(config: SaikiConfig, view_id: str | None) -> str:
    current = view_id or ViewCatalog(config.data_dir).current_id()
    return json.dumps({"spec": SPEC_VERSION, "view": current, "project": config.feast.project})


def is_applied(config: SaikiConfig) -> bool:
    """True when this process's spec and the current view are what the registry holds
    (saiki's last apply said so): callers may then skip importing Feast (~8 s)."""
    stamp = feast_dir(config.data_dir) / _APPLIED
    registry = registry_path(config.data_dir)
    if config.feast.registry or not registry.exists() or not stamp.exists():
        return False
    if registry.stat().st_mtime > stamp.stat().st_mtime:
        return False  # someone applied since (e.g. the stock feast CLI): check for real
    return stamp.read_text() == _applied_stamp(config, None)


def apply(config: SaikiConfig, view_id: str | None = None) -> list[str]:
    """Register the repo's objects (as ``feast apply`` does) and prepare the online store.

    The batch sources point at ``view_id`` (default: the current view).
    """
    stamp = feast_dir(config.data_dir) / _APPLIED
    stamp.unlink(missing_ok=True)
    store = open_store(config)
    objects = feast_objects(config.data_dir, view_id)
    try:
        store.apply(list(objects.values()))
    except Exception as exc:
        raise ComponentError(f"feast apply failed: {exc}") from exc
    if config.feast.online_store == "sqlite":
        # Readers (serving) and the writer (speed) are different processes: WAL lets
        # them proceed without blocking each other. The setting persists in the file.
        with sqlite3.connect(online_store_path(config.data_dir)) as connection:
            connection.execute("PRAGMA journal_mode=WAL")
    stamp.write_text(_applied_stamp(config, view_id))
    return sorted(objects)


def publish_batch_view(
    config: SaikiConfig, manifest: ViewManifest, previous: ViewManifest | None
) -> int:
    """Point the batch sources at a view and write its rows to the online store.

    Entities of the previous view that the new one lacks (no events in the longest
    window) are written as zeros at the new cutoff, so no stale row survives.
    """
    store = open_store(config)
    apply(config, manifest.view_id)  # the batch sources now point at the new view
    catalog = ViewCatalog(config.data_dir)
    written = 0
    for entity in ENTITIES:
        frame = catalog.read(manifest.view_id, f"{entity.name}_features").to_pandas()
        if previous is not None:
            old = catalog.read(previous.view_id, f"{entity.name}_features").column(entity.key)
            gone = sorted(set(old.to_pylist()) - set(frame[entity.key]))
            if gone:
                zeros = pd.DataFrame({entity.key: gone})
                for column in frame.columns:
                    if column not in (entity.key, "event_timestamp", "batch_cutoff_ms"):
                        zeros[column] = _zero_value(column)
                zeros["event_timestamp"] = (
                    frame["event_timestamp"].iloc[0]
                    if len(frame)
                    else (pd.Timestamp(manifest.cutoff_ms, unit="ms", tz="UTC"))
                )
                zeros["batch_cutoff_ms"] = manifest.cutoff_ms
                frame = pd.concat([frame, zeros], ignore_index=True)
        if len(frame):
            store.write_to_online_store(f"{entity.name}_batch", frame)
            written += len(frame)
    return written


def _zero_value(column: str) -> float:
    # ctr_W of an entity with no events is (0 + 1) / (0 + 20); everything else is 0.
    return 1.0 / 20.0 if column.startswith("ctr_") else 0.0


class FeastSpeedWriter:
    """Speed rows through Feast's own write path (``write_to_online_store``)."""

    def __init__(self, config: SaikiConfig) -> None:
        self._store = open_store(config)
        self._config = config

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

    def read_all(self, entity: str) -> list[SpeedRow]:
        """Every speed row of an entity kind (the sink's state after a restart)."""
        if self._config.feast.online_store != "sqlite":
            raise ConfigError("rebuilding speed state needs the sqlite online store")
        return list(SqliteOnlineReader(self._config).read_speed(entity, None).values())


class SqliteOnlineReader:
    """Reads saiki's rows straight from Feast's SQLite online store, one query per kind.

    Uses Feast's own entity-key serialisation and value protos; skips Feast's generic
    read path (registry lookups, type checks, response assembly), which is most of its
    cost. Thread-safe: one read-only connection per thread.
    """

    def __init__(self, config: SaikiConfig) -> None:
        _import_feast()
        from feast.infra.key_encoding_utils import deserialize_entity_key, serialize_entity_key
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.protos.feast.types.Value_pb2 import Value

        self._serialize, self._deserialize = serialize_entity_key, deserialize_entity_key
        self._entity_key, self._value = EntityKey, Value
        self._path = online_store_path(config.data_dir)
        self._project = config.feast.project
        self._local = threading.local()
        self._keys: dict[tuple[str, str], bytes] = {}
        self._versions: sqlite3.Connection | None = None
        self._versions_lock = threading.Lock()

    def data_version(self) -> int | None:
        """SQLite's ``data_version`` seen from one connection of this reader: it changes
        whenever another connection (the speed layer's sink, a batch publish, another
        process) commits. One connection for it, since the numbers of two connections
        are not comparable."""
        with self._versions_lock:
            if self._versions is None:
                if not self._path.exists():
                    return None
                self._versions = sqlite3.connect(
                    f"file:{self._path}?mode=ro", uri=True, check_same_thread=False
                )
            version: int = self._versions.execute("PRAGMA data_version").fetchone()[0]
            return version

    def _connection(self) -> sqlite3.Connection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = sqlite3.connect(
                f"file:{self._path}?mode=ro", uri=True, check_same_thread=False
            )
            connection.execute("PRAGMA query_only=1")
            self._local.connection = connection
        return connection

    def _key(self, entity: str, entity_id: str) -> bytes:
        cached = self._keys.get((entity, entity_id))
        if cached is None:
            proto = self._entity_key(
                join_keys=[ENTITY_BY_NAME[entity].key],
                entity_values=[self._value(string_val=entity_id)],
            )
            cached = self._serialize(proto, entity_key_serialization_version=3)
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
                    self._deserialize(key, entity_key_serialization_version=3)
                    .entity_values[0]
                    .string_val
                )
            value = parse(blob)
            kind = value.WhichOneof("val")
            found.setdefault(entity_id, {})[name] = getattr(value, kind) if kind else None
        return found

    def read_speed(self, entity: str, ids: Sequence[str] | None) -> dict[str, SpeedRow]:
        """Speed rows of these ids (all rows when ids is None)."""
        rows = self._rows(f"{entity}_speed", entity, ids, ("tiles", "tiles_from_ms"))
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

    def read_batch(self, entity: str, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Batch rows (collapsed features at the cutoff, with ``batch_cutoff_ms``)."""
        return self._rows(f"{entity}_batch", entity, ids)


class FeastOnlineReader:
    """Speed rows through Feast's generic ``get_online_features``: works with any online
    store Feast supports (Redis in cluster mode), at Feast's own read cost."""

    def __init__(self, config: SaikiConfig) -> None:
        self._store = open_store(config)

    def data_version(self) -> None:
        """Feast's generic read path cannot tell when rows change: nothing is cached."""
        return None

    def read(self, entity: str, ids: Sequence[str]) -> Mapping[str, SpeedRow]:
        """The SpeedReader protocol."""
        if not ids:
            return {}
        key = ENTITY_BY_NAME[entity].key
        fields = ("tiles", "tiles_from_ms", "updated_ms")
        found = self._store.get_online_features(
            features=[f"{entity}_speed:{name}" for name in fields],
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


def online_reader(config: SaikiConfig) -> SqliteOnlineReader | FeastOnlineReader:
    """The fastest reader for the configured online store: SQLite is read directly, any
    other store through Feast."""
    if config.feast.online_store == "sqlite":
        return SqliteOnlineReader(config)
    return FeastOnlineReader(config)
