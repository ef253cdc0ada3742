"""The prediction log rotates hourly per process; loading removes the files (tests/batch)."""

from __future__ import annotations

import json
from pathlib import Path

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
