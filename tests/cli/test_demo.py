"""``saiki demo --quick`` end to end: every real component, the whole loop, one run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from saiki.serving.monitor import read_predictions
from tests.conftest import ROOT, make_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str, dict[str, Any]]]:
    """Run the quick demo once; yields (data dir, its output, its summary)."""
    data_dir = tmp_path_factory.mktemp("demo") / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAIKI_")}
    done = subprocess.run(
        [sys.executable, "-m", "saiki.cli.main", "--data-dir", str(data_dir), "demo", "--quick"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((data_dir / "demo" / "summary.json").read_text())
    yield data_dir, done.stdout, summary


def test_v2_is_promoted_exactly_when_its_backtest_beats_v1(
    demo: tuple[Path, str, dict[str, Any]],
) -> None:
    _, output, summary = demo
    v2 = next(v for v in summary["versions"] if v["version"] == summary["v2"])
    beats = v2["auc_fp32"] > v2["backtest_of_production"]["auc"]
    assert summary["v2_promoted"] == beats
    assert (v2["stage"] == "production") == beats
    assert ("winner: v2" in output) == beats


def test_every_served_event_reached_the_master_dataset_exactly_once(
    demo: tuple[Path, str, dict[str, Any]],
) -> None:
    _, _, summary = demo
    assert summary["events_sent"] > 1000
    assert summary["served_events_in_master"] == summary["events_sent"]
    assert summary["served_events_distinct"] == summary["events_sent"]
    assert summary["request_errors"] == 0


def test_the_ab_log_attributes_every_click_to_the_variant_that_served_it(
    demo: tuple[Path, str, dict[str, Any]],
) -> None:
    data_dir, _, summary = demo
    from saiki.batch.master import MasterDataset

    assert set(summary["ab"]) == {"control", "treatment"}
    assert all(arm["impressions"] > 300 for arm in summary["ab"].values())
    served: dict[str, tuple[str, str]] = {}
    for record in read_predictions(data_dir / "serving", 0):
        served[str(record["request_id"])] = (str(record["variant"]), str(record["model_version"]))
    master = MasterDataset(make_config(data_dir))
    events = master.read(master.resolve_snapshot(), ("event_type", "request_id", "variant"))
    clicks = events.filter(events.column("variant").is_valid()).to_pylist()
    clicks = [c for c in clicks if c["event_type"] == "CLICK"]
    assert clicks
    by_variant: dict[str, int] = {}
    for click in clicks:
        variant, _model = served[click["request_id"]]  # every click's ranking is logged
        assert variant == click["variant"]
        by_variant[variant] = by_variant.get(variant, 0) + 1
    for name, arm in summary["ab"].items():
        assert by_variant[name] >= arm["clicks"]  # plus the warm-up visits before each phase


def test_the_monitor_flags_the_taste_change_for_yesterdays_model(
    demo: tuple[Path, str, dict[str, Any]],
) -> None:
    _, _, summary = demo
    v1 = summary["monitor"]["v1"]
    assert v1["production"] == 1
    assert v1["retrain_due"]
    # The live CTR fell below what v1's own scores promised for the items it showed.
    assert v1["live_ctr"] < v1["expected_ctr"]


def test_the_demo_leaves_no_process_and_writes_a_report(
    demo: tuple[Path, str, dict[str, Any]],
) -> None:
    data_dir, output, summary = demo
    mine = [
        p.info["pid"]
        for p in psutil.process_iter(["pid", "cmdline"])
        if str(data_dir) in " ".join(p.info["cmdline"] or [])
    ]
    assert mine == []
    report = data_dir / "report"
    page = (report / "index.html").read_text()
    for png in ("models.png", "ctr.png", "freshness.png", "latency.png"):
        assert (report / png).stat().st_size > 10_000
        assert png in page
    assert len(summary["freshness_ms"]) >= 10
    assert summary["consistency"]["compared"] > 0
    assert summary["consistency"]["mismatched"] == 0
    assert f"report: {report / 'index.html'}" in output
