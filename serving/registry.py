"""The model registry: immutable, numbered versions with lineage, metrics and checksums.

Layout under ``<data>/models/``::

    v0003/meta.json      lineage (training set: snapshot, range, spec), metrics, config,
                         artifacts with their sha256
    v0003/fp32.pt        state_dict, loaded with torch.load(weights_only=True)
    v0003/int8.pt        the quantised model as a TorchScript archive (no pickle)
    registry.json        stages: which version is in production, and its predecessors;
                         the version staged in shadow, if any (``saiki models stage V``)
    experiment.json      optional A/B split (see serving/experiment.py)

A version folder is written under a hidden name and renamed into place; nothing in it is
ever rewritten. Stages change by rewriting ``registry.json`` atomically under a lock.
Loading verifies the checksum first: a tampered or truncated artifact is refused
(:class:`~core.errors.ArtifactError`) and a server keeps the model it has.

Shared by replicas (``[models] artifacts = "s3://bucket/prefix"``): the version folders
live in object storage, ``meta.json`` written last (a folder without it is not a
version yet); the stages live in a SQL database (``[models] metadata``, see
:mod:`core.documents`), and each machine keeps verified copies of the artifacts
it loads under ``<data>/models/cache/``.

Reading the stages and the versions' metadata imports neither torch nor numpy (they are
imported by ``register`` and ``load``): ``saiki up``'s scheduler reads the registry for
its retrain policy and stays a process of a few tens of MB.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from saiki.core.documents import Document, FileDocument, SqlDocument
from saiki.core.errors import ArtifactError, ConfigError, NotFoundError, PreconditionError
from saiki.core.objectstore import open_folder
from saiki.core.timeutil import now_ms

if TYPE_CHECKING:
    from saiki.core.config import SaikiConfig
    from saiki.serving.model import ModelConfig, RankingModel

CANDIDATE, PRODUCTION, ARCHIVED, SHADOW = "candidate", "production", "archived", "shadow"
PRECISIONS = ("int8", "fp32")
# The stages document: registry.json beside local artifacts, or a row of this table.
STAGES_FILE = "registry.json"
STAGES_TABLE = "saiki_model_registry"


def empty_stages() -> dict[str, Any]:
    """The stages document of a registry with nothing registered."""
    return {"production": None, "history": [], "stages": {}}


@dataclass(frozen=True)
class Shadow:
    """The version staged in shadow: servers also score a ``share`` of requests with it,
    off the response path, and log its scores beside production's."""

    version: int
    share: float
    since_ms: int

    @property
    def name(self) -> str:
        """``v3``."""
        return f"v{self.version}"


