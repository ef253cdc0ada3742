"""Drift and the retraining trigger (``saiki monitor``).

Two signals, over the last hour of serving:

* **feature drift**: the population stability index (PSI) of every model input between
  what the production model last saw and what was served — the features of the users
  and items ranked in the last hour, merged now, each once. The reference is the same
  population at the end of the training data: the users and items of the held-out rows
  the model was judged on (its newest; else the newest hour), each at its latest row.
  (Against every row of the whole training set, counts that grow through the day and
  users weighted by their impressions made a freshly trained model look drifted.) PSI
  over 0.25 is drift.
* **live CTR against expectation**: the clicks the production model's rankings earned,
  against the clicks its own scores predicted for the items users were shown (the sum
  of their scores), as a ratio. The items shown are the ones the model scored highest,
  so every model over-promises on them (the winner's curse), and by how much depends on
  the model: in the demo a freshly promoted v2 earned 0.64 of what its scores promised
  on stable traffic, where v1 had earned 0.85. An absolute limit therefore flagged a
  model the moment it was promoted, and a policy acting on it would retrain in a loop.
  The ratio is judged against the version's own **reference**: the ratio of its first
  window with enough impressions, if that window began within 6 hours of the end of the
  version's training data (a model still fresh: kept in
  ``<data>/serving/baselines.json``). A retrain is due when the ratio falls below 0.8 of
  the reference: the model's picture of the users has gone out of date since it started.
  A version first seen live long after its data ended (the demo's "yesterday's model",
  first served after its users changed) has no such reference and is judged against
  0.8 itself, as before.

A retrain is due when either fires; ``saiki monitor`` then exits non-zero, so that a
scheduler (cron, Airflow) can run ``saiki train --promote-if-better``.

**Regression after a promote**: the baselines also keep each version's latest live CTR.
When the version in production has enough impressions and its live CTR is below 0.8 of
the latest live CTR of the version it replaced, the promotion was a clear regression;
``saiki monitor --guard`` (as ``saiki up`` runs it) rolls back.
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
from saiki.core.files import atomic_write
from saiki.core.ingest import SEGMENT_ARROW_SCHEMA
from saiki.core.prediction_files import PATTERN, read_records
from saiki.feature_repo.spec import FEATURE_NAMES
from saiki.serving.merge import FeatureMerger
from saiki.serving.model import DENSE_COLUMNS
from saiki.serving.registry import ModelRegistry

PSI_LIMIT = 0.25
CTR_RATIO_LIMIT = 0.8  # of the version's own reference ratio
REGRESSION_LIMIT = 0.8  # of the replaced version's latest live CTR
MIN_IMPRESSIONS = 200
# A first live window that starts at most this long after the version's training data
# ended measures the model while it is fresh: it becomes the version's reference.
REFERENCE_FRESH_MS = 6 * 3_600_000
BASELINES_FILE = "baselines.json"


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
    # The version's ratio in its first window with enough impressions (None: this is it,
    # or there has been none yet).
    reference_ratio: float | None = None
    trained_to_ms: int = 0  # the end of the production version's training data
    log_dropped: int = 0  # answers the servers could not log in the window (full queue)

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
    def ctr_fell(self) -> bool:
        """Live CTR against expectation fell below 0.8 of the version's reference."""
        reference = 1.0 if self.reference_ratio is None else self.reference_ratio
        return self.impressions >= MIN_IMPRESSIONS and self.ctr_ratio < CTR_RATIO_LIMIT * reference

    @property
    def retrain_due(self) -> bool:
        """True when features drifted or live CTR fell well below the reference."""
        return bool(self.drifted) or self.ctr_fell


@dataclass(frozen=True)
class Baseline:
    """What one version earned live: its reference window and its latest one."""

    reference_ratio: float | None  # None: first seen live when no longer fresh
    latest_ctr: float
    latest_impressions: int
    latest_ms: int


class Baselines:
    """Each version's live reference and latest CTR, in ``<data>/serving/baselines.json``."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / "serving" / BASELINES_FILE

    def read(self) -> dict[str, Baseline]:
        """Every version's baseline, by name (``v3``)."""
        try:
            raw = json.loads(self.path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}
        return {name: Baseline(**value) for name, value in raw.items()}

    def observe(self, report: MonitorReport) -> MonitorReport:
        """Judge ``report`` against its version's reference, set the reference if this is
        the version's first window with enough impressions, and record its latest CTR."""
        if report.production is None or report.impressions < MIN_IMPRESSIONS:
            known = self.read().get(f"v{report.production}")
            report.reference_ratio = known.reference_ratio if known else None
            return report
        name = f"v{report.production}"
        baselines = self.read()
        known = baselines.get(name)
        if known is not None:
            reference_ratio = known.reference_ratio
        elif report.window_ms[0] - report.trained_to_ms <= REFERENCE_FRESH_MS:
            reference_ratio = report.ctr_ratio
        else:
            reference_ratio = None
        report.reference_ratio = reference_ratio
        baselines[name] = Baseline(
            reference_ratio=reference_ratio,
            latest_ctr=report.live_ctr,
            latest_impressions=report.impressions,
            latest_ms=report.window_ms[1],
        )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(
            self.path,
            json.dumps({k: v.__dict__ for k, v in baselines.items()}, indent=1),
            durable=False,
        )
        return report


