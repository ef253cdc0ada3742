"""What ``saiki demo`` found, as one object: written by the demo, read by the report."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from saiki.core.files import atomic_write

SUMMARY_FILE = "summary.json"


def summary_path(data_dir: Path) -> Path:
    """Where the demo leaves its summary."""
    return data_dir / "demo" / SUMMARY_FILE


@dataclass(frozen=True)
class DemoSummary:
    """The demo's figures: models, live CTR, the A/B split, latency, freshness, checks."""

    versions: list[dict[str, Any]]
    v2: int
    v2_promoted: bool
    live_v1: dict[str, Any]
    ab: dict[str, dict[str, Any]]
    events_sent: int
    served_events_in_master: int
    served_events_distinct: int
    predict_ms: list[float]
    freshness_ms: list[float]
    request_errors: int
    consistency: dict[str, Any]
    monitor: dict[str, dict[str, Any]] = field(default_factory=dict)
    # v2 in shadow beside v1 (ops/shadow.ShadowReport.summary), and the verdict.
    shadow: dict[str, Any] = field(default_factory=dict)
    # Served feature values from the prediction log against their recomputation.
    log_consistency: dict[str, Any] = field(default_factory=dict)

    def save(self, data_dir: Path) -> Path:
        """Write the summary under the data dir; returns its path."""
        path = summary_path(data_dir)
        atomic_write(path, json.dumps(asdict(self)))
        return path

    @classmethod
    def load(cls, data_dir: Path) -> DemoSummary | None:
        """The last demo's summary, if a demo ran in this data dir."""
        try:
            return cls(**json.loads(summary_path(data_dir).read_text()))
        except FileNotFoundError:
            return None
