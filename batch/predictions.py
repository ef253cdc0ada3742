"""Served rankings in the master dataset: the Iceberg table ``saiki.predictions``.

The servers log each ``Predict`` answer to hourly JSON-lines files
(``core/prediction_files.py``). :func:`load_predictions` (run by ``saiki master load``)
appends every *closed* file whose records are older than ``HOLD_MS`` (``saiki monitor``
reads the last hour from the files) to ``saiki.predictions``, partitioned by day, and
then removes the files, so the serving folder holds a few hours at most.

**Exactly once.** One commit takes whole files and names them in its snapshot summary
(``saiki.predictions.files``); the files are removed right after it, under the loader's
lock. A loader that dies between the commit and the removal leaves files the current
snapshot names: the next load removes them without loading them again. Each row keeps
its ``source`` (file and line), so a stock reader can trace it back.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.schema import Schema
from pyiceberg.types import (
    DoubleType,
    ListType,
    LongType,
    NestedField,
    StringType,
    TimestamptzType,
)

from saiki.core.files import atomic_write
from saiki.core.forgotten import Forgotten
from saiki.core.prediction_files import PATTERN, closed_before, read_records

PREDICTIONS_TABLE: Final = "predictions"
LOADED_FILES: Final = "saiki.predictions.files"
DROPPED: Final = "saiki.predictions.dropped"
HOLD_MS: Final = 6 * 3_600_000  # files stay this long after their last record
FILES_PER_COMMIT: Final = 64

PREDICTIONS_SCHEMA: Final = Schema(
    NestedField(1, "time", TimestamptzType(), required=True),
    NestedField(2, "request_id", StringType(), required=True),
    NestedField(3, "user_id", StringType(), required=True),
    NestedField(4, "variant", StringType(), required=False),
    NestedField(5, "model_version", StringType(), required=True),
    NestedField(
        6, "items", ListType(element_id=10, element_type=StringType(), element_required=True)
    ),
    NestedField(
        7, "scores", ListType(element_id=11, element_type=DoubleType(), element_required=True)
    ),
    NestedField(8, "candidates", LongType(), required=True),
    NestedField(9, "source", StringType(), required=True),
    NestedField(12, "device_id", StringType(), required=False),
    # The merged feature values the model saw, for a share of requests (else null): the
    # user's, and each ranked item's in the order of ``items``; their names are the
    # feature spec's (``feature_spec``, the spec version), user_ then item_ features.
    NestedField(13, "feature_spec", StringType(), required=False),
    NestedField(
        14,
        "user_features",
        ListType(element_id=15, element_type=DoubleType(), element_required=True),
    ),
    NestedField(
        16,
        "item_features",
        ListType(
            element_id=17,
            element_type=ListType(element_id=18, element_type=DoubleType(), element_required=True),
            element_required=True,
        ),
    ),
    # The serving model's forward pass; a shadow version's scores for the same ``items``
    # (``saiki models stage V``: null when the request was not shadowed) and its pass.
    NestedField(19, "model_ms", DoubleType(), required=False),
    NestedField(20, "shadow_version", StringType(), required=False),
    NestedField(
        21,
        "shadow_scores",
        ListType(element_id=22, element_type=DoubleType(), element_required=True),
    ),
    NestedField(23, "shadow_ms", DoubleType(), required=False),
)
_DOUBLES: Final = pa.list_(pa.field("element", pa.float64(), nullable=False))
_ARROW_SCHEMA: Final = pa.schema(
    [
        pa.field("time", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("request_id", pa.string(), nullable=False),
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("variant", pa.string()),
        pa.field("model_version", pa.string(), nullable=False),
        pa.field("items", pa.list_(pa.field("element", pa.string(), nullable=False))),
        pa.field("scores", pa.list_(pa.field("element", pa.float64(), nullable=False))),
        pa.field("candidates", pa.int64(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("device_id", pa.string()),
        pa.field("feature_spec", pa.string()),
        pa.field("user_features", _DOUBLES),
        pa.field("item_features", pa.list_(pa.field("element", _DOUBLES, nullable=False))),
        pa.field("model_ms", pa.float64()),
        pa.field("shadow_version", pa.string()),
        pa.field("shadow_scores", _DOUBLES),
        pa.field("shadow_ms", pa.float64()),
    ]
)


@dataclass
class PredictionsLoad:
    """What one load of the prediction log did."""

    rows: int = 0
    files: int = 0
    snapshots: int = 0
    removed_after_crash: int = 0
    torn_lines: int = 0  # a last line a killed server left unfinished: not a record
    dropped: int = 0  # answers the servers noted they could not log (a full queue)
    forgotten: int = 0  # answers of users removed by `saiki forget` before they were loaded


def finish_last_commit(summary: dict[str, str], folder: Path) -> int:
    """Remove the files the last commit loaded that a dead loader left behind."""
    removed = 0
    for name in json.loads(summary.get(LOADED_FILES, "[]")):
        path = folder / name
        if path.exists():
            path.unlink()
            removed += 1
    return removed


def pending_files(folder: Path, now_ms: int, hold_ms: int = HOLD_MS) -> list[Path]:
    """The closed files whose every record is older than ``hold_ms``, oldest first."""
    return closed_before(folder, now_ms - hold_ms) if folder.exists() else []


def read_files(paths: list[Path]) -> tuple[pa.Table, int, int]:
    """The records of whole files as rows of the table; how many torn lines; how many
    answers the servers noted as not logged."""
    rows: dict[str, list[object]] = {f.name: [] for f in _ARROW_SCHEMA}
    torn = dropped = 0
    for path in paths:
        for number, record in read_records(path):
            if record is None:
                torn += 1
                continue
            if "dropped" in record:
                dropped += int(record["dropped"])
                continue
            rows["time"].append(int(record["time_ms"]) * 1000)
            rows["request_id"].append(str(record["request_id"]))
            rows["user_id"].append(str(record["user_id"]))
            rows["variant"].append(record.get("variant"))
            rows["model_version"].append(str(record["model_version"]))
            rows["items"].append([str(i) for i in record.get("items", [])])
            rows["scores"].append([float(s) for s in record.get("scores", [])])
            rows["candidates"].append(int(record.get("candidates", 0)))
            rows["source"].append(f"{path.name}:{number}")
            rows["device_id"].append(record.get("device_id") or None)
            rows["feature_spec"].append(record.get("feature_spec"))
            rows["user_features"].append(record.get("user_features"))
            rows["item_features"].append(record.get("item_features"))
            rows["model_ms"].append(record.get("model_ms"))
            rows["shadow_version"].append(record.get("shadow_version"))
            rows["shadow_scores"].append(record.get("shadow_scores"))
            rows["shadow_ms"].append(record.get("shadow_ms"))
    table = pa.table(
        [pa.array(rows[f.name], type=f.type) for f in _ARROW_SCHEMA], schema=_ARROW_SCHEMA
    )
    return table, torn, dropped


def drop_forgotten(rows: pa.Table, forgotten: Forgotten) -> tuple[pa.Table, int]:
    """The rows without the answers of users forgotten after them (``saiki forget``)."""
    if rows.num_rows == 0 or not forgotten:
        return rows, 0
    times = pc.cast(rows.column("time"), pa.int64()).to_numpy() // 1000
    at = {user: forgotten.at(user) for user in set(rows.column("user_id").to_pylist())}
    keep = np.array(
        [
            (when := at[user]) is None or time > when
            for user, time in zip(rows.column("user_id").to_pylist(), times.tolist(), strict=True)
        ],
        dtype=bool,
    )
    return rows.filter(pa.array(keep)), int((~keep).sum())


@dataclass
class FilesForgotten:
    """What removing a user's answers from the serving folder did."""

    files_rewritten: int = 0
    answers: int = 0
    open_files: int = 0  # still written to: their answers are dropped when loaded


def forget_in_files(folder: Path, user_id: str, now_ms: int) -> FilesForgotten:
    """Rewrite every closed file without the user's answers (atomically, one by one);
    files a server may still append to are left to the loader (:func:`drop_forgotten`).
    Run under the loader's lock."""
    result = FilesForgotten()
    if not folder.exists():
        return result
    closed = set(closed_before(folder, now_ms))
    result.open_files = sum(1 for p in folder.glob(PATTERN) if p not in closed)
    for path in sorted(closed):
        kept, removed = [], 0
        for line in path.read_bytes().splitlines(keepends=True):
            if line.endswith(b"\n") and orjson.loads(line).get("user_id") == user_id:
                removed += 1
            else:
                kept.append(line)
        if removed:
            atomic_write(path, b"".join(kept))
            result.files_rewritten += 1
            result.answers += removed
    return result
