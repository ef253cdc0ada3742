"""The prediction log rotates hourly per process; loading removes the files (tests/batch)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from saiki.batch.predictions import forget_in_files
from saiki.core.prediction_files import VectorBook
from saiki.serving import prediction_log
from saiki.serving.monitor import read_predictions
from saiki.serving.prediction_log import Prediction, PredictionLog

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
    real_render = prediction_log._render

    def slow_render(served: object, book: object) -> bytes:
        release.wait(10)  # the disk is stuck: the writer thread waits here
        return real_render(served, book)  # type: ignore[arg-type]

    monkeypatch.setattr(prediction_log, "_render", slow_render)
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
    assert first["user_features"] == [1.0, 2.0]
    assert first["item_features"] == [[30.0, 31.0], [10.0, 11.0], [20.0, 21.0]]
    assert "item_features" not in second and second["candidates"] == 3
    none = PredictionLog(tmp_path / "none", features_share=0.0)
    assert not any(none.wants_features() for _ in range(100))
    none.close()


def _lines(folder: Path) -> list[dict[str, object]]:
    return [json.loads(line) for p in sorted(folder.glob("*.jsonl")) for line in p.open()]


def test_an_item_vector_is_written_once_per_file_and_again_only_when_it_changes(
    tmp_path: Path,
) -> None:
    now = [1_000 * HOUR]
    log = PredictionLog(tmp_path, clock=lambda: now[0])
    user = np.array([[1.0, 2.0]])
    items = np.array([[10.0, 11.0], [20.0, 21.0], [30.0, 31.0]])  # candidates a, b, c
    changed = items.copy()
    changed[1, 1] = -0.0  # b's last value only, and to a value equal to 0.0
    changed[2, 0] = np.nan  # c: a NaN is written as served
    served = [items, items, changed, changed]
    for n, values in enumerate(served):
        ranked = [("c", 0.9), ("a", 0.5), ("b", 0.1)] if n % 2 else [("a", 0.9), ("b", 0.5)]
        candidates = ["a", "b", "c"]
        log.write(
            f"u{n}",
            Prediction(f"r{n}", "v1", "production", ranked),
            candidates=candidates,
            user_features=user,
            item_features=values,
        )
    log.close()
    vectors = [line for line in _lines(tmp_path) if "vectors" in line]
    # r0: a and b; r1: c (new); r2: b (changed; c is not ranked); r3: c (changed)
    assert [v["vector_slots"] for v in vectors] == [[0, 1], [2], [1], [2]]
    records = read_predictions(tmp_path, 0)
    assert [r["request_id"] for r in records] == ["r0", "r1", "r2", "r3"]
    for record, values in zip(records, served, strict=True):
        position = {"a": 0, "b": 1, "c": 2}
        expected = values[[position[str(i)] for i in record["items"]]]  # type: ignore[union-attr]
        got = np.array(record["item_features"])
        assert got.tobytes() == expected.tobytes(), record["request_id"]  # bit for bit


def test_a_file_whose_book_is_full_is_closed_and_the_next_writes_every_vector_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(VectorBook, "CAPACITY", 2)
    now = [1_000 * HOUR]
    log = PredictionLog(tmp_path, clock=lambda: now[0])
    items = np.array([[1.0], [2.0], [3.0]])
    for n in range(3):
        now[0] += 1
        log.write(
            "u",
            Prediction(f"r{n}", "v1", "production", [("a", 0.5), ("b", 0.4), ("c", 0.3)][n:]),
            candidates=["a", "b", "c"],
            user_features=np.array([[0.0]]),
            item_features=items,
        )
    log.close()
    # r0 filled the first file (3 slots), r1 the second (2): each answer has a file of its
    # own, and each file holds the vectors its answer names
    for path in sorted(tmp_path.glob("*.jsonl")):
        kinds = ["vectors" in json.loads(line) for line in path.open()]
        assert kinds == [True, False], path.name
    assert [r["item_features"] for r in read_predictions(tmp_path, 0)] == [
        [[1.0], [2.0], [3.0]],
        [[2.0], [3.0]],
        [[3.0]],
    ]


def test_an_answer_that_fails_to_render_leaves_no_slot_named_but_unwritten(
    tmp_path: Path,
) -> None:
    log = PredictionLog(tmp_path)
    items = np.array([[1.0], [2.0]])
    for request_id in (object(), "r1"):  # the first cannot be rendered, after its vectors
        log.write(
            "u",
            Prediction(request_id, "v1", "production", [("a", 0.5), ("b", 0.4)]),  # type: ignore[arg-type]
            candidates=["a", "b"],
            user_features=np.array([[0.0]]),
            item_features=items,
        )
    log.close()
    (record,) = read_predictions(tmp_path, 0)  # the second names vectors that were written
    assert record["request_id"] == "r1" and record["item_features"] == [[1.0], [2.0]]


def test_forgetting_an_answer_keeps_the_vectors_later_answers_name(tmp_path: Path) -> None:
    now = [1_000 * HOUR]
    log = PredictionLog(tmp_path, clock=lambda: now[0])
    for user in ("gone", "kept"):  # the first answer brings the vectors the second names
        log.write(
            user,
            Prediction(f"r-{user}", "v1", "production", [("a", 0.5)]),
            candidates=["a"],
            user_features=np.array([[0.0]]),
            item_features=np.array([[7.0]]),
        )
    log.close()
    forgotten = forget_in_files(tmp_path, "gone", now[0] + 2 * HOUR)
    assert forgotten.answers == 1
    (record,) = read_predictions(tmp_path, 0)
    assert record["user_id"] == "kept" and record["item_features"] == [[7.0]]
    assert not any(line.get("user_id") == "gone" for line in _lines(tmp_path))
