"""Shadow staging before release: ``saiki models stage V`` and ``saiki models compare V``.

A staged version scores a share of live requests beside production, off the response
path (``serving/predictor.py``), and its scores are logged with the answer. ``compare``
reads those answers (the Iceberg table ``saiki.predictions`` and the serving folder's
files not loaded yet) and judges the shadow against what served the same requests:

* agreement on every (request, candidate shown): Pearson correlation of the scores and
  the overlap of the two top-k lists;
* on the items production showed that have a label (an impression carrying the answer's
  ``request_id``, clicked or not, from the master dataset after a load): log loss and
  calibration (mean score against the observed click rate, and the expected calibration
  error over ten bins) of both;
* the forward pass of each, as the servers timed it.

The verdict, which ``[models] require_shadow`` makes a condition of promotion: staged for
``shadow_minutes``, at least ``shadow_min_labelled`` labelled items, and the shadow's log
loss on them at most production's plus ``shadow_tolerance``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.expressions import EqualTo

from saiki.batch.logged_training import labelled_impressions
from saiki.batch.master import MasterDataset
from saiki.batch.predictions import PREDICTIONS_TABLE, read_files
from saiki.core import audit
from saiki.core.config import SaikiConfig
from saiki.core.errors import PreconditionError
from saiki.core.eventlog import EventLog
from saiki.core.prediction_files import PATTERN
from saiki.core.timeutil import MS_PER_MINUTE, format_iso, now_ms
from saiki.ops.console import print_table
from saiki.serving.registry import ModelRegistry, Shadow
from saiki.serving.training import log_loss

TOP_K = 10
_COLUMNS = ("time", "request_id", "model_version", "items", "scores", "model_ms")
_SHADOW_COLUMNS = (*_COLUMNS, "shadow_version", "shadow_scores", "shadow_ms")
_PLOT_POINTS = 2_000


@dataclass(frozen=True)
class Side:
    """How one scorer did on the labelled items."""

    log_loss: float
    mean_score: float
    calibration_error: float  # expected calibration error, ten equal-width bins
    forward_ms_p50: float
    forward_ms_p99: float


@dataclass(frozen=True)
class ShadowReport:
    """A shadow version against what served the same requests."""

    shadow: str
    served: str  # the version(s) that answered these requests
    staged_since_ms: int | None
    requests: int
    pairs: int
    correlation: float
    top_k_overlap: float
    labelled: int
    clicks: int
    production: Side | None
    candidate: Side | None
    # Up to 2,000 (served score, shadow score) pairs, for the report's plot.
    points: list[tuple[float, float]] = field(default_factory=list)

    @property
    def click_rate(self) -> float:
        """The observed click rate on the labelled items."""
        return self.clicks / self.labelled if self.labelled else float("nan")

    def summary(self, judged: Verdict) -> dict[str, Any]:
        """The figures as plain JSON values (the demo's summary, the report's plot)."""
        sides = {
            label: asdict(side)
            for label, side in (("served_side", self.production), ("shadow_side", self.candidate))
            if side is not None
        }
        return {
            "shadow": self.shadow,
            "served": self.served,
            "requests": self.requests,
            "pairs": self.pairs,
            "correlation": self.correlation,
            "top_k": TOP_K,
            "top_k_overlap": self.top_k_overlap,
            "labelled": self.labelled,
            "clicks": self.clicks,
            **sides,
            "passed": judged.passed,
            "reasons": list(judged.reasons),
            "points": self.points,
        }


@dataclass(frozen=True)
class Verdict:
    """Whether a shadow period allows promotion, and why not."""

    passed: bool
    reasons: tuple[str, ...]


def stage(config: SaikiConfig, version: int, share: float | None = None) -> Shadow:
    """Stage a version in shadow; servers pick it up within their reload interval."""
    chosen = config.models.shadow_share if share is None else share
    if not 0.0 < chosen <= 1.0:
        raise PreconditionError(f"--share must be within (0, 1], got {chosen}")
    staged = ModelRegistry.open(config).stage_shadow(version, chosen, now_ms())
    audit.record(config.data_dir, "shadow", version=version, share=chosen)
    return staged


def end_stage(config: SaikiConfig) -> Shadow | None:
    """End the shadow stage (the version stays registered, a candidate)."""
    ended = ModelRegistry.open(config).end_shadow()
    if ended is not None:
        audit.record(config.data_dir, "shadow-end", version=ended.version)
    return ended


def shadow_answers(config: SaikiConfig, name: str, master: MasterDataset) -> pa.Table:
    """Every logged answer the shadow ``name`` (``v3``) also scored."""
    table = master.table(PREDICTIONS_TABLE)
    loaded = (
        table.scan(row_filter=EqualTo("shadow_version", name), selected_fields=_SHADOW_COLUMNS)
        .to_arrow()
        .select(list(_SHADOW_COLUMNS))
        if table.current_snapshot() is not None
        else None
    )
    folder = config.data_dir / "serving"
    files, _, _ = read_files(sorted(folder.glob(PATTERN)) if folder.exists() else [])
    recent = files.select(list(_SHADOW_COLUMNS))
    recent = recent.filter(pc.equal(recent.column("shadow_version"), name))
    if loaded is None or loaded.num_rows == 0:
        return recent
    return pa.concat_tables([loaded.cast(recent.schema), recent])


def compare(config: SaikiConfig, version: int, *, load: bool = True) -> ShadowReport:
    """Judge ``version``'s shadow scores against the scores served with them."""
    registry = ModelRegistry.open(config)
    registry.get(version)
    staged = registry.shadow()
    master = MasterDataset(config)
    if load:  # the newest impressions and clicks are the labels
        master.load(EventLog(config.log_dir))
    name = f"v{version}"
    answers = shadow_answers(config, name, master)
    since = staged.since_ms if staged is not None and staged.version == version else None
    if answers.num_rows == 0:
        return ShadowReport(name, "-", since, 0, 0, float("nan"), float("nan"), 0, 0, None, None)
    served = pc.unique(answers.column("model_version")).to_pylist()
    # One row per (request, item shown), both scores.
    parents = pc.list_parent_indices(answers.column("items")).to_numpy()
    pairs = pa.table(
        {
            "request_id": pc.take(answers.column("request_id"), pa.array(parents)),
            "item_id": pc.list_flatten(answers.column("items")),
            "served": pc.list_flatten(answers.column("scores")),
            "shadow": pc.list_flatten(answers.column("shadow_scores")),
        }
    )
    served_scores = pairs.column("served").to_numpy()
    shadow_scores = pairs.column("shadow").to_numpy()
    correlation = (
        float(np.corrcoef(served_scores, shadow_scores)[0, 1])
        if len(pairs) > 1 and served_scores.std() > 0 and shadow_scores.std() > 0
        else float("nan")
    )
    labelled = _labelled(master, answers, pairs)
    labels = labelled.column("clicked").to_numpy().astype(np.float64)
    model_ms = _finite(answers.column("model_ms"))
    shadow_ms = _finite(answers.column("shadow_ms"))
    has_labels = len(labels) > 0
    rng = np.random.default_rng(0)
    sample = rng.choice(len(pairs), min(len(pairs), _PLOT_POINTS), replace=False)
    return ShadowReport(
        shadow=name,
        served=", ".join(str(s) for s in served),
        staged_since_ms=since,
        requests=answers.num_rows,
        pairs=len(pairs),
        correlation=correlation,
        top_k_overlap=_top_k_overlap(answers),
        labelled=len(labels),
        clicks=int(labels.sum()),
        production=_side(labels, labelled.column("served").to_numpy(), model_ms)
        if has_labels
        else None,
        candidate=_side(labels, labelled.column("shadow").to_numpy(), shadow_ms)
        if has_labels
        else None,
        points=[
            (float(served_scores[i]), float(shadow_scores[i])) for i in np.sort(sample).tolist()
        ],
    )


