"""The prediction log in the master dataset: closed files past the monitor's reach are
loaded into saiki.predictions exactly once, then removed; a stock reader opens it."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from saiki.batch.consistency import check_from_log
from saiki.batch.logged_training import build_logged_training_set
from saiki.batch.master import MasterDataset
from saiki.batch.predictions import HOLD_MS, PREDICTIONS_TABLE
from saiki.batch.training import build_training_set, read_lineage
from saiki.core.config import SaikiConfig
from saiki.core.eventlog import EventLog
from saiki.core.ingest import Ingestor
from saiki.feature_repo.spec import FEATURE_NAMES
from saiki.serving.monitor import read_predictions
from saiki.serving.prediction_log import Prediction, PredictionLog
from tests import oracle
from tests.batch.test_master import stock_env
from tests.conftest import END_MS, make_config
from tests.core.test_ingest import event_line

HOUR = 3_600_000
START = 490_000 * HOUR

STOCK_PREDICTIONS = textwrap.dedent(
    """
    import json
    from pyiceberg.catalog import load_catalog
    table = load_catalog("saiki").load_table("saiki.predictions")
    rows = table.scan(selected_fields=("request_id", "items", "source")).to_arrow()
    print(json.dumps({"requests": sorted(rows.column("request_id").to_pylist()),
                      "partitions": [str(f) for f in table.spec().fields]}))
    """
)


def serve_for_hours(config: SaikiConfig, hours: int) -> tuple[Path, list[str], int]:
    """A server's log with a ranking every 20 minutes; returns the folder, every request
    id in order, and the time after the last."""
    now = [START]
    folder = config.data_dir / "serving"
    log = PredictionLog(folder, clock=lambda: now[0])
    requests = []
    for n in range(hours * 3):
        request = f"r{n}"
        log.write(
            f"u{n % 7}",
            Prediction(request, "v1", "production", [("i2", 0.8), ("i1", 0.3)]),
            candidates=["i1", "i2"],
            user_features=np.array([[float(n), 1.0]]),
            item_features=np.array([[1.0, 1.5], [2.0, 2.5]]),
        )
        requests.append(request)
        now[0] += 20 * 60_000
    log.close()
    return folder, requests, now[0]


def loaded_requests(master: MasterDataset) -> list[str]:
    table = master.table(PREDICTIONS_TABLE).scan(selected_fields=("request_id",)).to_arrow()
    return sorted(table.column("request_id").to_pylist())


def test_closed_files_past_the_hold_are_loaded_once_and_removed(tmp_path: Path) -> None:
    config = make_config(tmp_path / "data")
    folder, requests, now = serve_for_hours(config, 10)
    master = MasterDataset(config)
    result = master.load_predictions(folder, now)
    # Files whose hour ended at least HOLD_MS ago: the first three hours' files.
    in_table = loaded_requests(master)
    assert result.rows == len(in_table) > 0 and result.files >= 3
    left = read_predictions(folder, 0)
    assert sorted(in_table + [str(r["request_id"]) for r in left]) == sorted(requests)
    assert all(int(r["time_ms"]) >= now - HOLD_MS - HOUR for r in left)
    assert read_predictions(folder, now - HOUR)  # the monitor's last hour stays on disk
    again = master.load_predictions(folder, now)
    assert (again.rows, again.files) == (0, 0) and loaded_requests(master) == in_table
    later = master.load_predictions(folder, now + HOLD_MS + 2 * HOUR)
    assert later.rows == len(requests) - len(in_table)
    assert loaded_requests(master) == sorted(requests) and not list(folder.glob("*.jsonl"))
    rows = master.table(PREDICTIONS_TABLE).scan().to_arrow().to_pylist()
    one = next(r for r in rows if r["request_id"] == "r5")
    assert (one["items"], one["user_features"]) == (["i2", "i1"], [5.0, 1.0])
    assert one["item_features"] == [[2.0, 2.5], [1.0, 1.5]]  # in the ranked order
    assert one["feature_spec"] and re.fullmatch(r"predictions-\d+-\d+\.jsonl:\d+", one["source"])
    seen = json.loads(
        subprocess.run(
            [sys.executable, "-I", "-c", STOCK_PREDICTIONS],
            capture_output=True,
            text=True,
            env=stock_env(config),
            cwd="/",
            check=True,
            timeout=120,
        ).stdout
    )
    assert seen["requests"] == sorted(requests) and "day" in seen["partitions"][0]


def test_files_a_dead_loader_left_after_its_commit_are_not_loaded_again(
    tmp_path: Path,
) -> None:
    config = make_config(tmp_path / "data")
    folder, _, now = serve_for_hours(config, 10)
    kept = tmp_path / "copies"
    shutil.copytree(folder, kept)
    master = MasterDataset(config)
    first = master.load_predictions(folder, now)
    assert first.rows > 0
    # The loader "died" after its commit, before removing: the files are back.
    for path in kept.glob("*.jsonl"):
        if not (folder / path.name).exists():
            shutil.copy(path, folder / path.name)
    again = master.load_predictions(folder, now)
    assert again.removed_after_crash == first.files and again.rows == 0
    assert len(loaded_requests(master)) == first.rows


def test_a_training_set_from_logged_features_joins_each_impression_to_its_served_vector(
    tmp_path: Path,
) -> None:
    config = make_config(tmp_path / "data")
    log = EventLog(config.log_dir)
    at = END_MS - 3 * HOUR
    lines = [
        event_line("imp-a", event_time=at + 100, request_id="req-1", item_id="i1"),
        event_line("imp-b", event_time=at + 100, request_id="req-1", item_id="i2"),
        event_line(
            "click", event_time=at + 60_000, request_id="req-1", item_id="i2", event_type="CLICK"
        ),
        event_line("imp-c", event_time=at + 200, item_id="i3"),  # no request: not logged
    ]
    Ingestor(log, clock=lambda: END_MS).ingest_lines(lines, "test")
    master = MasterDataset(config)
    master.load(log)
    now = [at]
    served = PredictionLog(config.data_dir / "serving", clock=lambda: now[0])
    served.write(
        "u1",
        Prediction("req-1", "v1", "production", [("i2", 0.7), ("i1", 0.2)]),
        candidates=["i1", "i2"],
        user_features=np.arange(len(FEATURE_NAMES), dtype=np.float64)[None, :],
        item_features=np.stack(
            [np.full(len(FEATURE_NAMES), 1.0), np.full(len(FEATURE_NAMES), 2.0)]
        ),
    )
    served.close()
    master.load_predictions(config.data_dir / "serving", at + HOLD_MS + 2 * HOUR)
    out = tmp_path / "logged.parquet"
    lineage = build_logged_training_set(config, at, at + HOUR, out)
    assert (lineage.features, lineage.rows, lineage.unmatched) == ("logged", 2, 1)
    assert lineage.predictions_snapshot_id is not None and read_lineage(out) == lineage
    rows = {r["item_id"]: r for r in pq.read_table(out).to_pylist()}
    assert (rows["i1"]["clicked"], rows["i2"]["clicked"]) == (0, 1)
    for item, value in (("i1", 1.0), ("i2", 2.0)):
        assert [rows[item][f"user_{n}"] for n in FEATURE_NAMES] == list(range(len(FEATURE_NAMES)))
        assert {rows[item][f"item_{n}"] for n in FEATURE_NAMES} == {value}


def test_consistency_from_the_log_passes_served_values_and_finds_an_injected_skew(
    tmp_path: Path,
) -> None:
    config = make_config(tmp_path / "data")
    log = EventLog(config.log_dir)
    t = END_MS - 2 * HOUR + 30_000  # answers half a minute into a minute
    early = [
        event_line(f"e{n}", event_time=t - n * 600_000, user_id=f"u{n % 2}", item_id=f"i{n % 3}")
        for n in range(1, 9)
    ]
    Ingestor(log, clock=lambda: t - 60_000).ingest_lines(early, "test")
    # Acknowledged 2 s before the answers: for u1 it is "in flight" when it is missing.
    recent = [event_line("late", event_time=t - 5_000, user_id="u1", item_id="i9")]
    Ingestor(log, clock=lambda: t - 2_000).ingest_lines(recent, "test")
    master = MasterDataset(config)
    master.load(log)
    events = oracle.master_events(config)
    acknowledged = events[events["ingest_time"].astype("int64") // 1000 <= t]
    end = t - t % 60_000 + 60_000  # the server reads the answer's minute whole

    def vector(frame: object, key: str, entity_id: str) -> np.ndarray:
        # As the server answers "now" at t: windows from floor_minute(t - W) to the end
        # of t's minute (an event sits exactly an hour before t: the edge counts).
        values = oracle.window_features(frame, key, entity_id, t, end)  # type: ignore[arg-type]
        return np.array([[values[n] for n in FEATURE_NAMES]])

    served = PredictionLog(config.data_dir / "serving", clock=lambda: t)
    for request, user, frame in (
        ("right", "u0", acknowledged),
        ("skewed", "u0", acknowledged),
        ("behind", "u1", events[events["event_id"] != "late"]),  # the speed layer lagged
    ):
        items = np.vstack([vector(acknowledged, "item_id", i) for i in ("i1", "i2")])
        user_values = vector(frame, "user_id", user)
        if request == "skewed":
            user_values[0, FEATURE_NAMES.index("clicks_1d")] += 1
        served.write(
            user,
            Prediction(request, "v1", "production", [("i1", 0.5), ("i2", 0.4)]),
            candidates=["i1", "i2"],
            user_features=user_values,
            item_features=items,
        )
    served.close()
    report = check_from_log(config, t - HOUR, t + HOUR, sample=10)
    assert (report.answers, report.checked) == (3, 3)
    assert report.compared == 3 * 3 * len(FEATURE_NAMES)
    assert dict(report.mismatches) == {"user_clicks_1d": 1}
    assert report.examples[0][:3] == ("user", "u0", "clicks_1d")
    assert report.in_flight > 0  # u1's late event, acknowledged 2 s before


def test_a_late_event_makes_the_recomputed_row_differ_from_the_vector_that_was_served(
    tmp_path: Path,
) -> None:
    """A click made before an answer but acknowledged after it (a device that was
    offline) is in the recomputed training row and not in the served vector: the logged
    row is what the model saw, and what it will see again when it serves."""
    config = make_config(tmp_path / "data")
    log = EventLog(config.log_dir)
    t = END_MS - 2 * HOUR + 30_000
    early = [
        event_line(
            f"e{n}",
            event_time=t - n * 600_000,
            user_id="u0",
            item_id=f"i{n % 3}",
            event_type="CLICK" if n % 2 else "IMPRESSION",
        )
        for n in range(1, 7)
    ]
    Ingestor(log, clock=lambda: t - 60_000).ingest_lines(early, "test")
    shown = [  # the answer's impression, and a click on it in the next minute
        event_line("imp", event_time=t + 100, user_id="u0", item_id="i1", request_id="req"),
        event_line(
            "clk",
            event_time=t + 70_000,
            user_id="u0",
            item_id="i1",
            request_id="req",
            event_type="CLICK",
        ),
    ]
    Ingestor(log, clock=lambda: t + 80_000).ingest_lines(shown, "test")
    late = [
        event_line("late", event_time=t - 180_000, user_id="u0", item_id="i2", event_type="CLICK")
    ]
    Ingestor(log, clock=lambda: t + 15 * 60_000).ingest_lines(late, "test")
    master = MasterDataset(config)
    master.load(log)
    events = oracle.master_events(config)
    acknowledged = events[events["ingest_time"].astype("int64") // 1000 <= t]
    end = t - t % 60_000 + 60_000  # the server reads the answer's minute whole

    def vector(frame: object, key: str, entity_id: str, at: int) -> np.ndarray:
        values = oracle.window_features(frame, key, entity_id, at, end)  # type: ignore[arg-type]
        return np.array([[values[n] for n in FEATURE_NAMES]])

    served_user = vector(acknowledged, "user_id", "u0", t)
    served = PredictionLog(config.data_dir / "serving", clock=lambda: t)
    served.write(
        "u0",
        Prediction("req", "v1", "production", [("i1", 0.6)]),
        candidates=["i1"],
        user_features=served_user,
        item_features=vector(acknowledged, "item_id", "i1", t),
    )
    served.close()
    master.load_predictions(config.data_dir / "serving", t + HOLD_MS + 2 * HOUR)

    logged_out, recomputed_out = tmp_path / "logged.parquet", tmp_path / "recomputed.parquet"
    build_logged_training_set(config, t - HOUR, t + HOUR, logged_out)
    build_training_set(config, t - HOUR, t + HOUR, recomputed_out)
    (logged,) = [r for r in pq.read_table(logged_out).to_pylist() if r["request_id"] == "req"]
    (recomputed,) = [
        r for r in pq.read_table(recomputed_out).to_pylist() if r["request_id"] == "req"
    ]
    assert logged["clicked"] == recomputed["clicked"] == 1
    # Logged: exactly the vector that was served.
    assert [logged[f"user_{n}"] for n in FEATURE_NAMES] == served_user[0].tolist()
    # Recomputed: point in time by event time, so the late click is in it.
    everything = oracle.window_features(events, "user_id", "u0", t + 100)
    assert [recomputed[f"user_{n}"] for n in FEATURE_NAMES] == pytest.approx(
        [everything[n] for n in FEATURE_NAMES]
    )
    for window in ("1h", "1d", "7d"):
        assert recomputed[f"user_clicks_{window}"] == logged[f"user_clicks_{window}"] + 1
    # And the served vector was right for what had been acknowledged: no skew to report.
    report = check_from_log(config, t - HOUR, t + HOUR, sample=10)
    assert report.checked == 1 and report.consistent and report.in_flight == 0
