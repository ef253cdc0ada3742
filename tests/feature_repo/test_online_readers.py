"""One contract, two readers of speed rows: the direct SQLite reader the server uses by
default, and Feast's generic read path (any online store, e.g. Redis)."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from feast.protos.feast.types.Value_pb2 import Value

from saiki.core.config import SaikiConfig
from saiki.feature_repo.layout import online_store_path
from saiki.feature_repo.online import WIDTH
from saiki.feature_repo.online_readers import FeastOnlineReader, SqliteOnlineReader, online_reader
from tests.conftest import make_config

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("entity", ["user", "item"])
def test_both_readers_return_the_same_speed_rows(lambda_env: SaikiConfig, entity: str) -> None:
    direct = SqliteOnlineReader(lambda_env)
    every = direct.read_speed(entity, None)
    assert every, "the lambda environment's speed layer wrote rows"
    ids = [*sorted(every)[:40], "never-seen"]
    through_feast = FeastOnlineReader(lambda_env).read(entity, ids)
    fast = direct.read(entity, ids)
    assert "never-seen" not in fast and "never-seen" not in through_feast
    assert set(fast) == set(through_feast) == set(ids[:-1])
    for entity_id in ids[:-1]:
        assert through_feast[entity_id].tiles == fast[entity_id].tiles
        assert through_feast[entity_id].tiles_from_ms == fast[entity_id].tiles_from_ms


def test_the_reader_follows_the_configured_online_store(lambda_env: SaikiConfig) -> None:
    assert isinstance(online_reader(lambda_env), SqliteOnlineReader)


def test_the_sqlite_reader_sees_commits_of_other_processes(
    lambda_env: SaikiConfig, tmp_path: Path
) -> None:
    """What the server's feature cache relies on: ``data_version`` moves on a commit by
    another process (the speed layer's sink), and only then."""
    config = make_config(tmp_path / "data")
    copy = online_store_path(config.data_dir)
    copy.parent.mkdir(parents=True)
    with sqlite3.connect(online_store_path(lambda_env.data_dir)) as source:
        with sqlite3.connect(copy) as target:
            source.backup(target)  # the store is in WAL mode: copy through SQLite
        target.close()
    source.close()
    reader = SqliteOnlineReader(config)
    entity_id = sorted(reader.read_speed("item", None))[0]
    first = reader.data_version()
    reader.read("item", [entity_id])
    assert reader.data_version() == first
    blob = Value(bytes_val=b"\0" * 8 * WIDTH).SerializeToString()
    table = f"{config.feast.project}_item_speed"
    script = (
        "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]);"
        f"c.execute(\"UPDATE {table} SET value = ? WHERE feature_name = 'tiles'\", "
        "(bytes.fromhex(sys.argv[2]),)); c.commit()"
    )
    subprocess.run([sys.executable, "-c", script, str(copy), blob.hex()], check=True)
    assert reader.data_version() != first
    assert reader.read("item", [entity_id])[entity_id].tiles == b"\0" * 8 * WIDTH
