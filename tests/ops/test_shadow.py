"""Shadow staging: ``saiki models compare`` against an independent computation on logged
answers and labelled impressions; the promotion gate of ``[models] require_shadow``."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from saiki.batch.master import MasterDataset
from saiki.batch.predictions import HOLD_MS
from saiki.core.config import SaikiConfig
from saiki.core.errors import PreconditionError
from saiki.core.eventlog import EventLog
from saiki.core.ingest import Ingestor
from saiki.ops.models import promote
from saiki.ops.shadow import TOP_K, compare, stage, verdict
from saiki.serving.model import ModelConfig, RankingModel, quantise
from saiki.serving.prediction_log import Prediction, PredictionLog
from saiki.serving.registry import ModelRegistry
from tests.conftest import END_MS, make_config
from tests.core.test_ingest import event_line

HOUR = 3_600_000
ITEMS = [f"i{n}" for n in range(12)]


def with_models(root: Path, **models: object) -> SaikiConfig:
    """A config whose [models] section is given; v1 in production, v2 a candidate."""
    config = make_config(root)
    config = dataclasses.replace(config, models=dataclasses.replace(config.models, **models))
    registry = ModelRegistry(config.data_dir)
    for _ in range(2):
        model = RankingModel(ModelConfig()).eval()
        registry.register(model, quantise(model), ModelConfig(), {"note": "test"}, {})
    registry.promote(1)
    return config


def serve_with_shadow(
    config: SaikiConfig, requests: int, shadow_is_truth: bool
) -> list[tuple[str, str, float, float, int]]:
    """Answers scored by v1 and, in shadow, v2, with impressions and clicks drawn from one
    of the two (the other is miscalibrated); returns (request, item, served, shadow,
    clicked) for every item shown."""
    rng = np.random.default_rng(11)
    at = END_MS - 3 * HOUR
    now = [at]
    log = PredictionLog(config.data_dir / "serving", clock=lambda: now[0])
    lines, shown = [], []
    for n in range(requests):
        request, user = f"req-{n}", f"u{n}"  # one answer per user: labels are its own
        truth = rng.uniform(0.02, 0.6, len(ITEMS))
        other = np.clip(truth * rng.uniform(1.5, 2.0, len(ITEMS)) + 0.05, 0.0, 0.99)
        served, shadow = (other, truth) if shadow_is_truth else (truth, other)
        order = np.argsort(-served, kind="stable")
        log.write(
            user,
            Prediction(request, "v1", "production", [(ITEMS[i], float(served[i])) for i in order]),
            candidates=ITEMS,
            model_ms=1.0,
            shadow=("v2", lambda shadow=shadow: shadow),
        )
        clicks = rng.random(len(ITEMS)) < truth
        for i in order.tolist():
            item = ITEMS[i]
            lines.append(
                event_line(
                    f"{request}-{item}",
                    event_time=now[0] + 100,
                    user_id=user,
                    item_id=item,
                    request_id=request,
                )
            )
            if clicks[i]:
                lines.append(
                    event_line(
                        f"{request}-{item}-c",
                        event_time=now[0] + 30_000,
                        user_id=user,
                        item_id=item,
                        request_id=request,
                        event_type="CLICK",
                    )
                )
            shown.append((request, item, float(served[i]), float(shadow[i]), int(clicks[i])))
        now[0] += 10_000
    log.close()
    Ingestor(EventLog(config.log_dir), clock=lambda: END_MS).ingest_lines(lines, "test")
    return shown


def expected_log_loss(labels: np.ndarray, scores: np.ndarray) -> float:
    p = np.clip(scores, 1e-7, 1 - 1e-7)
    return float(-np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p)))


def test_compare_matches_an_independent_computation_from_files_and_from_iceberg(
    tmp_path: Path,
) -> None:
    config = with_models(tmp_path / "data", shadow_minutes=0, shadow_min_labelled=100)
    stage(config, 2, share=1.0)
    shown = serve_with_shadow(config, 40, shadow_is_truth=True)
    served = np.array([s[2] for s in shown])
    shadow = np.array([s[3] for s in shown])
    labels = np.array([s[4] for s in shown], dtype=np.float64)
    overlaps = []
    for n in range(40):
        mine = [s for s in shown if s[0] == f"req-{n}"]  # in served order
        top_served = {s[1] for s in mine[:TOP_K]}
        top_shadow = {s[1] for s in sorted(mine, key=lambda s: -s[3])[:TOP_K]}
        overlaps.append(len(top_served & top_shadow) / TOP_K)

    report = compare(config, 2)
    assert (report.requests, report.pairs, report.labelled) == (40, 480, 480)
    assert report.clicks == int(labels.sum()) and report.served == "v1"
    assert report.correlation == pytest.approx(np.corrcoef(served, shadow)[0, 1])
    assert report.top_k_overlap == pytest.approx(np.mean(overlaps))
    assert report.production is not None and report.candidate is not None
    assert report.production.log_loss == pytest.approx(expected_log_loss(labels, served))
    assert report.candidate.log_loss == pytest.approx(expected_log_loss(labels, shadow))
    assert report.candidate.mean_score == pytest.approx(shadow.mean())
    # The shadow holds the true probabilities: better calibrated, lower log loss.
    assert report.candidate.calibration_error < report.production.calibration_error
    assert report.candidate.log_loss < report.production.log_loss
    assert verdict(config, report).passed

    # Once the files are in saiki.predictions, the same comparison from the table.
    MasterDataset(config).load_predictions(config.data_dir / "serving", END_MS + HOLD_MS + HOUR)
    assert not list((config.data_dir / "serving").glob("*.jsonl"))
    again = compare(config, 2)
    assert (again.requests, again.labelled, again.clicks) == (40, 480, report.clicks)
    assert again.candidate is not None
    assert again.candidate.log_loss == pytest.approx(report.candidate.log_loss)


def test_promotion_requires_a_shadow_period_that_passed(tmp_path: Path) -> None:
    config = with_models(
        tmp_path / "data", require_shadow=True, shadow_minutes=60, shadow_min_labelled=100
    )
    with pytest.raises(PreconditionError, match="not staged in shadow"):
        promote(config, 2)
    registry = ModelRegistry(config.data_dir)
    registry.stage_shadow(2, 1.0, END_MS)
    serve_with_shadow(config, 40, shadow_is_truth=False)  # the shadow is the worse one
    report = compare(config, 2)
    judged = verdict(config, report, now=END_MS + 10 * 60_000)
    assert not judged.passed
    assert any("10 of 60 minutes" in r for r in judged.reasons)
    assert any("log loss" in r for r in judged.reasons)
    with pytest.raises(PreconditionError, match="log loss"):
        promote(config, 2)
    assert registry.production() == 1 and registry.stage_of(2) == "shadow"
    promote(config, 2, force=True)  # by hand, forced: recorded as such by the CLI
    assert registry.production() == 2 and registry.shadow() is None


def test_a_better_shadow_passes_and_is_released(tmp_path: Path) -> None:
    config = with_models(
        tmp_path / "data", require_shadow=True, shadow_minutes=60, shadow_min_labelled=100
    )
    registry = ModelRegistry(config.data_dir)
    registry.stage_shadow(2, 1.0, END_MS - 2 * HOUR)
    serve_with_shadow(config, 20, shadow_is_truth=True)
    promote(config, 2)
    assert registry.production() == 2 and registry.stage_of(2) == "production"
    assert registry.shadow() is None and registry.rollback() == 1
