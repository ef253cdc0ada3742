"""The ranking model: it learns the hidden tastes, survives quantisation, and the registry
keeps its artifacts honest."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from saiki.core.config import SaikiConfig
from saiki.core.errors import ArtifactError
from saiki.serving.experiment import Experiment, Variant
from saiki.serving.model import DENSE_COLUMNS
from saiki.serving.registry import ARCHIVED, PRODUCTION, ModelRegistry

pytestmark = pytest.mark.slow


def metrics(config: SaikiConfig) -> dict[str, dict[str, float]]:
    return ModelRegistry(config.data_dir).get(1).metrics  # type: ignore[return-value]


def test_the_model_beats_both_baselines_on_the_held_out_days(
    trained: tuple[SaikiConfig, Path],
) -> None:
    m = metrics(trained[0])
    assert m["fp32"]["auc"] > m["baseline_item_ctr"]["auc"] + 0.08
    assert m["fp32"]["auc"] > m["baseline_logistic"]["auc"] + 0.05
    assert m["fp32"]["log_loss"] < m["baseline_item_ctr"]["log_loss"]
    assert m["rows_holdout"] > 5_000  # a whole held-out day, not a handful


def test_the_quantised_model_keeps_its_auc_and_is_smaller(
    trained: tuple[SaikiConfig, Path],
) -> None:
    registry = ModelRegistry(trained[0].data_dir)
    m = metrics(trained[0])
    assert abs(m["int8"]["auc"] - m["fp32"]["auc"]) <= 0.005
    artifacts = registry.get(1).artifacts
    assert artifacts["int8"]["bytes"] * 2 < artifacts["fp32"]["bytes"]
    # Its speed against fp32 is a figure of benchmarks/bench_predict.py, not a test.


def test_versions_are_immutable_and_stages_move_and_roll_back(
    trained: tuple[SaikiConfig, Path], tmp_path: Path
) -> None:
    root = tmp_path / "data"
    shutil.copytree(trained[0].data_dir / "models", root / "models")
    registry = ModelRegistry(root)
    first = registry.get(1)
    model, config = registry.load(1, "fp32")
    from saiki.serving.model import RankingModel

    fresh = RankingModel(config)
    second = registry.register(fresh, _quantised(fresh), config, {"note": "test"}, first.metrics)
    assert second.version == 2 and registry.stage_of(2) == "candidate"
    assert (root / "models" / "v0001" / "meta.json").read_text()  # untouched
    assert registry.promote(2) == 1
    assert (registry.production(), registry.stage_of(1)) == (2, ARCHIVED)
    assert registry.rollback() == 1
    assert (registry.production(), registry.stage_of(1), registry.stage_of(2)) == (
        1,
        PRODUCTION,
        ARCHIVED,
    )
    assert model is not None


def _quantised(model: object) -> object:
    from saiki.serving.model import quantise

    return quantise(model)  # type: ignore[arg-type]


def test_a_tampered_artifact_is_refused(trained: tuple[SaikiConfig, Path], tmp_path: Path) -> None:
    root = tmp_path / "data"
    shutil.copytree(trained[0].data_dir / "models", root / "models")
    registry = ModelRegistry(root)
    registry.load(1, "int8")
    artifact = root / "models" / "v0001" / "int8.pt"
    data = bytearray(artifact.read_bytes())
    data[len(data) // 2] ^= 0xFF
    artifact.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="checksum"):
        registry.load(1, "int8")
    (root / "models" / "v0001" / "fp32.pt").write_bytes(b"not a model")
    with pytest.raises(ArtifactError):
        registry.load(1, "fp32")


def test_ab_assignment_is_stable_and_follows_the_shares() -> None:
    experiment = Experiment("t", (Variant("a", 1, 0.2), Variant("b", 2, 0.3), Variant("c", 3, 0.5)))
    users = [f"user-{n}" for n in range(30_000)]
    counts = {"a": 0, "b": 0, "c": 0}
    for user in users:
        counts[experiment.assign(user).name] += 1
    for name, share in (("a", 0.2), ("b", 0.3), ("c", 0.5)):
        assert abs(counts[name] / len(users) - share) < 0.015
    again = Experiment("t", experiment.variants)
    assert all(experiment.assign(u) == again.assign(u) for u in users[:1000])
    other = Experiment("u", experiment.variants)  # another experiment reshuffles users
    assert sum(experiment.assign(u) != other.assign(u) for u in users[:1000]) > 300


def test_bad_experiments_are_refused() -> None:
    from saiki.core.errors import ConfigError

    with pytest.raises(ConfigError, match="add up to 1"):
        Experiment("x", (Variant("a", 1, 0.5), Variant("b", 2, 0.4)))
    with pytest.raises(ConfigError, match="differ"):
        Experiment("x", (Variant("a", 1, 0.5), Variant("a", 2, 0.5)))


@pytest.mark.parametrize("device", ["ios", None])
def test_one_requests_inputs_equal_the_per_row_inputs(device: str | None) -> None:
    import numpy as np

    from saiki.serving.model import ModelConfig, model_inputs, request_inputs

    config = ModelConfig()
    rng = np.random.default_rng(3)
    items = [f"i{n}" for n in range(40)]
    dense = rng.random((40, len(DENSE_COLUMNS))) * 50
    once = request_inputs(config, dense, "u7", items, device)
    per_row = model_inputs(config, dense, ["u7"] * 40, items, [device] * 40)
    for a, b in zip(once, per_row, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape and bool((a == b).all())