@dataclass(frozen=True)
class ModelVersion:
    """One registered version, as ``meta.json`` describes it."""

    version: int
    created_ms: int
    spec_version: str
    lineage: dict[str, Any]
    metrics: dict[str, Any]
    config: dict[str, int]
    artifacts: dict[str, dict[str, Any]]

    @property
    def name(self) -> str:
        """``v3``."""
        return f"v{self.version}"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class ModelRegistry:
    """Versions, stages and verified loading."""

    def __init__(
        self,
        data_dir: Path,
        artifacts: str = "",
        metadata: str = "",
        properties: Mapping[str, str] | None = None,
    ) -> None:
        self.root = data_dir / "models"  # experiment.json, the local lock and cache
        self._artifacts = open_folder(artifacts or str(self.root), properties)
        if self._artifacts.remote and not metadata:
            raise ConfigError(
                "[models] artifacts on object storage needs [models] metadata (a SQL URL, "
                "e.g. PostgreSQL): object storage has no lock to change stages under"
            )
        self._store: Document = (
            SqlDocument(metadata, STAGES_TABLE, "models", empty_stages())
            if metadata
            else FileDocument(self.root / STAGES_FILE, self.root / ".lock", empty_stages())
        )

    @classmethod
    def open(cls, config: SaikiConfig) -> ModelRegistry:
        """The registry ``config`` names (``[models] artifacts`` and ``metadata``)."""
        return cls(
            config.data_dir,
            config.models.artifacts,
            config.models.metadata,
            config.catalog.properties,
        )

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with self._store.locked():
            yield

    def _stages(self) -> dict[str, Any]:
        return self._store.read()

    def _write_stages(self, stages: dict[str, Any]) -> None:
        self._store.write(stages)

    def stamp(self) -> float:
        """Changes whenever the stages do (servers poll it to pick up a promotion)."""
        return self._store.stamp()

    def versions(self) -> list[ModelVersion]:
        """Every registered version, oldest first."""
        found = []
        for name in self._artifacts.folders():
            if len(name) > 1 and name[0] == "v" and name[1:].isdigit():
                meta = self._artifacts.read_bytes(name, "meta.json")
                if meta is not None:  # no meta.json: a version still being written
                    found.append(ModelVersion(**json.loads(meta)))
        return found

    def get(self, version: int) -> ModelVersion:
        """One version's metadata."""
        meta = self._artifacts.read_bytes(f"v{version:04d}", "meta.json")
        if meta is None:
            raise NotFoundError(f"no model version v{version}")
        return ModelVersion(**json.loads(meta))

    def stage_of(self, version: int) -> str:
        """candidate, shadow, production or archived."""
        stages = self._stages()
        shadow = stages.get("shadow")
        if shadow is not None and int(shadow["version"]) == version:
            return SHADOW
        return str(stages["stages"].get(str(version), CANDIDATE))

    def shadow(self) -> Shadow | None:
        """The version staged in shadow, if any."""
        staged = self._stages().get("shadow")
        return Shadow(**staged) if staged else None

    def stage_shadow(self, version: int, share: float, since_ms: int) -> Shadow:
        """Stage a version in shadow (replacing any other); production is left as it is."""
        self.get(version)
        with self._locked():
            stages = self._stages()
            if stages["production"] == version:
                raise PreconditionError(f"v{version} is in production: nothing to shadow")
            staged = Shadow(version, share, since_ms)
            stages["shadow"] = staged.__dict__
            self._write_stages(stages)
            return staged

    def end_shadow(self) -> Shadow | None:
        """End the shadow stage; returns what was staged."""
        with self._locked():
            stages = self._stages()
            staged = stages.pop("shadow", None)
            self._write_stages(stages)
            return Shadow(**staged) if staged else None

    def production(self) -> int | None:
        """The version in production, if any."""
        value = self._stages()["production"]
        return int(value) if value is not None else None

    def register(
        self,
        model: RankingModel,
        quantised: Any,
        config: ModelConfig,
        lineage: dict[str, Any],
        metrics: dict[str, Any],
    ) -> ModelVersion:
        """Store a trained model (fp32 and int8) as the next version, a candidate."""
        import torch

        from saiki.feature_repo.spec import SPEC_VERSION

        with self._locked():
            existing = [v.version for v in self.versions()]
            version = max(existing, default=0) + 1
            self.root.mkdir(parents=True, exist_ok=True)
            staging = self.root / f".staging-v{version:04d}-{os.getpid()}"
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
            torch.save(model.state_dict(), staging / "fp32.pt")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch.jit deprecation (see serving/model.py)
                torch.jit.save(quantised, str(staging / "int8.pt"))
            artifacts = {
                precision: {
                    "file": f"{precision}.pt",
                    "sha256": _sha256(staging / f"{precision}.pt"),
                    "bytes": (staging / f"{precision}.pt").stat().st_size,
                }
                for precision in PRECISIONS
            }
            entry = ModelVersion(
                version=version,
                created_ms=now_ms(),
                spec_version=SPEC_VERSION,
                lineage=lineage,
                metrics=metrics,
                config=config.as_dict(),
                artifacts=artifacts,
            )
            (staging / "meta.json").write_text(json.dumps(entry.__dict__, indent=2))
            self._publish(staging, f"v{version:04d}")
            stages = self._stages()
            stages["stages"][str(version)] = CANDIDATE
            self._write_stages(stages)
            return entry

    def _publish(self, staging: Path, name: str) -> None:
        """Put a staged version folder in place: renamed locally; on object storage, its
        artifacts copied first and ``meta.json`` last (what makes it a version)."""
        if not self._artifacts.remote:
            os.rename(staging, Path(self._artifacts.path(name)))
            return
        try:
            for precision in PRECISIONS:
                self._artifacts.write_file(staging / f"{precision}.pt", name, f"{precision}.pt")
            self._artifacts.write_file(staging / "meta.json", name, "meta.json")
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _artifact_file(self, version: int, artifact: dict[str, Any]) -> Path:
        """A local path to a version's artifact: in place, or this machine's verified
        copy of the object store's (fetched again when missing or not matching)."""
        name = f"v{version:04d}"
        if not self._artifacts.remote:
            return Path(self._artifacts.path(name, artifact["file"]))
        cached: Path = self.root / "cache" / name / str(artifact["file"])
        if not cached.exists() or _sha256(cached) != artifact["sha256"]:
            self._artifacts.download(cached, name, artifact["file"])
        return cached

    def promote(self, version: int) -> int | None:
        """Make a version production; the previous one is archived. Returns the previous."""
        self.get(version)
        with self._locked():
            stages = self._stages()
            previous = stages["production"]
            if previous == version:
                return version
            if previous is not None:
                stages["stages"][str(previous)] = ARCHIVED
                stages["history"].append(previous)
            stages["production"] = version
            stages["stages"][str(version)] = PRODUCTION
            shadow = stages.get("shadow")
            if shadow is not None and int(shadow["version"]) == version:
                del stages["shadow"]  # released: it serves now, nothing left to shadow
            self._write_stages(stages)
            return int(previous) if previous is not None else None

    def previous(self) -> int | None:
        """The version production replaced last (what :meth:`rollback` restores)."""
        history = self._stages()["history"]
        return int(history[-1]) if history else None

    def rollback(self) -> int:
        """Put the previous production version back; returns it."""
        with self._locked():
            stages = self._stages()
            if not stages["history"]:
                raise NotFoundError("no earlier production version to roll back to")
            restored = stages["history"].pop()
            current = stages["production"]
            if current is not None:
                stages["stages"][str(current)] = ARCHIVED
            stages["production"] = restored
            stages["stages"][str(restored)] = PRODUCTION
            self._write_stages(stages)
            return int(restored)

    def load(self, version: int, precision: str = "int8") -> tuple[Any, ModelConfig]:
        """A servable model (scripted) and its config, after verifying its checksum."""
        from saiki.feature_repo.spec import SPEC_VERSION

        if precision not in PRECISIONS:
            raise ArtifactError(f"unknown precision {precision!r}: int8 or fp32")
        entry = self.get(version)
        artifact = entry.artifacts[precision]
        path = self._artifact_file(version, artifact)
        if not path.exists() or _sha256(path) != artifact["sha256"]:
            raise ArtifactError(f"model v{version} {precision} artifact fails its checksum")
        if entry.spec_version != SPEC_VERSION:
            raise ArtifactError(
                f"model v{version} was trained on feature spec {entry.spec_version}, "
                f"serving runs {SPEC_VERSION}"
            )
        import torch

        from saiki.serving.model import ModelConfig, RankingModel, script

        config = ModelConfig(**entry.config)
        try:
            if precision == "fp32":
                model = RankingModel(config)
                model.load_state_dict(torch.load(path, weights_only=True))
                return script(model), config
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return torch.jit.load(str(path)), config
        except (RuntimeError, ValueError, OSError) as exc:
            raise ArtifactError(f"model v{version} {precision} cannot be loaded: {exc}") from exc
