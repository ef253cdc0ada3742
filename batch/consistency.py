"""``saiki consistency``: served features against a recomputation from the master dataset.

Samples users and items, asks the serving path for their features at q (the newest whole
minute, or ``--as-of``), recomputes the same features from the master dataset with the
batch layer's own point-in-time code (``batch.training.features_at``), and reports the
mismatches per feature. A mismatch is expected only for events the speed layer left to
the batch layer (later than its allowed lateness) or not yet processed; the report says
how stale the served values are.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from saiki.batch.master import MasterDataset
from saiki.batch.pipeline import normalise_types
from saiki.batch.predictions import PREDICTIONS_TABLE, read_files
from saiki.batch.tables import iceberg_time
from saiki.batch.training import features_at
from saiki.core.config import SaikiConfig
from saiki.core.errors import InvalidInputError
from saiki.core.eventlog import EventLog
from saiki.core.prediction_files import PATTERN
from saiki.core.timeutil import ceil_minute
from saiki.feature_repo.spec import ENTITIES, FEATURE_NAMES, MAX_WINDOW

# What the serving path answers: (entity, ids, q) -> {id: {feature: value}}.
ServedFeatures = Callable[[str, list[str], int], dict[str, dict[str, float]]]


@dataclass
class ConsistencyReport:
    """Mismatches per feature, over the sampled entities."""

    query_ms: int
    sampled: dict[str, int] = field(default_factory=dict)
    compared: int = 0
    mismatches: Counter[str] = field(default_factory=Counter)
    mismatched_entities: dict[str, list[str]] = field(default_factory=dict)
    examples: list[tuple[str, str, str, float, float]] = field(default_factory=list)

    @property
    def consistent(self) -> bool:
        """True when every compared value matched."""
        return not self.mismatches


def check(
    config: SaikiConfig, served: ServedFeatures, q_ms: int, sample: int = 200, seed: int = 0
) -> ConsistencyReport:
    """Compare served features with the master dataset at q for sampled entities."""
    master = MasterDataset(config)
    master.load(EventLog(config.log_dir))
    snapshot = master.resolve_snapshot()
    report = ConsistencyReport(q_ms)
    if snapshot is None:
        return report
    from pyiceberg.expressions import And, GreaterThanOrEqual, LessThan

    lower = q_ms - MAX_WINDOW.ms - 60_000
    rows = (
        master.table()
        .scan(
            row_filter=And(
                GreaterThanOrEqual("event_time", iceberg_time(lower)),
                LessThan("event_time", iceberg_time(q_ms)),
            ),
            snapshot_id=snapshot,
            selected_fields=("event_time", "user_id", "item_id", "event_type", "dwell_ms"),
        )
        .to_arrow()
    )
    events = normalise_types(rows)
    rng = np.random.default_rng(seed)
    for entity in ENTITIES:
        ids = pc.unique(events.column(entity.key)).to_pylist() if events.num_rows else []
        chosen = (
            [str(i) for i in rng.choice(ids, min(sample, len(ids)), replace=False)] if ids else []
        )
        report.sampled[entity.name] = len(chosen)
        if not chosen:
            continue
        expected = features_at(events, entity, chosen, q_ms)
        got = served(entity.name, chosen, q_ms)
        for entity_id in chosen:
            for name in FEATURE_NAMES:
                want, have = expected[entity_id][name], got[entity_id][name]
                report.compared += 1
                if not np.isclose(want, have, rtol=1e-9, atol=1e-9):
                    report.mismatches[name] += 1
                    report.mismatched_entities.setdefault(entity.name, [])
                    if entity_id not in report.mismatched_entities[entity.name]:
                        report.mismatched_entities[entity.name].append(entity_id)
                    if len(report.examples) < 10:
                        report.examples.append((entity.name, entity_id, name, want, have))
    return report


def table(report: ConsistencyReport) -> pa.Table:
    """Mismatches per feature, for printing and the HTML report."""
    return pa.table(
        {
            "feature": list(FEATURE_NAMES),
            "mismatches": [report.mismatches.get(n, 0) for n in FEATURE_NAMES],
        }
    )


@dataclass
class LogConsistencyReport:
    """Logged feature values against a recomputation at the logged time, per feature and
    window, over the events acknowledged by then."""

    from_ms: int
    to_ms: int
    answers: int = 0  # logged answers with feature values in the range
    checked: int = 0  # of which compared (a sample)
    compared: int = 0  # values compared
    in_flight: int = 0  # values off while an event of theirs was acknowledged < in_flight_ms
    mismatches: Counter[str] = field(default_factory=Counter)
    examples: list[tuple[str, str, str, int, float, float]] = field(default_factory=list)

    @property
    def consistent(self) -> bool:
        """True when every compared value matched or had an event in flight."""
        return not self.mismatches


def check_from_log(
    config: SaikiConfig,
    from_ms: int,
    to_ms: int,
    *,
    sample: int = 200,
    in_flight_ms: int = 5_000,
    seed: int = 0,
) -> LogConsistencyReport:
    """For logged answers in [from, to), recompute each served feature at the answer's
    time t from the master dataset over the events ingested by t, and compare.

    The server answers at q = t (``serving/merge.py``): each window from
    ``floor_minute(t - W)``, and the current minute read whole, up to ``ceil_minute(t)``;
    the recomputation takes the same bounds. A value that differs while one of its
    entity's events was acknowledged within ``in_flight_ms`` before t is counted as in
    flight (the speed layer had not applied it yet), not as a mismatch.
    """
    if to_ms <= from_ms:
        raise InvalidInputError("--to", "must be after --from")
    master = MasterDataset(config)
    master.load(EventLog(config.log_dir))
    report = LogConsistencyReport(from_ms, to_ms)
    answers = logged_answers(master, config.data_dir / "serving", from_ms, to_ms)
    report.answers = len(answers)
    if not answers:
        return report
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(len(answers), min(sample, len(answers)), replace=False).tolist())
    snapshot = master.resolve_snapshot()
    if snapshot is None:
        return report
    from pyiceberg.expressions import And, GreaterThanOrEqual, LessThan

    times = [int(answers[i]["time"]) for i in chosen]
    lower = min(times) - MAX_WINDOW.ms - 60_000
    events = normalise_types(
        master.table()
        .scan(
            row_filter=And(
                GreaterThanOrEqual("event_time", iceberg_time(lower)),
                LessThan("event_time", iceberg_time(ceil_minute(max(times)) + 60_000)),
            ),
            snapshot_id=snapshot,
            selected_fields=(
                "event_time",
                "ingest_time",
                "user_id",
                "item_id",
                "event_type",
                "dwell_ms",
            ),
        )
        .to_arrow()
    )
    ingested = events.column("ingest_time").to_numpy()
    user, item = ENTITIES
    for index in chosen:
        answer = answers[index]
        t = int(answer["time"])
        known = events.filter(pa.array(ingested <= t))
        fresh = events.filter(pa.array((ingested <= t) & (ingested > t - in_flight_ms)))
        report.checked += 1
        wanted = [
            (user, str(answer["user_id"]), answer["user_features"]),
            *(
                (item, str(i), values)
                for i, values in zip(answer["items"], answer["item_features"], strict=True)
            ),
        ]
        for entity in (user, item):
            ids = [entity_id for kind, entity_id, _ in wanted if kind is entity]
            # As the server answered "now" at t: windows from floor_minute(t - W), and
            # the current minute read whole (its tile, up to ceil_minute(t)).
            expected = features_at(known, entity, ids, t, upper_ms=ceil_minute(t))
            busy = set(pc.unique(fresh.column(entity.key)).to_pylist())
            for kind, entity_id, logged in wanted:
                if kind is not entity:
                    continue
                for name, have in zip(FEATURE_NAMES, logged, strict=True):
                    want = expected[entity_id][name]
                    report.compared += 1
                    if np.isclose(want, have, rtol=1e-9, atol=1e-9):
                        continue
                    if entity_id in busy:
                        report.in_flight += 1
                        continue
                    report.mismatches[f"{entity.name}_{name}"] += 1
                    if len(report.examples) < 10:
                        report.examples.append((entity.name, entity_id, name, t, want, have))
    return report


def logged_answers(
    master: MasterDataset, folder: Path, from_ms: int, to_ms: int
) -> list[dict[str, Any]]:
    """Answers logged with feature values in [from, to): loaded ones from saiki.predictions,
    the rest from the serving folder's files (each once, by request and source)."""
    from pyiceberg.expressions import And, GreaterThanOrEqual, LessThan

    table = master.table(PREDICTIONS_TABLE)
    rows: list[dict[str, Any]] = []
    if table.current_snapshot() is not None:
        rows = (
            table.scan(
                row_filter=And(
                    GreaterThanOrEqual("time", iceberg_time(from_ms)),
                    LessThan("time", iceberg_time(to_ms)),
                )
            )
            .to_arrow()
            .to_pylist()
        )
        for row in rows:
            row["time"] = int(row["time"].timestamp() * 1000)
    files = sorted(folder.glob(PATTERN)) if folder.exists() else []
    if files:
        pending, _, _ = read_files(files)
        for row in normalise_types(pending).to_pylist():
            if from_ms <= row["time"] < to_ms:
                rows.append(row)
    unique = {(r["request_id"], r["source"]): r for r in rows if r.get("item_features")}
    return sorted(unique.values(), key=lambda r: (r["time"], r["request_id"]))
