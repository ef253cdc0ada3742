"""The report is written from a summary object, escapes what it shows, and reuses a check."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from saiki.batch.consistency import ConsistencyReport
from saiki.ops.report import write_report
from saiki.ops.summary import DemoSummary
from tests.conftest import make_config


def _summary() -> DemoSummary:
    return DemoSummary(
        versions=[],
        v2=2,
        v2_promoted=False,
        live_v1={"impressions": 0, "clicks": 0, "ctr": 0.0},
        ab={},
        events_sent=0,
        served_events_in_master=0,
        served_events_distinct=0,
        predict_ms=[1.0, 2.0, 3.0],
        freshness_ms=[400.0, 500.0],
        request_errors=0,
        consistency={"compared": 0, "mismatched": 0},
    )


def test_the_report_renders_the_given_summary_and_check(tmp_path: Path) -> None:
    config = make_config(tmp_path / "data")
    check = ConsistencyReport(query_ms=1_764_000_000_000, compared=12)
    check.mismatches["<clicks_1h>"] = 3
    page = write_report(config, _summary(), check).read_text()
    assert "12 values compared" in page
    assert "&lt;clicks_1h&gt;" in page and "<clicks_1h>" not in page  # escaped
    assert "3 mismatched" in page
    for png in ("freshness.png", "latency.png", "ctr.png"):
        assert (config.data_dir / "report" / png).stat().st_size > 1000


def test_a_saved_summary_comes_back_equal(tmp_path: Path) -> None:
    summary = _summary()
    assert DemoSummary.load(tmp_path) is None
    summary.save(tmp_path)
    assert DemoSummary.load(tmp_path) == summary


def test_the_report_shows_the_shadow_period_and_the_log_consistency(tmp_path: Path) -> None:
    config = make_config(tmp_path / "data")
    side = {
        "log_loss": 0.31,
        "mean_score": 0.12,
        "calibration_error": 0.02,
        "forward_ms_p50": 0.4,
        "forward_ms_p99": 0.9,
    }
    summary = dataclasses.replace(
        _summary(),
        shadow={
            "shadow": "v2",
            "served": "v1",
            "requests": 40,
            "pairs": 480,
            "correlation": 0.87,
            "top_k": 10,
            "top_k_overlap": 0.8,
            "labelled": 480,
            "clicks": 61,
            "served_side": side,
            "shadow_side": {**side, "log_loss": 0.29},
            "passed": False,
            "reasons": ["in shadow 3 of 60 minutes"],
            "points": [[0.1 * n, 0.09 * n] for n in range(10)],
        },
        log_consistency={
            "answers": 9,
            "checked": 9,
            "compared": 270,
            "in_flight": 2,
            "mismatched": 0,
        },
    )
    page = write_report(config, summary, ConsistencyReport(query_ms=1_764_000_000_000)).read_text()
    assert "v2 scored 40 requests in shadow beside v1" in page
    assert "not passed (in shadow 3 of 60 minutes)" in page
    assert "<td>0.2900</td>" in page and "<td>0.3100</td>" in page
    assert (config.data_dir / "report" / "shadow.png").stat().st_size > 1000
    assert "270 logged feature values of 9 answers" in page
