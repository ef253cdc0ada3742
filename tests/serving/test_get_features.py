"""GetFeatures end to end: every served value against an independent recomputation,
across a batch handoff, and bad requests answered with the field named."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pandas as pd
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from saiki.batch.run import BatchRunRequest, run_batch_view
from saiki.core.config import SaikiConfig
from saiki.core.timeutil import now_ms
from saiki.feature_repo.online import WIDTH, SpeedRow, pack_tiles
from saiki.feature_repo.online_readers import SqliteOnlineReader
from saiki.feature_repo.spec import FEATURE_NAMES
from saiki.feature_repo.speed_rows import FeastSpeedWriter
from saiki.feature_repo.views import ViewCatalog
from saiki.serving.merge import FeatureMerger
from saiki.serving.server import RunningServer, start_server
from saiki.v1 import features_pb2, features_pb2_grpc
from tests.conftest import END_MS, LAMBDA_CUTOFF_MS, make_config, online_store_config
from tests.oracle import late_flags, log_records, master_events, window_features

pytestmark = pytest.mark.slow
HOUR = 3_600_000


def served_truth(config: SaikiConfig, cutoff_ms: int) -> pd.DataFrame:
    """Master events minus those the speed layer leaves to the next batch run."""
    events = master_events(config)
    records = log_records(config)
    late_ids = set(records.loc[late_flags(records, 300_000), "event_id"])
    left = events["event_id"].isin(late_ids) & (events["event_time"] >= cutoff_ms)
    return events[~left]


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def server(
    request: pytest.FixtureRequest,
    lambda_env: SaikiConfig,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RunningServer]:
    """A server on the lambda environment's SQLite online store, and one on a copy whose
    online store is Redis (the speed rows written there by the speed layer's writer):
    every exactness test below runs on both."""
    config = lambda_env
    if request.param == "redis":
        root = tmp_path_factory.mktemp("on-redis") / "data"
        shutil.copytree(lambda_env.data_dir, root, ignore=shutil.ignore_patterns("feast"))
        config = online_store_config(root, "redis", request.getfixturevalue("redis_server"))
        writer = FeastSpeedWriter(config)
        for entity in ("user", "item"):
            rows = SqliteOnlineReader(lambda_env).read_speed(entity, None)
            writer.write(entity, list(rows.values()))
    running = start_server(config, host="127.0.0.1", port=0)
    yield running
    running.stop(0)


@pytest.fixture(scope="module")
def stub(server: RunningServer) -> Iterator[features_pb2_grpc.FeatureServiceStub]:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield features_pb2_grpc.FeatureServiceStub(channel)


def stamp(ms: int) -> Timestamp:
    value = Timestamp()
    value.FromMilliseconds(ms)
    return value


def sample_ids(events: pd.DataFrame, key: str, count: int) -> list[str]:
    ids = sorted(events[key].unique())
    return [str(i) for i in np.random.default_rng(5).choice(ids, count, replace=False)]


def test_every_served_value_equals_the_recomputation_after_the_cutoff(
    lambda_env: SaikiConfig, stub: features_pb2_grpc.FeatureServiceStub
) -> None:
    truth = served_truth(lambda_env, LAMBDA_CUTOFF_MS)
    rng = np.random.default_rng(8)
    for entity, key in (("user", "user_id"), ("item", "item_id")):
        ids = sample_ids(truth, key, 25)
        for _ in range(6):
            as_of = LAMBDA_CUTOFF_MS + int(rng.integers(0, 40 * HOUR))
            response = stub.GetFeatures(
                features_pb2.GetFeaturesRequest(entity=entity, ids=ids, as_of=stamp(as_of))
            )
            assert response.batch_cutoff.ToMilliseconds() == LAMBDA_CUTOFF_MS
            q = -(-as_of // 60_000) * 60_000  # ceil_minute: the speed layer keeps minutes
            assert [e.id for e in response.entities] == ids
            for served in response.entities:
                expected = window_features(truth, key, served.id, q)
                assert dict(served.values) == pytest.approx(expected, rel=1e-12), (served.id, q)


def test_now_queries_and_unknown_ids(
    lambda_env: SaikiConfig, stub: features_pb2_grpc.FeatureServiceStub
) -> None:
    truth = served_truth(lambda_env, LAMBDA_CUTOFF_MS)
    ids = [*sample_ids(truth, "item_id", 5), "never-seen-item"]
    response = stub.GetFeatures(features_pb2.GetFeaturesRequest(entity="item", ids=ids))
    assert response.speed_watermark.ToMilliseconds() > LAMBDA_CUTOFF_MS
    now = now_ms()
    for served in response.entities:
        # q = now: the traffic ended hours ago, so a few seconds either way change nothing.
        expected = window_features(truth, "item_id", served.id, now)
        assert dict(served.values) == pytest.approx(expected)
    assert dict(response.entities[-1].values)["ctr_7d"] == pytest.approx(1 / 20)
    assert set(response.entities[0].values) == set(FEATURE_NAMES)


@pytest.mark.parametrize(
    ("request_fields", "code", "field"),
    [
        ({"entity": "shop", "ids": ["x"]}, grpc.StatusCode.INVALID_ARGUMENT, "entity"),
        ({"entity": "user", "ids": []}, grpc.StatusCode.INVALID_ARGUMENT, "ids"),
        ({"entity": "user", "ids": ["u"] * 100_000}, grpc.StatusCode.INVALID_ARGUMENT, "ids"),
        ({"entity": "user", "ids": ["u1", ""]}, grpc.StatusCode.INVALID_ARGUMENT, "ids[1]"),
        (
            {"entity": "user", "ids": ["u1"], "as_of": Timestamp(seconds=1, nanos=-5)},
            grpc.StatusCode.INVALID_ARGUMENT,
            "as_of",
        ),
        (
            {"entity": "user", "ids": ["u1"], "as_of": Timestamp(seconds=12)},
            grpc.StatusCode.INVALID_ARGUMENT,
            "as_of",
        ),
        (
            {"entity": "user", "ids": ["u1"], "as_of": stamp(LAMBDA_CUTOFF_MS - HOUR)},
            grpc.StatusCode.FAILED_PRECONDITION,
            "as_of",
        ),
    ],
)
def test_bad_requests_get_a_status_naming_the_field(
    stub: features_pb2_grpc.FeatureServiceStub,
    request_fields: dict[str, object],
    code: grpc.StatusCode,
    field: str,
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        stub.GetFeatures(features_pb2.GetFeaturesRequest(**request_fields))  # type: ignore[arg-type]
    assert caught.value.code() == code
    assert caught.value.details().startswith(field)


@pytest.fixture
def handoff_copy(lambda_env: SaikiConfig, tmp_path: Path) -> SaikiConfig:
    root = tmp_path / "data"
    shutil.copytree(lambda_env.data_dir, root)
    return make_config(root)


def test_a_later_batch_run_takes_over_and_heals_what_the_speed_layer_left(
    handoff_copy: SaikiConfig,
) -> None:
    config = handoff_copy
    # Never reloads the view on its own during the test: only a speed row can switch it.
    merger = FeatureMerger(
        ViewCatalog(config.data_dir), SqliteOnlineReader(config), reload_interval_ms=10**12
    )
    q = END_MS + HOUR
    ids = sample_ids(master_events(config), "item_id", 30)
    before = merger.features("item", ids, q)
    truth = served_truth(config, LAMBDA_CUTOFF_MS)
    for entity_id, row in zip(ids, before.values, strict=True):
        expected = window_features(truth, "item_id", entity_id, q)
        assert dict(zip(FEATURE_NAMES, row, strict=True)) == pytest.approx(expected)
    run_batch_view(config, BatchRunRequest(as_of_ms=END_MS))
    unchanged = merger.features("item", ids, q)
    assert unchanged.batch_cutoff_ms == LAMBDA_CUTOFF_MS  # nothing told it of the new view
    # The speed layer, handing off, repacks a row with tiles from the new cutoff only: a
    # row the old view cannot be merged with, so the merger must switch views first.
    handed_off = SpeedRow(
        ids[0], pack_tiles(np.zeros(0, np.int64), np.zeros((0, WIDTH - 1), np.int64)), END_MS, 0
    )
    FeastSpeedWriter(config).write("item", [handed_off])
    after = merger.features("item", ids, q)
    assert after.batch_cutoff_ms == END_MS
    everything = master_events(config)
    healed = 0
    for entity_id, old, new in zip(ids, before.values, after.values, strict=True):
        expected = window_features(everything, "item_id", entity_id, q)
        assert dict(zip(FEATURE_NAMES, new, strict=True)) == pytest.approx(expected)
        healed += int(not np.allclose(old, new))
    assert healed > 0  # some late events came back with the batch run


def test_queries_across_a_publish_see_the_old_or_the_new_view_never_a_mix(
    handoff_copy: SaikiConfig,
) -> None:
    config = handoff_copy
    running = start_server(config, host="127.0.0.1", port=0)
    q = END_MS + 2 * HOUR
    ids = sample_ids(master_events(config), "user_id", 40)
    old_truth = served_truth(config, LAMBDA_CUTOFF_MS)
    everything = master_events(config)
    expected = {
        LAMBDA_CUTOFF_MS: {i: window_features(old_truth, "user_id", i, q) for i in ids},
        END_MS: {i: window_features(everything, "user_id", i, q) for i in ids},
    }
    answers: list[features_pb2.GetFeaturesResponse] = []
    stop = threading.Event()

    def query() -> None:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            client = features_pb2_grpc.FeatureServiceStub(channel)
            while not stop.is_set():
                answers.append(
                    client.GetFeatures(
                        features_pb2.GetFeaturesRequest(entity="user", ids=ids, as_of=stamp(q))
                    )
                )

    worker = threading.Thread(target=query)
    worker.start()
    try:
        run_batch_view(config, BatchRunRequest(as_of_ms=END_MS))
        deadline = threading.Event()
        deadline.wait(1.5)  # let the server notice the new view
    finally:
        stop.set()
        worker.join(30)
        running.stop(0)
    cutoffs = [a.batch_cutoff.ToMilliseconds() for a in answers]
    assert cutoffs[0] == LAMBDA_CUTOFF_MS and cutoffs[-1] == END_MS and len(answers) > 20
    for answer in answers:
        truth = expected[answer.batch_cutoff.ToMilliseconds()]
        for served in answer.entities:
            assert dict(served.values) == pytest.approx(truth[served.id]), served.id
