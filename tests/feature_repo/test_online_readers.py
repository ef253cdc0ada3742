"""One contract, two readers of speed rows: the direct SQLite reader the server uses by
default, and Feast's generic read path (any online store, e.g. Redis)."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from saiki.core.config import SaikiConfig
from saiki.feature_repo.changes import TABLE
from saiki.feature_repo.layout import online_store_path
from saiki.feature_repo.online import Changes
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


def test_the_sqlite_reader_sees_the_changes_another_process_records(
    lambda_env: SaikiConfig, tmp_path: Path
) -> None:
    """What the server's feature cache relies on: the change log names exactly the
    entities another process (the speed layer's sink) wrote after the reader's position,
    and a reader the trimmed log no longer reaches is told to drop everything."""
    config = make_config(tmp_path / "data")
    copy = online_store_path(config.data_dir)
    copy.parent.mkdir(parents=True)
    with sqlite3.connect(online_store_path(lambda_env.data_dir)) as source:
        with sqlite3.connect(copy) as target:
            source.backup(target)  # the store is in WAL mode: copy through SQLite
        target.close()
    source.close()
    reader = SqliteOnlineReader(config)
    start = reader.changes_since(None)
    assert start is not None and start.entities == {}
    entity_id = sorted(reader.read_speed("item", None))[0]
    reader.read("item", [entity_id])
    assert reader.changes_since(start.seq) == Changes(start.seq, {})  # reads change nothing
    script = (
        "import sys; from pathlib import Path;"
        "from saiki.feature_repo.changes import ChangeLogWriter;"
        "log = ChangeLogWriter(Path(sys.argv[1]));"
        "log.append('item', [sys.argv[2]]); log.append('user', ['u-x', 'u-y'])"
    )
    subprocess.run([sys.executable, "-c", script, str(copy), entity_id], check=True)
    changed = reader.changes_since(start.seq)
    assert changed is not None and changed.seq == start.seq + 2
    assert changed.entities == {"item": {entity_id}, "user": {"u-x", "u-y"}}
    with sqlite3.connect(copy) as connection:  # trimmed past a reader still at start
        connection.execute(f"DELETE FROM {TABLE} WHERE seq = ?", (start.seq + 1,))
    connection.close()
    assert reader.changes_since(start.seq) == Changes(start.seq + 2, None)
    assert reader.changes_since(start.seq + 1) == Changes(start.seq + 2, {"user": {"u-x", "u-y"}})


def test_removing_speed_rows_keeps_batch_rows_and_is_a_recorded_change(
    lambda_env: SaikiConfig, tmp_path: Path
) -> None:
    """The sink removes the speed rows of entities with no tile left (bounded state):
    on SQLite that deletes the speed view's rows only, and the change log names them so
    that servers drop what they cached."""
    from saiki.feature_repo.speed_rows import delete_online_rows

    config = make_config(tmp_path / "data")
    copy = online_store_path(config.data_dir)
    copy.parent.mkdir(parents=True)
    with sqlite3.connect(online_store_path(lambda_env.data_dir)) as source:
        with sqlite3.connect(copy) as target:
            source.backup(target)
        target.close()
    source.close()
    reader = SqliteOnlineReader(config)
    gone, kept = sorted(reader.read_speed("item", None))[:2]
    key = reader.entity_key("item", gone)
    batch_table = f'"{config.feast.project}_item_batch"'

    def batch_values() -> int:
        with sqlite3.connect(copy) as connection:
            found = connection.execute(
                f"SELECT COUNT(*) FROM {batch_table} WHERE entity_key = ?", (key,)
            ).fetchone()[0]
        connection.close()
        return int(found)

    before = batch_values()
    assert before > 0, "the lambda environment's item has batch values"
    start = reader.changes_since(None)
    assert start is not None
    assert delete_online_rows(config, "item", [gone], speed_only=True) > 0
    assert set(reader.read("item", [gone, kept])) == {kept}
    assert batch_values() == before
    assert reader.changes_since(start.seq) == Changes(start.seq + 1, {"item": {gone}})


@pytest.mark.cluster
def test_on_redis_the_fast_reader_and_feasts_return_the_rows_the_writer_wrote(
    lambda_env: SaikiConfig, redis_server: str, tmp_path: Path
) -> None:
    """The lambda environment's speed rows written to Redis through the speed layer's
    writer (Feast's write path): serving's pipelined reader returns exactly what Feast's
    generic read returns and what SQLite holds; every write is named in the change log,
    and a reader further behind than the log keeps is told to drop everything."""
    from saiki.feature_repo import redis_store
    from saiki.feature_repo.redis_store import RedisChangeLog, RedisOnlineReader
    from saiki.feature_repo.speed_rows import FeastSpeedWriter, delete_online_rows
    from tests.conftest import online_store_config

    config = online_store_config(tmp_path / "data", "redis", redis_server)
    assert isinstance(online_reader(config), RedisOnlineReader)
    reader = RedisOnlineReader(config)
    start = reader.changes_since(None)
    assert start is not None and start.entities == {}
    sqlite_rows = SqliteOnlineReader(lambda_env).read_speed("item", None)
    writer = FeastSpeedWriter(config)
    writer.write("item", list(sqlite_rows.values()))
    ids = [*sorted(sqlite_rows)[:40], "never-seen"]
    fast = reader.read("item", ids)
    through_feast = FeastOnlineReader(config).read("item", ids)
    assert set(fast) == set(through_feast) == set(ids[:-1])
    for entity_id in ids[:-1]:
        assert fast[entity_id].tiles == through_feast[entity_id].tiles
        assert fast[entity_id].tiles == sqlite_rows[entity_id].tiles
        assert fast[entity_id].tiles_from_ms == sqlite_rows[entity_id].tiles_from_ms
    restored = {r.entity_id for r in writer.read_all("item")}
    assert restored == set(sqlite_rows)  # the sink's restore reads them all back
    changed = reader.changes_since(start.seq)
    assert changed is not None and changed.seq == start.seq + 1
    assert changed.entities == {"item": frozenset(sqlite_rows)}
    # Deleting rows removes the hash and is a change too.
    gone = ids[0]
    assert delete_online_rows(config, "item", [gone]) == 1
    assert gone not in reader.read("item", ids)
    assert reader.changes_since(changed.seq) == Changes(changed.seq + 1, {"item": {gone}})
    # Removing the speed rows only (the sink's forgetting) leaves the hash's other
    # values: the batch view's, stood in for by a field of another view.
    from saiki.feature_repo.redis_store import redis_client

    client = redis_client(config.feast.redis_connection)
    trimmed = ids[1]
    client.hset(reader.entity_key("item", trimmed), b"_ts:item_batch", b"kept")
    writer.remove("item", [trimmed])
    assert trimmed not in reader.read("item", ids) and ids[2] in reader.read("item", ids)
    assert client.hgetall(reader.entity_key("item", trimmed)) == {b"_ts:item_batch": b"kept"}
    assert reader.changes_since(changed.seq + 1) == Changes(changed.seq + 2, {"item": {trimmed}})
    client.close()
    # A log trimmed past a reader: the reader hears that anything may have changed.
    log = RedisChangeLog(config)
    keep = redis_store.KEEP
    try:
        redis_store.KEEP = 2  # type: ignore[misc]
        for n in range(3):
            log.append("user", [f"u{n}"])
    finally:
        redis_store.KEEP = keep  # type: ignore[misc]
    behind = reader.changes_since(changed.seq)
    assert behind is not None and behind.entities is None
    assert behind.seq == changed.seq + 5


@pytest.mark.cluster
def test_on_a_shared_redis_each_project_reads_back_only_its_own_rows(
    lambda_env: SaikiConfig, redis_server: str, tmp_path: Path
) -> None:
    """Feast keys a row by its entity key with the project as a suffix: a scan for one
    project's rows must not return (nor choke on) another's, even one whose name ends
    with the first one's."""
    from saiki.feature_repo.feast_repo import apply
    from saiki.feature_repo.redis_store import RedisOnlineReader
    from saiki.feature_repo.speed_rows import FeastSpeedWriter

    rows = sorted(SqliteOnlineReader(lambda_env).read_speed("user", None).items())
    configs = []
    for project in ("shared", "unshared"):
        root = tmp_path / project
        root.mkdir()
        (root / "saiki.toml").write_text(
            f'[feast]\nonline_store = "redis"\nredis_connection = "{redis_server}"\n'
            f'project = "{project}"\n'
        )
        configs.append(make_config(root))
        apply(configs[-1])
    FeastSpeedWriter(configs[0]).write("user", [row for _, row in rows[:10]])
    FeastSpeedWriter(configs[1]).write("user", [row for _, row in rows[5:30]])
    own = {r.entity_id for r in FeastSpeedWriter(configs[0]).read_all("user")}
    assert own == {entity_id for entity_id, _ in rows[:10]}
    others = set(RedisOnlineReader(configs[1]).read_speed("user", None))
    assert others == {entity_id for entity_id, _ in rows[5:30]}
