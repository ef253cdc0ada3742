"""Feast in cluster mode: the SQL registry on PostgreSQL and the Redis online store, both
real servers the project installs, through saiki and through the stock ``feast`` CLI with
the cluster configuration (``feature_repo/feature_store.redis.yaml``)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from saiki.core.config import SaikiConfig
from saiki.feature_repo.feast_repo import apply, open_store
from saiki.feature_repo.online_readers import SqliteOnlineReader
from saiki.feature_repo.redis_store import RedisOnlineReader
from saiki.feature_repo.views import ViewCatalog
from tests.conftest import make_config
from tests.feature_repo.test_feast_repo import feast_cli

pytestmark = [pytest.mark.slow, pytest.mark.cluster]


def test_the_sql_registry_and_redis_through_saiki_and_the_stock_cli(
    lambda_env: SaikiConfig, postgres: str, redis_server: str, tmp_path: Path
) -> None:
    root = tmp_path / "data"
    shutil.copytree(lambda_env.data_dir, root, ignore=shutil.ignore_patterns("feast"))
    registry = postgres.replace("postgresql+psycopg2://", "postgresql://", 1)
    (root / "saiki.toml").write_text(
        f'[feast]\nonline_store = "redis"\nredis_connection = "{redis_server}"\n'
        f'registry = "{registry}"\n'
    )
    config = make_config(root)
    apply(config)
    store = open_store(config)
    names = {view.name for view in store.list_feature_views()}
    assert {"user_batch", "item_batch", "user_speed", "item_speed"} <= names

    # The stock CLI, with the cluster yaml, sees what saiki registered in PostgreSQL.
    cluster = {"SAIKI_FEAST_REGISTRY": registry, "SAIKI_FEAST_REDIS_CONNECTION": redis_server}

    def feast(*argv: str) -> str:
        return feast_cli(root, "-f", "feature_store.redis.yaml", *argv, environ=cluster)

    listed = feast("feature-views", "list")
    assert all(name in listed for name in ("user_batch", "user_speed"))
    # Batch rows to Redis by the stock CLI, read back through saiki's Feast store.
    manifest = ViewCatalog(root).current()
    assert manifest is not None
    feast("materialize", "2026-11-01T00:00:00", "2026-12-01T00:00:00", "--views", "user_batch")
    row = store.get_online_features(
        features=["user_batch:clicks_7d", "user_batch:batch_cutoff_ms"],
        entity_rows=[{"user_id": "u1"}],
    ).to_dict()
    assert row["batch_cutoff_ms"] == [manifest.cutoff_ms]

    # The speed layer's rows, copied through its writer, are read back exactly.
    from saiki.feature_repo.speed_rows import FeastSpeedWriter

    rows = SqliteOnlineReader(lambda_env).read_speed("user", None)
    FeastSpeedWriter(config).write("user", list(rows.values()))
    back = RedisOnlineReader(config).read_speed("user", None)
    assert {i: r.tiles for i, r in back.items()} == {i: r.tiles for i, r in rows.items()}