def verdict(config: SaikiConfig, report: ShadowReport, now: int | None = None) -> Verdict:
    """The shadow period's verdict under ``[models]``: promotion allowed or not, and why."""
    rules = config.models
    reasons = []
    if report.staged_since_ms is None:
        reasons.append(f"{report.shadow} is not staged in shadow")
    else:
        minutes = ((now or now_ms()) - report.staged_since_ms) / MS_PER_MINUTE
        if minutes < rules.shadow_minutes:
            reasons.append(f"in shadow {minutes:.0f} of {rules.shadow_minutes} minutes")
    if report.labelled < rules.shadow_min_labelled:
        reasons.append(f"{report.labelled} of {rules.shadow_min_labelled} labelled items")
    if report.production is not None and report.candidate is not None:
        worse = report.candidate.log_loss - report.production.log_loss
        if worse > rules.shadow_tolerance:
            reasons.append(
                f"log loss {report.candidate.log_loss:.4f} against production's "
                f"{report.production.log_loss:.4f} (tolerance {rules.shadow_tolerance})"
            )
    return Verdict(not reasons, tuple(reasons))


def _labelled(master: MasterDataset, answers: pa.Table, pairs: pa.Table) -> pa.Table:
    """The pairs whose item was shown (an impression with the answer's request_id), with
    its label."""
    snapshot = master.resolve_snapshot()
    times = pc.cast(answers.column("time"), pa.int64()).to_numpy() // 1000
    if snapshot is None:
        return pairs.append_column("clicked", pa.array([], pa.int8())).slice(0, 0)
    impressions = labelled_impressions(
        master, snapshot, int(times.min()), int(times.max()) + MS_PER_MINUTE * 30
    )
    shown = (
        impressions.filter(pc.is_valid(impressions.column("request_id")))
        .select(["request_id", "item_id", "clicked"])
        .group_by(["request_id", "item_id"])
        .aggregate([("clicked", "max")])
        .rename_columns(["request_id", "item_id", "clicked"])
    )
    return pairs.join(shown, ["request_id", "item_id"], join_type="inner")