def regression(report: MonitorReport, previous: int | None, baselines: Baselines) -> str | None:
    """Why the promotion of ``report.production`` over ``previous`` was a clear
    regression, or None: its live CTR under 0.8 of the replaced version's latest."""
    if previous is None or report.impressions < MIN_IMPRESSIONS:
        return None
    before = baselines.read().get(f"v{previous}")
    if before is None or before.latest_impressions < MIN_IMPRESSIONS:
        return None
    if report.live_ctr < REGRESSION_LIMIT * before.latest_ctr:
        return (
            f"v{report.production} earns a live CTR of {report.live_ctr:.3f}, under "
            f"{REGRESSION_LIMIT:.0%} of v{previous}'s {before.latest_ctr:.3f} before it"
        )
    return None


def read_predictions(
    folder: Path, since_ms: int, dropped: list[int] | None = None
) -> list[dict[str, object]]:
    """Prediction-log records since a time (all server processes); answers the servers
    could not log (a full queue) are added to ``dropped[0]`` when given."""
    records = []
    for path in sorted(folder.glob(PATTERN)):
        for _, record in read_records(path):
            if record is None or int(record["time_ms"]) < since_ms:
                continue  # a record still being written, or too old
            if "dropped" in record:
                if dropped is not None:
                    dropped[0] += int(record["dropped"])
                continue
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
    data_dir: Path,
    merger: FeatureMerger,
    log: EventLog,
    now_ms: int,
    window_ms: int = 3_600_000,
    *,
    registry: ModelRegistry | None = None,
) -> MonitorReport:
    """Compute both signals over the last ``window_ms`` (``registry``: the configured
    one; by default the one in ``data_dir``)."""
    registry = registry or ModelRegistry(data_dir)
    production = registry.production()
    since = now_ms - window_ms
    report = MonitorReport((since, now_ms), production)
    dropped = [0]
    predictions = [
        p
        for p in read_predictions(data_dir / "serving", since, dropped)
        if production is not None and p["model_version"] == f"v{production}"
    ]
    report.requests = len(predictions)
    report.log_dropped = dropped[0]
    if production is None or not predictions:
        return report
    report.trained_to_ms = int(registry.get(production).lineage.get("to_ms", 0))
    training = Path(str(registry.get(production).lineage.get("training_set", "")))
    users = sorted({str(p["user_id"]) for p in predictions})
    items = sorted({str(i) for p in predictions for i in _items(p)})
    if training.exists() and users and items:
        holdout = registry.get(production).metrics.get("holdout_from_ms")
        held_out = int(holdout) if isinstance(holdout, int | float) else None
        reference = reference_features(training, window_ms, held_out)
        served_users = merger.features("user", users).values
        served_items = merger.features("item", items).values
        for column in DENSE_COLUMNS:
            entity, feature = column.split("_", 1)
            served = (served_users if entity == "user" else served_items)[
                :, FEATURE_NAMES.index(feature)
            ]
            report.psi[column] = psi(reference[column], served)
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


def reference_features(
    training: Path, window_ms: int, since_ms: int | None = None
) -> dict[str, npt.NDArray[np.float64]]:
    """Each model input as the model last saw it, over the population the monitor serves:
    in the training rows from ``since_ms`` (the held-out rows the model was judged on),
    else in its newest ``window_ms``, each user's latest row (for the user features) and
    each item's latest row (for the item features)."""
    table = pq.read_table(training, columns=["event_time", "user_id", "item_id", *DENSE_COLUMNS])
    times = table.column("event_time").to_numpy().astype(np.int64)
    if len(times):
        start = times.max() - window_ms if since_ms is None else min(since_ms, times.max())
        table = table.filter(pa.array(times >= start))
        times = table.column("event_time").to_numpy().astype(np.int64)
    newest_first = table.take(pa.array(np.argsort(-times, kind="stable")))
    reference: dict[str, npt.NDArray[np.float64]] = {}
    for entity in ("user", "item"):
        keys = newest_first.column(f"{entity}_id").to_numpy(zero_copy_only=False)
        _, first = np.unique(keys, return_index=True)
        latest = newest_first.take(pa.array(np.sort(first)))
        for column in DENSE_COLUMNS:
            if column.startswith(f"{entity}_"):
                reference[column] = latest.column(column).to_numpy().astype(np.float64)
    return reference


def _scores(record: dict[str, object]) -> list[float]:
    scores = record.get("scores", [])
    return [float(s) for s in scores] if isinstance(scores, list) else []


def _items(record: dict[str, object]) -> Iterable[str]:
    items = record.get("items", [])
    return [str(i) for i in items] if isinstance(items, list) else []
