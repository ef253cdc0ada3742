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

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from saiki.batch.master import MasterDataset
from saiki.batch.pipeline import iceberg_time, normalise_types
from saiki.batch.training import features_at
from saiki.core.config import SaikiConfig
from saiki.core.eventlog import EventLog
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
