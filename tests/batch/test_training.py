"""Training sets: point-in-time features (no leakage), labels, lineage."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import orjson
import pandas as pd
import pyarrow.parquet as pq
import pytest

from saiki.batch.master import MasterDataset
from saiki.batch.training import build_training_set, read_lineage
from saiki.core.config import SaikiConfig
from saiki.core.eventlog import EventLog
from saiki.core.ingest import Ingestor
from saiki.core.timeutil import MS_PER_DAY, MS_PER_MINUTE
from saiki.feature_repo.spec import FEATURE_NAMES, SPEC_VERSION
from tests.conftest import END_MS, make_config
from tests.oracle import master_events, window_features

FROM, TO = END_MS - MS_PER_DAY, END_MS - 2 * 3_600_000


@pytest.fixture(scope="module")
def training(
    ingested: SaikiConfig, tmp_path_factory: pytest.TempPathFactory
) -> tuple[pd.DataFrame, pd.DataFrame, Path]:
    out = tmp_path_factory.mktemp("training") / "set.parquet"
    build_training_set(ingested, FROM, TO, out)
    return pq.read_table(out).to_pandas(), master_events(ingested), out


def oracle_label(events: pd.DataFrame, row: pd.Series) -> int:
    clicks = events[
        (events["event_type"] == "CLICK")
        & (events["user_id"] == row["user_id"])
        & (events["item_id"] == row["item_id"])
    ]
    soon = (clicks["event_time"] >= row["event_time"]) & (
        clicks["event_time"] <= row["event_time"] + 30 * MS_PER_MINUTE
    )
    same_request = row["request_id"] is not None and (clicks["request_id"] == row["request_id"])
    return int(bool(soon.any() or (same_request is not False and same_request.any())))


def test_one_row_per_impression_in_range(
    training: tuple[pd.DataFrame, pd.DataFrame, Path],
) -> None:
    rows, events, _ = training
    impressions = events[
        (events["event_type"] == "IMPRESSION")
        & (events["event_time"] >= FROM)
        & (events["event_time"] < TO)
    ]
    assert len(rows) == len(impressions) > 500
    assert set(rows["event_id"]) == set(impressions["event_id"])


def test_sampled_rows_equal_an_independent_recomputation(
    training: tuple[pd.DataFrame, pd.DataFrame, Path],
) -> None:
    rows, events, _ = training
    for _, row in rows.sample(120, random_state=4).iterrows():
        q = int(row["event_time"])
        for entity, key in (("user", "user_id"), ("item", "item_id")):
            expected = window_features(events, key, row[key], q)
            got = {name: row[f"{entity}_{name}"] for name in FEATURE_NAMES}
            assert got == pytest.approx(expected, rel=1e-12), (row["event_id"], entity)
        assert row["clicked"] == oracle_label(events, row), row["event_id"]


def test_labels_carry_signal_and_lineage_is_recorded(
    training: tuple[pd.DataFrame, pd.DataFrame, Path],
    ingested: SaikiConfig,
) -> None:
    rows, _, path = training
    assert 0.05 < rows["clicked"].mean() < 0.6
    lineage = read_lineage(path)
    assert (lineage.from_ms, lineage.to_ms, lineage.rows) == (FROM, TO, len(rows))
    assert lineage.snapshot_id == MasterDataset(ingested).resolve_snapshot()
    assert lineage.spec_version == SPEC_VERSION
    assert lineage.positives == int(rows["clicked"].sum())


def test_an_event_at_the_impressions_exact_time_does_not_leak(tmp_path: Path) -> None:
    config = make_config(tmp_path / "data")
    t = END_MS - 3_600_000 + 12_345
    records = [
        # A click of the same user at exactly the impression's millisecond: not before it.
        {
            "event_id": "c0",
            "event_time": t,
            "user_id": "u",
            "item_id": "other",
            "event_type": "CLICK",
            "dwell_ms": 100,
        },
        {
            "event_id": "i0",
            "event_time": t,
            "user_id": "u",
            "item_id": "x",
            "event_type": "IMPRESSION",
            "request_id": "r0",
        },
        # One millisecond earlier: counts.
        {
            "event_id": "c1",
            "event_time": t - 1,
            "user_id": "u",
            "item_id": "other",
            "event_type": "CLICK",
            "dwell_ms": 50,
        },
        # The label: a click on the same item 29 minutes later.
        {
            "event_id": "c2",
            "event_time": t + 29 * MS_PER_MINUTE,
            "user_id": "u",
            "item_id": "x",
            "event_type": "CLICK",
            "dwell_ms": 10,
        },
    ]
    log = EventLog(config.log_dir)
    Ingestor(log, clock=lambda: END_MS).ingest_lines([orjson.dumps(r) for r in records], "t")
    MasterDataset(config).load(log)
    out = tmp_path / "set.parquet"
    build_training_set(config, t - MS_PER_MINUTE, t + 1, out)
    row = pq.read_table(out).to_pylist()[0]
    assert row["event_id"] == "i0"
    assert (row["user_clicks_1h"], row["user_dwell_ms_1h"]) == (1.0, 50.0)
    assert row["item_impressions_1h"] == 0.0
    assert row["clicked"] == 1


def test_an_empty_range_gives_an_empty_set(ingested: SaikiConfig, tmp_path: Path) -> None:
    root = tmp_path / "data"
    shutil.copytree(ingested.data_dir, root)
    out = tmp_path / "empty.parquet"
    lineage = build_training_set(
        make_config(root), END_MS + MS_PER_DAY, END_MS + 2 * MS_PER_DAY, out
    )
    assert lineage.rows == 0 and pq.read_table(out).num_rows == 0
    assert np.isfinite(lineage.created_ms)
