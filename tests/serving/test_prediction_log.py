"""The prediction log rotates hourly per process; loading removes the files (tests/batch)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from saiki.core.prediction_files import decode_values
from saiki.serving import predictor
from saiki.serving.monitor import read_predictions
from saiki.serving.predictor import Prediction, PredictionLog

HOUR = 3_600_000


def test_files_rotate_hourly_and_the_last_hour_stays_readable(tmp_path: Path) -> None:
    now = [1_000 * HOUR]
    log = PredictionLog(tmp_path, clock=lambda: now[0])
    answer = Prediction("r", "v1", "production", [("i1", 0.9), ("i2", 0.1)])
    first = log.path
    for step in range(6):  # a record every 50 minutes for five hours
        log.write(f"u{step}", answer)
        now[0] += 50 * 60_000
    log.close()
    files = sorted(tmp_path.glob("predictions-*.jsonl"))
    assert first in files and len(files) == 3  # the writer never removes a record
    for path in files:  # each file spans under an hour of records
        times = [json.loads(line)["time_ms"] for line in path.read_text().splitlines()]
        assert max(times) - min(times) < HOUR
    recent = read_predictions(tmp_path, now[0] - 2 * HOUR)
    assert [r["user_id"] for r in recent] == ["u4", "u5"]


def test_a_full_queue_never_blocks_predict_and_the_drops_are_counted_in_the_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = threading.Event()
    real_render = predictor._render

    def slow_render(served: object) -> bytes:
        release.wait(10)  # the disk is stuck: the writer thread waits here
        return real_render(served)  # type: ignore[arg-type]

    monkeypatch.setattr(predictor, "_render", slow_render)
    log = PredictionLog(tmp_path, queue_max=2)
    answer = Prediction("r", "v1", "production", [("i1", 0.9)])
    started = time.perf_counter()
    for n in range(10):
        log.write(f"u{n}", answer)
    assert time.perf_counter() - started < 1.0  # never waited on the writer
    release.set()
    log.close()
    dropped = [0]
    records = read_predictions(tmp_path, 0, dropped)
    assert log.dropped == dropped[0] >= 7 and len(records) + dropped[0] == 10


def test_sampled_answers_carry_the_features_of_each_ranked_item(tmp_path: Path) -> None:
    log = PredictionLog(tmp_path, features_share=1.0)
    users = np.array([[1.0, 2.0]])
    items = np.array([[10.0, 11.0], [20.0, 21.0], [30.0, 31.0]])  # candidates a, b, c
    ranked = Prediction("r", "v1", "production", [("c", 0.9), ("a", 0.5), ("b", 0.1)])
    log.write(
        "u",
        ranked,
        device_id="ios",
        candidates=["a", "b", "c"],
        user_features=users,
        item_features=items,
    )
    log.write("u", ranked, candidates=["a", "b", "c"])  # not sampled: no vectors
    log.close()
    first, second = read_predictions(tmp_path, 0)
    assert first["items"] == ["c", "a", "b"] and first["device_id"] == "ios"
    assert first["feature_width"] == 2
    assert decode_values(str(first["user_features"]), 2) == [[1.0, 2.0]]
    assert decode_values(str(first["item_features"]), 2) == [
        [30.0, 31.0],
        [10.0, 11.0],
        [20.0, 21.0],
    ]
    assert "item_features" not in second and second["candidates"] == 3
    none = PredictionLog(tmp_path / "none", features_share=0.0)
    assert not any(none.wants_features() for _ in range(100))
    none.close()
