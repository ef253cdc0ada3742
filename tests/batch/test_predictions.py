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

from saiki.batch.master import MasterDataset
from saiki.batch.predictions import HOLD_MS, PREDICTIONS_TABLE
from saiki.core.config import SaikiConfig
from saiki.serving.monitor import read_predictions
from saiki.serving.predictor import Prediction, PredictionLog
from tests.batch.test_master import stock_env
from tests.conftest import make_config

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
