"""Training sets from the features that were served (``--features logged``).

The recomputed mode (``batch/training.py``) rebuilds each impression's features from the
master dataset as of its time. This mode takes instead the vector the model actually saw:
each impression is joined, by its ``request_id`` and item, to the ``Predict`` answer in
``saiki.predictions`` that showed it (the user's features and that item's, as merged by
the server), and labelled the same way (a click on the same item within 30 minutes, or
carrying the request_id). There is no recomputation skew by construction: a late event
that reached the batch layer but not the server at answer time is in the recomputed row
and not in the logged one, which is what the model will see again when it serves.

An impression whose answer was not logged with features (no request_id, a share below 1,
an answer still in the serving folder and not loaded yet, another feature spec) has no
row; the lineage counts them (``unmatched``). The join runs in this process with Arrow:
it reads the range's impressions and answers once and sorts nothing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.expressions import And, GreaterThanOrEqual, LessThan
from pyiceberg.table import Table
from pyiceberg.table.snapshots import Snapshot

from saiki.batch.master import MasterDataset
from saiki.batch.pipeline import normalise_types
from saiki.batch.predictions import PREDICTIONS_TABLE
from saiki.batch.run import code_version
from saiki.batch.tables import EVENTS_TABLE, iceberg_time
from saiki.batch.training import (
    IMPRESSION_COLUMNS,
    LABEL_WINDOW_MS,
    TrainingSetLineage,
    click_labels,
    write_training_set,
)
from saiki.core.config import SaikiConfig
from saiki.core.errors import InvalidInputError, PreconditionError
from saiki.core.timeutil import now_ms
from saiki.feature_repo.spec import ENTITIES, FEATURE_NAMES, SPEC_VERSION

_EVENT_COLUMNS = (
    "event_id",
    "event_time",
    "user_id",
    "item_id",
    "device_id",
    "event_type",
    "dwell_ms",
    "request_id",
    "variant",
    "log_offset",
)


def build_logged_training_set(
    config: SaikiConfig, from_ms: int, to_ms: int, out: Path, *, snapshot_id: int | None = None
) -> TrainingSetLineage:
    """One row per impression in [from, to) whose served vector was logged, with it."""
    if to_ms <= from_ms:
        raise InvalidInputError("--to", "must be after --from")
    master = MasterDataset(config)
    pinned = master.resolve_snapshot(snapshot_id)
    if pinned is None:
        raise PreconditionError("the master dataset has no snapshot: ingest events first")
    impressions = labelled_impressions(master, pinned, from_ms, to_ms)
    predictions = master.table(PREDICTIONS_TABLE)
    served_snapshot = predictions.current_snapshot()
    answers = _served_vectors(predictions, served_snapshot, from_ms, to_ms)
    rows, unmatched = _join(impressions, answers)
    lineage = TrainingSetLineage(
        snapshot_id=pinned,
        from_ms=from_ms,
        to_ms=to_ms,
        spec_version=SPEC_VERSION,
        code_version=code_version(),
        created_ms=now_ms(),
        rows=rows.num_rows,
        positives=int(pc.sum(rows.column("clicked")).as_py() or 0),
        features="logged",
        predictions_snapshot_id=served_snapshot.snapshot_id if served_snapshot else None,
        unmatched=unmatched,
    )
    write_training_set(rows, lineage, out)
    return lineage


def labelled_impressions(
    master: MasterDataset, snapshot_id: int, from_ms: int, to_ms: int
) -> pa.Table:
    """The impressions in [from, to) of a snapshot, each with its ``clicked`` label (the
    events read reach a label window past ``to``)."""
    events = normalise_types(
        master.table(EVENTS_TABLE)
        .scan(
            row_filter=And(
                GreaterThanOrEqual("event_time", iceberg_time(from_ms)),
                LessThan("event_time", iceberg_time(to_ms + LABEL_WINDOW_MS + 1)),
            ),
            snapshot_id=snapshot_id,
            selected_fields=_EVENT_COLUMNS,
        )
        .to_arrow()
    )
    return click_labels(events, from_ms, to_ms)


def _served_vectors(
    table: Table, snapshot: Snapshot | None, from_ms: int, to_ms: int
) -> dict[tuple[str, str], list[float]]:
    """(request_id, item) → the user's then the item's served feature values, for the
    answers in range logged with features of the current spec."""
    if snapshot is None:
        return {}
    # Answers precede their impressions: from a label window before the range.
    rows = (
        table.scan(
            row_filter=And(
                GreaterThanOrEqual("time", iceberg_time(from_ms - LABEL_WINDOW_MS)),
                LessThan("time", iceberg_time(to_ms)),
            ),
            snapshot_id=snapshot.snapshot_id,
            selected_fields=(
                "request_id",
                "items",
                "feature_spec",
                "user_features",
                "item_features",
            ),
        )
        .to_arrow()
        .to_pylist()
    )
    vectors: dict[tuple[str, str], list[float]] = {}
    for row in rows:
        if row["feature_spec"] != SPEC_VERSION or row["item_features"] is None:
            continue
        user = row["user_features"]
        for item, values in zip(row["items"], row["item_features"], strict=True):
            vectors[(row["request_id"], item)] = [*user, *values]
    return vectors


def _join(
    impressions: pa.Table, vectors: dict[tuple[str, str], list[float]]
) -> tuple[pa.Table, int]:
    """The impressions with a served vector, its values as the feature columns."""
    keys = zip(
        pc.fill_null(impressions.column("request_id"), "").to_pylist(),
        impressions.column("item_id").to_pylist(),
        strict=True,
    )
    found = [vectors.get(key) for key in keys]
    keep = np.array([v is not None for v in found], dtype=bool)
    matched = [v for v in found if v is not None]
    table = impressions.filter(pa.array(keep)).select([*IMPRESSION_COLUMNS, "clicked"])
    values = np.array(matched, dtype=np.float64).reshape(len(matched), 2 * len(FEATURE_NAMES))
    names = [f"{entity.name}_{name}" for entity in ENTITIES for name in FEATURE_NAMES]
    for column, name in enumerate(names):
        table = table.append_column(name, pa.array(values[:, column]))
    return table, int((~keep).sum())
