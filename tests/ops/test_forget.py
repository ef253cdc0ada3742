"""``saiki forget``: one user's data out of every store that can be rewritten, the
deletion recorded, and nothing of it loaded, replayed or published again."""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pyarrow.compute as pc
import pytest
from pyiceberg.expressions import EqualTo

from saiki.batch.master import MasterDataset
from saiki.batch.predictions import PREDICTIONS_TABLE
from saiki.batch.tables import EVENTS_TABLE
from saiki.core.config import SaikiConfig
from saiki.core.eventlog import EventLog
from saiki.core.forgotten import FILE, user_digest
from saiki.core.prediction_files import ROTATE_MS
from saiki.core.timeutil import now_ms
from saiki.feature_repo.layout import online_store_path
from saiki.feature_repo.online_readers import SqliteOnlineReader
from saiki.feature_repo.tiles import ENTITY_ID
from saiki.feature_repo.views import ViewCatalog
from saiki.serving.prediction_log import Prediction, PredictionLog
from tests.conftest import make_config, run_saiki

pytestmark = pytest.mark.slow


@pytest.fixture
def env(lambda_env: SaikiConfig, tmp_path: Path) -> Iterator[SaikiConfig]:
    root = tmp_path / "data"
    shutil.copytree(lambda_env.data_dir, root)
    yield make_config(root)


def users_with_speed_rows(config: SaikiConfig) -> list[str]:
    return sorted(SqliteOnlineReader(config).read_speed("user", None))


def count_rows(table: object, user: str, snapshot_id: int | None = None) -> int:
    scan = table.scan(  # type: ignore[attr-defined]
        row_filter=EqualTo("user_id", user), selected_fields=("user_id",), snapshot_id=snapshot_id
    )
    return int(scan.to_arrow().num_rows)


def log_answers(config: SaikiConfig, users: list[str], at: int) -> None:
    """A closed log file (an hour and more ago) and an open one, each with an answer for
    every user."""
    folder = config.data_dir / "serving"
    for started in (at - 2 * ROTATE_MS, at - 60_000):
        clock = [started + 1_000]
        log = PredictionLog(folder, clock=lambda clock=clock: clock[0])
        for user in users:
            log.write(user, Prediction(f"{user}-{started}", "v1", "production", [("i1", 0.5)]))
        log.close()


def test_forget_removes_the_user_everywhere_and_nothing_brings_it_back(
    env: SaikiConfig,
) -> None:
    config = env
    master = MasterDataset(config)
    events = master.table(EVENTS_TABLE)
    before = events.current_snapshot()
    assert before is not None
    total_before = int(events.scan(selected_fields=("event_id",)).to_arrow().num_rows)
    user, other = users_with_speed_rows(config)[:2]
    user_rows = count_rows(events, user)
    assert user_rows > 0
    offset_before = MasterDataset.committed_offset(events)
    log_answers(config, [user, other], now_ms())

    said = run_saiki(config, "forget", user)

    # The master dataset: the user's rows gone, everyone else's kept, loading resumes.
    events = master.table(EVENTS_TABLE)
    assert count_rows(events, user) == 0
    total_after = int(events.scan(selected_fields=("event_id",)).to_arrow().num_rows)
    assert total_after == total_before - user_rows
    assert f"events: {user_rows} row(s) deleted" in said
    assert MasterDataset.committed_offset(events) == offset_before
    assert all(r.rows == 0 for r in master.load(EventLog(config.log_dir)))
    # Time travel still reaches them until expiry; the command says when, and what pins
    # the snapshot they are in (the published view computed from it).
    assert count_rows(events, user, before.snapshot_id) == user_rows
    assert f"snapshot {before.snapshot_id}: view" in said
    assert "expires the snapshots reaching them" in said

    # The prediction log: the closed file rewritten, the open one filtered at load.
    assert "1 answer(s) removed from 1 closed file(s); 1 open file(s)" in said
    master.load_predictions(config.data_dir / "serving", now_ms() + 10 * ROTATE_MS, hold_ms=0)
    predictions = master.table(PREDICTIONS_TABLE)
    loaded = predictions.scan(selected_fields=("user_id",)).to_arrow().column("user_id")
    assert sorted(loaded.to_pylist()) == [other, other]

    # Online rows: none left for the user, and the servers' caches are told.
    assert user not in users_with_speed_rows(config) and other in users_with_speed_rows(config)
    assert online_values(config, user) == 0 < online_values(config, other)
    with sqlite3.connect(online_store_path(config.data_dir)) as connection:
        changed = connection.execute("SELECT ids FROM saiki_speed_changes").fetchall()
    assert any(user in str(row[0]) for row in changed)
    record = (config.data_dir / FILE).read_text()
    assert user_digest(user) in record and user not in record  # the id itself is not kept

    # A fresh speed run replays the log since the view's cutoff, the user's events with
    # it: none of the user's past minutes is written again.
    run_saiki(config, "speed", "run", "--until-idle", "--fresh")
    assert user not in users_with_speed_rows(config) and other in users_with_speed_rows(config)

    # A recompute: the new view has no row of the user, and its publication writes no
    # empty row for the user either.
    run_saiki(config, "batch", "run")
    catalog = ViewCatalog(config.data_dir)
    current = catalog.current_id()
    assert current is not None
    for part, column in (("user_features", "user_id"), ("user_tiles", ENTITY_ID)):
        ids = catalog.read(current, part).column(column)
        assert not pc.any(pc.equal(ids, user)).as_py()
        assert pc.any(pc.equal(ids, other)).as_py()
    assert online_values(config, user) == 0


def online_values(config: SaikiConfig, user: str) -> int:
    """Values stored online under the user's key (batch and speed views)."""
    key = SqliteOnlineReader(config).entity_key("user", user)
    with sqlite3.connect(online_store_path(config.data_dir)) as connection:
        return sum(
            connection.execute(f"SELECT COUNT(*) FROM {t} WHERE entity_key = ?", (key,)).fetchone()[
                0
            ]
            for t in ("saiki_user_batch", "saiki_user_speed")
        )
