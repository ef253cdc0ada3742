"""One contract, two readers of speed rows: the direct SQLite reader the server uses by
default, and Feast's generic read path (any online store, e.g. Redis)."""

from __future__ import annotations

import pytest

from core.config import SaikiConfig
from feature_repo.feast_store import FeastOnlineReader, SqliteOnlineReader, online_reader

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
