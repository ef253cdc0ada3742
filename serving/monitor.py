"""Drift and the retraining trigger (``saiki monitor``).

Two signals, over the last hour of serving:

* **feature drift**: the population stability index (PSI) of every model input between
  the production model's training set and what was served — the features of the users
  and items ranked in the last hour, merged now. PSI over 0.25 is drift.
* **live CTR against expectation**: the clicks the production model's rankings earned,
  against the clicks its own scores predicted for the items users were shown (the sum
  of their scores). Falling below 0.8 of expectation means the model's picture of the
  users is out of date. The items shown are the ones the model scored highest, so even
  a well-calibrated model over-promises on them a little (the winner's curse: in the
  quick demo a freshly trained model's ratio was 0.85); the limit leaves room for that.

A retrain is due when either fires; ``saiki monitor`` then exits non-zero, so that a
scheduler (cron, Airflow) can run ``saiki train --promote-if-better``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.parquet as pq

from saiki.core.eventlog import EventLog
from saiki.core.ingest import SEGMENT_ARROW_SCHEMA
from saiki.feature_repo.spec import FEATURE_NAMES
from saiki.serving.merge import FeatureMerger
from saiki.serving.model import DENSE_COLUMNS
from saiki.serving.registry import ModelRegistry

PSI_LIMIT = 0.25
CTR_RATIO_LIMIT = 0.8
MIN_IMPRESSIONS = 200


def psi(
    expected: npt.NDArray[np.float64], actual: npt.NDArray[np.float64], bins: int = 10
) -> float:
    """Population stability index of ``actual`` against ``expected`` (decile bins)."""
    if len(expected) == 0 or len(actual) == 0:
        return 0.0
    edges = np.unique(np.quantile(expected, np.linspace(0, 1, bins + 1)))
    if len(edges) < 3:  # (nearly) constant in training: compare the share off that value
        edges = np.array([-np.inf, edges[0] - 1e-9, edges[0] + 1e-9, np.inf])
    else:
        edges[0], edges[-1] = -np.inf, np.inf
    e = np.histogram(expected, edges)[0] / len(expected)
    a = np.histogram(actual, edges)[0] / len(actual)
    e, a = np.clip(e, 1e-4, None), np.clip(a, 1e-4, None)
    return float(np.sum((a - e) * np.log(a / e)))


@dataclass
class MonitorReport:
    """What ``saiki monitor`` found."""

    window_ms: tuple[int, int]
    production: int | None
    requests: int = 0
    psi: dict[str, float] = field(default_factory=dict)
    impressions: int = 0
    clicks: int = 0
    expected_clicks: float = 0.0

    @property
    def drifted(self) -> list[str]:
        """Features whose PSI exceeds the limit, worst first."""
        return sorted((f for f, v in self.psi.items() if v > PSI_LIMIT), key=lambda f: -self.psi[f])

    @property
    def live_ctr(self) -> float:
        """Clicks per impression of production's rankings in the window."""
        return self.clicks / self.impressions if self.impressions else 0.0

    @property
    def expected_ctr(self) -> float:
        """What production's scores predicted for those impressions."""
        return self.expected_clicks / self.impressions if self.impressions else 0.0

    @property
    def ctr_ratio(self) -> float:
        """Live over expected CTR (1.0: as the model believes)."""
        return self.clicks / self.expected_clicks if self.expected_clicks else 1.0

    @property
    def retrain_due(self) -> bool:
        """True when features drifted or live CTR fell well below expectation."""
        ctr_fell = self.impressions >= MIN_IMPRESSIONS and self.ctr_ratio < CTR_RATIO_LIMIT
        return bool(self.drifted) or ctr_fell


def read_predictions(folder: Path, since_ms: int) -> list[dict[str, object]]:
    """Prediction-log records since a time (all server processes)."""
    records = []
    for path in sorted(folder.glob("predictions-*.jsonl")):
        with open(path) as handle:
            for line in handle:
                if not line.endswith("\n"):
                    break  # a record still being written
                record = json.loads(line)
                if int(record["time_ms"]) >= since_ms:
                    records.append(record)
    return records


def recent_events(log: EventLog, since_ms: int) -> pa.Table:
    """Events of the log with event_time at or after a time (reading newest segments)."""
    tables = []
    for segment in reversed(log.events.segments()):
        table = log.events.read(segment, SEGMENT_ARROW_SCHEMA)
        tables.append(table)
        if segment.watermark_ms and segment.watermark_ms < since_ms - 3_600_000:
            break
    if not tables:
        return SEGMENT_ARROW_SCHEMA.empty_table()
    table = pa.concat_tables(tables)
    return table.filter(pa.compute.greater_equal(table.column("event_time"), since_ms))


def monitor(
    data_dir: Path, merger: FeatureMerger, log: EventLog, now_ms: int, window_ms: int = 3_600_000
) -> MonitorReport:
    """Compute both signals over the last ``window_ms``."""
    registry = ModelRegistry(data_dir)
    production = registry.production()
    since = now_ms - window_ms
    report = MonitorReport((since, now_ms), production)
    predictions = [
        p
        for p in read_predictions(data_dir / "serving", since)
        if production is not None and p["model_version"] == f"v{production}"
    ]
    report.requests = len(predictions)
    if production is None or not predictions:
        return report
    training = Path(str(registry.get(production).lineage.get("training_set", "")))
    users = sorted({str(p["user_id"]) for p in predictions})
    items = sorted({str(i) for p in predictions for i in _items(p)})
    if training.exists() and users and items:
        reference = pq.read_table(training, columns=list(DENSE_COLUMNS))
        served_users = merger.features("user", users).values
        served_items = merger.features("item", items).values
        for column in DENSE_COLUMNS:
            entity, feature = column.split("_", 1)
            served = (served_users if entity == "user" else served_items)[
                :, FEATURE_NAMES.index(feature)
            ]
            report.psi[column] = psi(reference.column(column).to_numpy(), served)
    scores = {
        (str(p["request_id"]), str(i)): float(s)
        for p in predictions
        for i, s in zip(_items(p), _scores(p), strict=False)
    }
    events = recent_events(log, since)
    kinds = events.column("event_type").to_pylist()
    for request_id, item, kind in zip(
        events.column("request_id").to_pylist(),
        events.column("item_id").to_pylist(),
        kinds,
        strict=True,
    ):
        score = scores.get((str(request_id), str(item)))
        if score is None:
            continue
        if kind == "IMPRESSION":
            report.impressions += 1
            report.expected_clicks += score
        else:
            report.clicks += 1
    return report


def _scores(record: dict[str, object]) -> list[float]:
    scores = record.get("scores", [])
    return [float(s) for s in scores] if isinstance(scores, list) else []


def _items(record: dict[str, object]) -> Iterable[str]:
    items = record.get("items", [])
    return [str(i) for i in items] if isinstance(items, list) else []
