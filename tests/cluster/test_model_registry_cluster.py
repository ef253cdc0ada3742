"""The model registry shared by machines: versions in S3 object storage (SeaweedFS),
stages in PostgreSQL. Two registries on two data directories (two machines) see the same
versions and stages; registrations racing from both get distinct versions; a tampered
object is refused; object storage without a SQL store for the stages is a clear error."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch

from saiki.core.errors import ArtifactError, ConfigError
from saiki.core.objectstore import open_folder
from saiki.serving.model import ModelConfig, RankingModel, quantise
from saiki.serving.registry import ModelRegistry
from tests.cluster.conftest import ObjectStore

pytestmark = [pytest.mark.slow, pytest.mark.cluster]


def _machine(root: Path, url: str, postgres: str, store: ObjectStore) -> ModelRegistry:
    return ModelRegistry(root, url, postgres, store.properties)


def _model(seed: int) -> tuple[RankingModel, object]:
    """A model and its quantised form (built in one thread: TorchScript compiles)."""
    torch.manual_seed(seed)
    model = RankingModel(ModelConfig()).eval()
    return model, quantise(model)


def _register(registry: ModelRegistry, seed: int) -> int:
    model, quantised = _model(seed)
    return registry.register(model, quantised, ModelConfig(), {"seed": seed}, {}).version


def test_two_machines_share_versions_and_stages_through_s3_and_postgres(
    postgres: str, object_store: ObjectStore, tmp_path: Path
) -> None:
    url = f"s3://{object_store.lake}/models-{tmp_path.name}"
    first = _machine(tmp_path / "a", url, postgres, object_store)
    second = _machine(tmp_path / "b", url, postgres, object_store)
    assert first.versions() == [] and first.production() is None
    v1 = _register(first, 1)
    assert [v.version for v in second.versions()] == [v1]
    before = second.stamp()
    first.promote(v1)
    assert second.production() == v1 and second.stamp() != before
    # The second machine loads what the first registered: fetched, verified, cached.
    _, config = second.load(v1, "int8")
    assert config == ModelConfig()
    assert (tmp_path / "b" / "models" / "cache" / f"v{v1:04d}" / "int8.pt").exists()
    second.load(v1, "fp32")
    assert not (tmp_path / "a" / "models" / "registry.json").exists()  # stages in SQL

    # Registrations racing from both machines: one version each, none lost.
    made: list[int] = []
    errors: list[BaseException] = []
    models = [_model(n) for n in range(10, 14)]

    def register(registry: ModelRegistry, n: int) -> None:
        model, quantised = models[n]
        try:
            entry = registry.register(model, quantised, ModelConfig(), {"n": n}, {})
            made.append(entry.version)
        except BaseException as exc:  # reported below, with its cause
            errors.append(exc)

    threads = [
        threading.Thread(target=register, args=(r, n))
        for n, r in enumerate([first, second, first, second])
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors
    assert sorted(made) == [v1 + 1, v1 + 2, v1 + 3, v1 + 4]
    assert [v.version for v in first.versions()] == [v1, *sorted(made)]
    second.promote(made[0])
    assert first.production() == made[0] and first.previous() == v1
    assert first.rollback() == v1 and second.production() == v1

    # A tampered object in the store is refused, however it is fetched.
    folder = open_folder(url, object_store.properties)
    with folder.fs.open_output_stream(folder.path(f"v{made[1]:04d}", "int8.pt")) as out:
        out.write(b"not a model")
    with pytest.raises(ArtifactError, match="checksum"):
        second.load(made[1], "int8")


def test_object_storage_without_a_sql_store_for_the_stages_is_refused(
    object_store: ObjectStore, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match=r"\[models\] metadata"):
        ModelRegistry(tmp_path, f"s3://{object_store.lake}/m", "", object_store.properties)
