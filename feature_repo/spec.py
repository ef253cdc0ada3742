"""The one feature spec: entities, aggregations, windows and derived features.

Batch (Beam), speed (Flink) and serving all read this module, so adding a window or an
aggregation is one line here. Every aggregation is a *sum of per-event contributions*
(a count contributes 1), which makes partial aggregates plain vectors that add: a
per-minute tile, a batch view's collapsed window and a prefix sum are all the same kind
of value, and merging two of them is ``+``. ``feature_repo/tiles.py`` holds that
arithmetic; this module holds the definitions.

Window semantics (ARCHITECTURE.md): at query time q an event counts in window W iff
``floor_minute(q - W) <= event_time < q``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Entity:
    """Something features describe, keyed by a field of the event."""

    name: str
    key: str


@dataclass(frozen=True)
class Aggregation:
    """Sum over events of ``event_type`` of the field ``value`` (or of 1: a count)."""

    name: str
    event_type: str
    value: str | None = None


@dataclass(frozen=True)
class Window:
    """A look-back window, a whole number of minutes long."""

    name: str
    minutes: int

    @property
    def ms(self) -> int:
        """The window's length in milliseconds."""
        return self.minutes * 60_000


@dataclass(frozen=True)
class Derived:
    """A feature computed at read time from one window's aggregates."""

    name: str
    formula: str  # documentation and version hash; ``DERIVATIONS`` holds the code


ENTITIES: Final = (Entity("user", "user_id"), Entity("item", "item_id"))
AGGREGATIONS: Final = (
    Aggregation("impressions", "IMPRESSION"),
    Aggregation("clicks", "CLICK"),
    Aggregation("dwell_ms", "CLICK", "dwell_ms"),
)
WINDOWS: Final = (Window("1h", 60), Window("1d", 1440), Window("7d", 10080))
DERIVED: Final = (
    Derived("ctr", "(clicks + 1) / (impressions + 20)"),
    Derived("mean_dwell_ms", "dwell_ms / max(clicks, 1)"),
)

# The code of each derived feature, vectorised (works on numpy arrays and on floats).
DERIVATIONS: Final[Mapping[str, Callable[[Mapping[str, FloatArray]], FloatArray]]] = {
    "ctr": lambda s: (s["clicks"] + 1.0) / (s["impressions"] + 20.0),
    "mean_dwell_ms": lambda s: s["dwell_ms"] / np.maximum(s["clicks"], 1.0),
}

MAX_WINDOW: Final = max(WINDOWS, key=lambda w: w.minutes)
ENTITY_BY_NAME: Final = {e.name: e for e in ENTITIES}
AGGREGATION_NAMES: Final = tuple(a.name for a in AGGREGATIONS)


def feature_names() -> tuple[str, ...]:
    """Every online feature name, in a stable order: aggregates then derived, per window."""
    names = []
    for window in WINDOWS:
        names += [f"{a.name}_{window.name}" for a in AGGREGATIONS]
        names += [f"{d.name}_{window.name}" for d in DERIVED]
    return tuple(names)


def offline_column(entity: str, feature: str) -> str:
    """The column a feature has outside the online API: ``{entity}_{feature}``."""
    return f"{entity}_{feature}"


def _fingerprint() -> str:
    document = {
        "entities": [asdict(e) for e in ENTITIES],
        "aggregations": [asdict(a) for a in AGGREGATIONS],
        "windows": [asdict(w) for w in WINDOWS],
        "derived": [asdict(d) for d in DERIVED],
        "semantics": "floor_minute(q - W) <= event_time < q",
    }
    text = json.dumps(document, sort_keys=True).encode()
    return hashlib.sha256(text).hexdigest()[:12]


# Changes whenever any definition above changes; stamped on views, training sets, models.
SPEC_VERSION: Final = _fingerprint()
FEATURE_NAMES: Final = feature_names()
