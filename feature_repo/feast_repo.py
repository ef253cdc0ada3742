"""saiki's Feast repo in-process: its configuration, the store, and ``apply``.

Everything that imports ``feast`` (about 5 s and 360 MB the first time) lives in this
module and its siblings (``publish``, ``speed_rows``, ``online_readers``), so a layer only
pays for Feast when it touches it. The configuration is the one of ``feature_store.yaml``
built from :class:`saiki.core.config.SaikiConfig`: registry file, file offline store and
SQLite online store under the data dir, or a Redis online store and a SQL registry by
configuration.

Feast's SQLite online store keeps whatever is written last and ignores TTL on reads;
saiki therefore tags every batch row with its cutoff and every speed row with the time it
is complete from, and serving checks both itself.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from pathlib import Path
from typing import Any, Final

from saiki.core.config import SaikiConfig
from saiki.core.errors import ComponentError
from saiki.core.files import atomic_write
from saiki.feature_repo.feast_import import import_feast
from saiki.feature_repo.layout import feast_dir, online_store_path, registry_path
from saiki.feature_repo.spec import SPEC_VERSION
from saiki.feature_repo.views import ViewCatalog

# How Feast serialises entity keys in the online store. saiki's direct readers build the
# same keys, so the version is named once, here, for Feast's config and for them.
ENTITY_KEY_SERIALIZATION_VERSION: Final = 3


def repo_config(config: SaikiConfig) -> Any:
    """The Feast RepoConfig of this data dir (absolute paths, no yaml needed)."""
    import_feast()
    from feast.repo_config import RepoConfig

    feast_dir(config.data_dir).mkdir(parents=True, exist_ok=True)
    online: dict[str, Any]
    if config.feast.online_store == "redis":
        online = {"type": "redis", "connection_string": config.feast.redis_connection}
    else:
        online = {"type": "sqlite", "path": str(online_store_path(config.data_dir))}
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
        entity_key_serialization_version=ENTITY_KEY_SERIALIZATION_VERSION,
        repo_path=Path(__file__).resolve().parent,
    )


_STORES: dict[Path, Any] = {}
_STORES_LOCK = threading.Lock()


def open_store(config: SaikiConfig) -> Any:
    """The FeatureStore of this data dir (one per process)."""
    with _STORES_LOCK:
        store = _STORES.get(config.data_dir)
        if store is None:
            feast = import_feast()
            store = feast.FeatureStore(config=repo_config(config))
            _STORES[config.data_dir] = store
        return store


def feast_objects(config: SaikiConfig, view_id: str | None = None) -> dict[str, Any]:
    """The repo's Feast objects for this configuration, by name (see definitions.py)."""
    import_feast()
    from saiki.feature_repo import definitions

    return definitions.build(config, view_id)


_APPLIED = "applied.json"


def _applied_stamp(config: SaikiConfig, view_id: str | None) -> dict[str, Any]:
    current = view_id or ViewCatalog.open(config).current_id()
    return {"spec": SPEC_VERSION, "view": current, "project": config.feast.project}


def _registry_digest(config: SaikiConfig) -> str:
    return hashlib.sha256(registry_path(config.data_dir).read_bytes()).hexdigest()


def is_applied(config: SaikiConfig) -> bool:
    """True when the registry holds exactly what saiki's last apply wrote, for this spec
    and the current view: callers may then skip importing Feast (~8 s).

    The registry's content is compared, not its time: anyone who applied since (the stock
    ``feast`` CLI, another process) changed the bytes, and the caller applies for real.
    """
    stamp = feast_dir(config.data_dir) / _APPLIED
    if config.feast.registry or not registry_path(config.data_dir).exists():
        return False
    try:
        recorded = json.loads(stamp.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return False
    expected = {**_applied_stamp(config, None), "registry_sha256": _registry_digest(config)}
    return bool(recorded == expected)


def apply(config: SaikiConfig, view_id: str | None = None) -> list[str]:
    """Register the repo's objects (as ``feast apply`` does) and prepare the online store.

    The batch sources point at ``view_id`` (default: the current view).
    """
    stamp = feast_dir(config.data_dir) / _APPLIED
    stamp.unlink(missing_ok=True)
    store = open_store(config)
    objects = feast_objects(config, view_id)
    try:
        store.apply(list(objects.values()))
    except Exception as exc:
        raise ComponentError(f"feast apply failed: {exc}") from exc
    if config.feast.online_store == "sqlite":
        # Readers (serving) and the writer (speed) are different processes: WAL lets
        # them proceed without blocking each other. The setting persists in the file.
        with sqlite3.connect(online_store_path(config.data_dir)) as connection:
            connection.execute("PRAGMA journal_mode=WAL")
    if not config.feast.registry:
        recorded = {**_applied_stamp(config, view_id), "registry_sha256": _registry_digest(config)}
        atomic_write(stamp, json.dumps(recorded))
    return sorted(objects)
