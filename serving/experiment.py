"""A/B routing: variants map to model versions with traffic shares; users by stable hash.

``<data>/models/experiment.json``::

    {"name": "v2-vs-v1", "variants": [
        {"name": "control", "version": 1, "share": 0.5},
        {"name": "treatment", "version": 2, "share": 0.5}]}

``version`` may be ``null``: whatever is in production. A user's bucket is
``crc32(experiment name + user_id) mod 10000``, the same in every process, so a user
stays in one variant for the life of an experiment. Without an experiment file every
request is served by production under the variant name ``production``.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

from saiki.core.errors import ConfigError
from saiki.core.files import atomic_write

_BUCKETS = 10_000
FILE = "experiment.json"


@dataclass(frozen=True)
class Variant:
    """One arm: a name, the model version it serves (None: production), its share."""

    name: str
    version: int | None
    share: float


@dataclass(frozen=True)
class Experiment:
    """Variants whose shares add up to 1."""

    name: str
    variants: tuple[Variant, ...]

    def __post_init__(self) -> None:
        if not self.variants:
            raise ConfigError(f"experiment {self.name!r} has no variants")
        if any(v.share < 0 for v in self.variants):
            raise ConfigError(f"experiment {self.name!r}: shares must be non-negative")
        if abs(sum(v.share for v in self.variants) - 1.0) > 1e-6:
            raise ConfigError(f"experiment {self.name!r}: shares must add up to 1")
        if len({v.name for v in self.variants}) != len(self.variants):
            raise ConfigError(f"experiment {self.name!r}: variant names must differ")

    def assign(self, user_id: str) -> Variant:
        """The variant a user is in (stable across processes and restarts)."""
        point = zlib.crc32(f"{self.name}\x1f{user_id}".encode()) % _BUCKETS
        edge = 0.0
        for variant in self.variants:
            edge += variant.share * _BUCKETS
            if point < edge:
                return variant
        return self.variants[-1]


PRODUCTION_ONLY = Experiment("production", (Variant("production", None, 1.0),))


def load_experiment(models_root: Path) -> Experiment:
    """The configured experiment, or production only."""
    try:
        document = json.loads((models_root / FILE).read_text())
    except FileNotFoundError:
        return PRODUCTION_ONLY
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{models_root / FILE}: not valid JSON: {exc}") from exc
    try:
        variants = tuple(
            Variant(str(v["name"]), v.get("version"), float(v["share"]))
            for v in document["variants"]
        )
        return Experiment(str(document["name"]), variants)
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{models_root / FILE}: {exc!r}") from exc


def write_experiment(models_root: Path, experiment: Experiment | None) -> None:
    """Start (or, with None, end) an experiment; servers pick it up within a second."""
    models_root.mkdir(parents=True, exist_ok=True)
    if experiment is None:
        (models_root / FILE).unlink(missing_ok=True)
        return
    document = {"name": experiment.name, "variants": [asdict(v) for v in experiment.variants]}
    atomic_write(models_root / FILE, json.dumps(document, indent=2))
