"""PredictionService.Predict over real gRPC: ranking, validation, deadlines, hot reload,
A/B routing."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch

from saiki.core.config import SaikiConfig
from saiki.feature_repo.spec import FEATURE_NAMES, SPEC_VERSION
from saiki.serving.experiment import Experiment, Variant, write_experiment
from saiki.serving.model import ModelConfig, RankingModel, model_inputs, quantise
from saiki.serving.monitor import read_predictions
from saiki.serving.registry import ModelRegistry
from saiki.serving.server import RunningServer, start_server
from saiki.serving.training import TARGET_PRECISION, operating_threshold
from saiki.v1 import features_pb2, features_pb2_grpc, prediction_pb2, prediction_pb2_grpc
from tests.conftest import make_config, run_saiki

pytestmark = pytest.mark.slow
ITEMS = [f"i{n}" for n in range(100)]


@pytest.fixture
def served(
    trained: tuple[SaikiConfig, Path], tmp_path: Path
) -> Iterator[tuple[SaikiConfig, RunningServer, prediction_pb2_grpc.PredictionServiceStub]]:
    root = tmp_path / "data"
    shutil.copytree(trained[0].data_dir, root)
    config = make_config(root)
    running = start_server(config, host="127.0.0.1", port=0)
    with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        yield config, running, prediction_pb2_grpc.PredictionServiceStub(channel)
    running.stop(0)


def register_untrained(config: SaikiConfig) -> int:
    model = RankingModel(ModelConfig()).eval()
    registry = ModelRegistry.open(config)
    metrics = registry.get(1).metrics
    return registry.register(
        model, quantise(model), ModelConfig(), {"note": "test"}, metrics
    ).version


def test_predict_ranks_every_candidate_by_click_probability(
    served: tuple[SaikiConfig, RunningServer, prediction_pb2_grpc.PredictionServiceStub],
) -> None:
    _, _, stub = served
    response = stub.Predict(
        prediction_pb2.PredictRequest(
            user_id="u7", item_ids=[*ITEMS, "never-seen"], device_id="ios", request_id="req-1"
        )
    )
    scores = [i.score for i in response.items]
    assert response.request_id == "req-1"
    assert (response.model_version, response.variant) == ("v1", "production")
    assert sorted(i.item_id for i in response.items) == sorted([*ITEMS, "never-seen"])
    assert scores == sorted(scores, reverse=True)
    assert all(0.0 < s < 1.0 for s in scores) and scores[0] > scores[-1]
    generated = stub.Predict(prediction_pb2.PredictRequest(user_id="u7", item_ids=ITEMS[:3]))
    assert len(generated.request_id) == 32


def test_the_log_holds_every_ranked_item_and_the_features_getfeatures_serves(
    served: tuple[SaikiConfig, RunningServer, prediction_pb2_grpc.PredictionServiceStub],
) -> None:
    config, running, stub = served
    candidates = ITEMS[:40]
    response = stub.Predict(
        prediction_pb2.PredictRequest(
            user_id="u7", item_ids=candidates, device_id="ios", request_id="logged-1"
        )
    )
    with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        features = features_pb2_grpc.FeatureServiceStub(channel)
        users = features.GetFeatures(features_pb2.GetFeaturesRequest(entity="user", ids=["u7"]))
        items = features.GetFeatures(features_pb2.GetFeaturesRequest(entity="item", ids=candidates))
    deadline = time.monotonic() + 10
    while not (
        found := [
            r
            for r in read_predictions(config.data_dir / "serving", 0)
            if r["request_id"] == "logged-1"
        ]
    ):
        assert time.monotonic() < deadline, "the answer never reached the log"
        time.sleep(0.05)
    (record,) = found
    assert record["items"] == [i.item_id for i in response.items]
    assert record["scores"] == pytest.approx([i.score for i in response.items], abs=1e-6)
    assert (record["device_id"], record["candidates"]) == ("ios", 40)
    assert record["feature_spec"] == SPEC_VERSION
    user_values = dict(users.entities[0].values)
    logged_user = record["user_features"]
    assert logged_user == [user_values[f] for f in FEATURE_NAMES]  # exact: float64 bytes
    by_item = {e.id: dict(e.values) for e in items.entities}
    logged_items = record["item_features"]
    for item, logged in zip(record["items"], logged_items, strict=True):
        assert logged == [by_item[item][f] for f in FEATURE_NAMES], item


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"user_id": "", "item_ids": ["i1"]}, "user_id"),
        ({"user_id": "u1", "item_ids": []}, "item_ids"),
        ({"user_id": "u1", "item_ids": [f"i{n}" for n in range(1001)]}, "item_ids"),
        ({"user_id": "u1", "item_ids": ["i1", "", "i2"]}, "item_ids[1]"),
        ({"user_id": "u" * 129, "item_ids": ["i1"]}, "user_id"),
        ({"user_id": "u1", "item_ids": ["i1"], "device_id": "d" * 200}, "device_id"),
    ],
)
def test_bad_requests_name_the_field(
    served: tuple[SaikiConfig, RunningServer, prediction_pb2_grpc.PredictionServiceStub],
    fields: dict[str, object],
    field: str,
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        served[2].Predict(prediction_pb2.PredictRequest(**fields))  # type: ignore[arg-type]
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith(field)


def test_promotion_is_picked_up_under_load_without_a_failed_request(
    served: tuple[SaikiConfig, RunningServer, prediction_pb2_grpc.PredictionServiceStub],
) -> None:
    config, _, stub = served
    versions: list[str] = []
    errors: list[Exception] = []
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            try:
                reply = stub.Predict(
                    prediction_pb2.PredictRequest(user_id="u3", item_ids=ITEMS), timeout=5
                )
                versions.append(reply.model_version)
            except grpc.RpcError as exc:
                errors.append(exc)

    worker = threading.Thread(target=client)
    worker.start()
    try:
        time.sleep(0.5)
        version = register_untrained(config)
        ModelRegistry(config.data_dir).promote(version)
        promoted_at = time.monotonic()
        while f"v{version}" not in versions[-5:] and time.monotonic() - promoted_at < 10:
            time.sleep(0.05)
        switch = time.monotonic() - promoted_at
        time.sleep(0.5)
    finally:
        stop.set()
        worker.join(30)
    assert not errors
    assert versions[0] == "v1" and versions[-1] == f"v{version}"
    assert switch < 5
    first_new = versions.index(f"v{version}")
    assert set(versions[first_new:]) == {f"v{version}"}  # no flapping back


def test_a_corrupt_version_is_refused_and_serving_goes_on(
    served: tuple[SaikiConfig, RunningServer, prediction_pb2_grpc.PredictionServiceStub],
) -> None:
    config, running, stub = served
    version = register_untrained(config)
    artifact = config.data_dir / "models" / f"v{version:04d}" / "int8.pt"
    artifact.write_bytes(artifact.read_bytes()[:-100])
    ModelRegistry(config.data_dir).promote(version)  # bypassing the CLI's check
    running.predictor.refresh(wait=True)
    reply = stub.Predict(prediction_pb2.PredictRequest(user_id="u3", item_ids=ITEMS))
    assert reply.model_version == "v1"
    assert "checksum" in (running.predictor.last_error or "")


def test_ab_variants_follow_the_experiment(
    served: tuple[SaikiConfig, RunningServer, prediction_pb2_grpc.PredictionServiceStub],
) -> None:
    config, running, stub = served
    version = register_untrained(config)
    experiment = Experiment(
        "ab-test", (Variant("control", 1, 0.5), Variant("treatment", version, 0.5))
    )
    write_experiment(config.data_dir / "models", experiment)
    running.predictor.refresh(wait=True)
    seen = {"control": 0, "treatment": 0}
    for n in range(400):
        user = f"u{n}"
        reply = stub.Predict(prediction_pb2.PredictRequest(user_id=user, item_ids=ITEMS[:5]))
        expected = experiment.assign(user)
        assert reply.variant == expected.name
        assert reply.model_version == f"v{expected.version}"
        seen[reply.variant] += 1
    assert 150 < seen["control"] < 250
    deadline = time.monotonic() + 10  # the log is written off the response path
    while len(logged := read_predictions(config.data_dir / "serving", 0)) < 400:
        assert time.monotonic() < deadline, f"{len(logged)} of 400 answers logged"
        time.sleep(0.05)
    by_request = {r["request_id"]: r["variant"] for r in logged}
    assert len(by_request) >= 400 and {"control", "treatment"} <= set(by_request.values())


def test_a_shadow_model_never_changes_an_answer_and_its_scores_are_logged(
    served: tuple[SaikiConfig, RunningServer, prediction_pb2_grpc.PredictionServiceStub],
) -> None:
    config, running, stub = served
    version = register_untrained(config)
    requests = [
        prediction_pb2.PredictRequest(user_id=f"u{n}", item_ids=ITEMS[:30], device_id="ios")
        for n in range(20)
    ]
    before = [stub.Predict(r) for r in requests]
    assert "staged in shadow" in run_saiki(config, "models", "stage", str(version))
    running.predictor.refresh(wait=True)
    assert running.predictor.models.shadow is not None
    for n, request in enumerate(requests):
        request.request_id = f"shadowed-{n}"
    after = [stub.Predict(r) for r in requests]
    for plain, shadowed in zip(before, after, strict=True):
        assert [(i.item_id, i.score) for i in shadowed.items] == [
            (i.item_id, i.score) for i in plain.items
        ]
        assert (shadowed.model_version, shadowed.variant) == ("v1", "production")
        assert shadowed.threshold == plain.threshold

    deadline = time.monotonic() + 10  # the shadow scores on the log's writer thread
    while len(
        logged := [
            r
            for r in read_predictions(config.data_dir / "serving", 0)
            if r["request_id"].startswith("shadowed-")
        ]
    ) < len(requests):
        assert time.monotonic() < deadline, f"{len(logged)} shadowed answers logged"
        time.sleep(0.05)
    model, model_config = ModelRegistry(config.data_dir).load(version, "int8")
    for record in logged:
        assert record["shadow_version"] == f"v{version}" and record["shadow_ms"] > 0
        # The shadow's scores are its own model's on the very features that were served.
        user = record["user_features"]
        items = np.array(record["item_features"])
        count = len(record["items"])
        dense = np.hstack([np.repeat(np.array([user]), count, axis=0), items])
        inputs = model_inputs(
            model_config, dense, [record["user_id"]] * count, record["items"], ["ios"] * count
        )
        with torch.no_grad():
            expected = model(*inputs).numpy().astype(np.float64)
        assert record["shadow_scores"] == pytest.approx(expected.tolist(), abs=1e-6)
        assert record["shadow_scores"] != pytest.approx(record["scores"], abs=1e-3)
    report = run_saiki(config, "models", "compare")
    assert f"shadow v{version} against v1 on {len(requests)} requests" in report
    assert "no shown item has a label yet" in report


def test_thresholds_travel_with_their_model_and_roll_back_with_it(
    served: tuple[SaikiConfig, RunningServer, prediction_pb2_grpc.PredictionServiceStub],
) -> None:
    config, running, stub = served
    registry = ModelRegistry(config.data_dir)
    chosen = registry.get(1).metrics["threshold"]
    assert 0 < chosen["min_score"] < 1 and chosen["target_precision"] == TARGET_PRECISION
    request = prediction_pb2.PredictRequest(user_id="u7", item_ids=ITEMS)
    everything = stub.Predict(request)
    assert len(everything.items) == len(ITEMS)  # not asked: nothing left out
    assert everything.threshold == pytest.approx(chosen["min_score"])
    request.apply_threshold = True
    shown = stub.Predict(request)
    expected = [i.item_id for i in everything.items if i.score >= chosen["min_score"]]
    assert [i.item_id for i in shown.items] == expected
    assert shown.threshold == pytest.approx(chosen["min_score"])

    # A new version carries its own threshold, chosen on its own held-out rows.
    model = RankingModel(ModelConfig()).eval()
    metrics = {**registry.get(1).metrics, "threshold": {**chosen, "min_score": 0.999}}
    v2 = registry.register(model, quantise(model), ModelConfig(), {"note": "test"}, metrics)
    registry.promote(v2.version)
    running.predictor.refresh(wait=True)
    assert stub.Predict(request).threshold == pytest.approx(0.999)
    registry.rollback()
    running.predictor.refresh(wait=True)
    back = stub.Predict(request)
    assert (back.model_version, back.threshold) == ("v1", pytest.approx(chosen["min_score"]))


def test_the_operating_threshold_meets_its_precision_on_the_rows_it_was_chosen_on() -> None:
    rng = np.random.default_rng(5)
    scores = rng.random(5_000)
    labels = (rng.random(5_000) < scores).astype(np.float64)  # calibrated scores
    chosen = operating_threshold(labels, scores, 0.8)
    shown = scores >= chosen["min_score"]
    assert labels[shown].mean() >= 0.8
    assert chosen["precision"] == pytest.approx(labels[shown].mean())
    lower = scores >= chosen["min_score"] - 0.05  # any lower threshold misses the target
    assert labels[lower].mean() < 0.8 or lower.sum() == shown.sum()


def test_models_list_shows_each_versions_threshold(
    served: tuple[SaikiConfig, RunningServer, prediction_pb2_grpc.PredictionServiceStub],
) -> None:
    config = served[0]
    chosen = ModelRegistry(config.data_dir).get(1).metrics["threshold"]
    listed = run_saiki(config, "models", "list")
    assert f"{chosen['min_score']:.3f} (precision {chosen['precision']:.2f}" in listed