def _side(
    labels: npt.NDArray[np.float64], scores: npt.NDArray[np.float64], forward_ms: list[float]
) -> Side:
    bins = np.minimum((scores * 10).astype(np.int64), 9)
    error = 0.0
    for b in np.unique(bins):
        inside = bins == b
        error += inside.mean() * abs(scores[inside].mean() - labels[inside].mean())
    p50, p99 = np.percentile(forward_ms, [50, 99]) if forward_ms else (np.nan, np.nan)
    return Side(log_loss(labels, scores), float(scores.mean()), float(error), p50, p99)


def _top_k_overlap(answers: pa.Table) -> float:
    """Mean share of the served top k (the first k items: answers are ranked) that are in
    the shadow's top k of the same items."""
    overlaps = []
    for scores in answers.column("shadow_scores").to_pylist():
        k = min(TOP_K, len(scores))
        if k == 0:
            continue
        shadow_top = np.argsort(-np.asarray(scores), kind="stable")[:k]
        overlaps.append(np.count_nonzero(shadow_top < k) / k)
    return float(np.mean(overlaps)) if overlaps else float("nan")


def _finite(column: pa.ChunkedArray) -> list[float]:
    return [float(v) for v in column.to_pylist() if v is not None]


def print_comparison(report: ShadowReport, judged: Verdict) -> None:
    """``saiki models compare``'s report."""
    if report.requests == 0:
        print(f"no answer was scored by {report.shadow} in shadow yet")
        print("verdict: not passed: " + "; ".join(judged.reasons))
        return
    since = (
        f", staged since {format_iso(report.staged_since_ms)}"
        if report.staged_since_ms is not None
        else ""
    )
    print(
        f"shadow {report.shadow} against {report.served} on {report.requests:,} requests "
        f"({report.pairs:,} items shown){since}"
    )
    print(
        f"agreement: score correlation {report.correlation:.3f}, "
        f"top-{TOP_K} overlap {report.top_k_overlap:.1%}"
    )
    if report.production is None or report.candidate is None:
        print("no shown item has a label yet (impressions carrying the request_id)")
    else:
        print(
            f"on {report.labelled:,} shown items with a label ({report.clicks:,} clicks, "
            f"click rate {report.click_rate:.2%}):"
        )
        print_table(
            ("scorer", "log loss", "mean score", "calibration error", "forward p50 / p99 ms"),
            [
                (
                    label,
                    f"{side.log_loss:.4f}",
                    f"{side.mean_score:.4f}",
                    f"{side.calibration_error:.4f}",
                    f"{side.forward_ms_p50:.2f} / {side.forward_ms_p99:.2f}",
                )
                for label, side in (
                    (f"served ({report.served})", report.production),
                    (f"shadow {report.shadow}", report.candidate),
                )
            ],
        )
    print("verdict: " + ("passed" if judged.passed else "not passed: " + "; ".join(judged.reasons)))
