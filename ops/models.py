"""Train-and-promote: build a training set, train, backtest against production, register,
and promote only on a win; and the A/B split that serves two versions side by side."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyarrow.compute as pc

from saiki.batch.master import MasterDataset
from saiki.batch.run import newest_cutoff
from saiki.batch.training import TrainingSetLineage, build_training_set, read_lineage
from saiki.core import audit
from saiki.core.config import SaikiConfig
from saiki.core.errors import InvalidInputError, PreconditionError
from saiki.core.eventlog import EventLog
from saiki.core.timeutil import format_iso, now_ms
from saiki.ops.console import print_table
from saiki.ops.shadow import compare, stage, verdict
from saiki.serving.experiment import Experiment, Variant, write_experiment
from saiki.serving.model import ModelConfig
from saiki.serving.registry import ModelRegistry, ModelVersion
from saiki.serving.training import (
    auc,
    cap_rows,
    load_rows,
    log_loss,
    predict,
    split_by_time,
    train_and_evaluate,
    training_from,
)


@dataclass(frozen=True)
class TrainRequest:
    """What to train on and whether to promote; times in epoch ms."""

    training_set: Path | None = None
    from_ms: int | None = None
    to_ms: int | None = None
    holdout_from_ms: int | None = None
    epochs: int = 6
    seed: int = 0
    promote_if_better: bool = False


@dataclass(frozen=True)
class TrainOutcome:
    """The registered version, whether it was promoted, and the production it faced."""

    entry: ModelVersion
    metrics: dict[str, Any]
    training_set: Path
    production_before: int | None
    promoted: bool
    staged: bool = False  # won, and staged in shadow (``[models] require_shadow``)


def default_training_set(
    config: SaikiConfig, from_ms: int | None, to_ms: int | None
) -> tuple[Path, TrainingSetLineage]:
    """Build a training set from the master dataset: after a day of warm-up, at most
    ``[models] training_days`` up to the newest cutoff."""
    master = MasterDataset(config)
    master.load(EventLog(config.log_dir))
    snapshot = master.resolve_snapshot()
    if snapshot is None:
        raise PreconditionError("the master dataset is empty: ingest events first")
    to_ms = to_ms or newest_cutoff(master, snapshot)
    if from_ms is None:
        earliest = master.read(snapshot, ("event_time",)).column("event_time")
        first = int(pc.cast(pc.min(earliest), "int64").as_py()) // 1000
        from_ms = training_from(first, to_ms, config.models.training_days)
    out = config.data_dir / "training" / f"set-{now_ms()}.parquet"
    out.parent.mkdir(parents=True, exist_ok=True)
    lineage = build_training_set(config, from_ms, to_ms, out, snapshot_id=snapshot)
    return out, lineage


def backtest(
    registry: ModelRegistry,
    version: int,
    path: Path,
    holdout_from_ms: int | None = None,
    max_holdout_rows: int | None = None,
) -> dict[str, float]:
    """A registered model's AUC and log loss on the held-out days of a training set (the
    same sample of them ``train_and_evaluate`` judged on, given the same cap)."""
    model, config = registry.load(version, "fp32")
    _, test, _ = split_by_time(load_rows(path), holdout_from_ms)
    test = cap_rows(test, max_holdout_rows)
    scores = predict(model, config, test)
    return {
        "version": version,
        "auc": auc(test.labels, scores),
        "log_loss": log_loss(test.labels, scores),
    }


def train_and_register(
    config: SaikiConfig, request: TrainRequest, training_set: Path | None = None
) -> TrainOutcome:
    """Train on ``training_set`` (or the request's, or a new one), backtest production on
    the same held-out rows, register the new version, and promote it if asked and it wins."""
    path = training_set or request.training_set
    if path is None:
        path, _ = default_training_set(config, request.from_ms, request.to_ms)
    model, quantised, report = train_and_evaluate(
        path,
        epochs=request.epochs,
        seed=request.seed,
        holdout_from_ms=request.holdout_from_ms,
        max_train_rows=config.models.max_train_rows,
        max_holdout_rows=config.models.max_holdout_rows,
    )
    registry = ModelRegistry.open(config)
    production = registry.production()
    metrics = report.as_dict()
    if production is not None:
        # The model in production, scored on exactly the rows the new one is judged on.
        metrics["production_backtest"] = backtest(
            registry, production, path, request.holdout_from_ms, config.models.max_holdout_rows
        )
    lineage = {"training_set": str(path), **read_lineage(path).__dict__}
    entry = registry.register(model, quantised, ModelConfig(), lineage, metrics)
    promoted = staged = False
    if request.promote_if_better and (
        production is None or metrics["fp32"]["auc"] > metrics["production_backtest"]["auc"]
    ):
        if config.models.require_shadow and production is not None:
            # Released only after a shadow period with no regression (`saiki models
            # compare --promote`, scheduled by `saiki up`).
            stage(config, entry.version)
            staged = True
        else:
            promote(config, entry.version, reason="won its backtest")
            promoted = True
    return TrainOutcome(entry, metrics, path, production, promoted, staged)


def parse_version(text: str) -> int:
    """``3`` or ``v3`` as a version number."""
    try:
        return int(text.lstrip("v"))
    except ValueError as exc:
        raise InvalidInputError("VERSION", f"not a version like 3 or v3: {text!r}") from exc


def parse_split(name: str, split: str) -> Experiment:
    """``control=1:0.5,treatment=2:0.5`` as an experiment (``production`` for a version
    means whatever is in production)."""
    variants = []
    for part in split.split(","):
        try:
            variant, rest = part.split("=")
            version, share = rest.split(":")
            chosen = None if version == "production" else parse_version(version)
            variants.append(Variant(variant, chosen, float(share)))
        except ValueError as exc:
            raise InvalidInputError("--split", f"cannot read {part!r}") from exc
    return Experiment(name, tuple(variants))


def set_experiment(config: SaikiConfig, experiment: Experiment | None) -> None:
    """Start an A/B split (servers pick it up within their reload interval), or end it."""
    write_experiment(config.data_dir / "models", experiment)
    if experiment is None:
        audit.record(config.data_dir, "experiment-end")
    else:
        variants = [asdict(v) for v in experiment.variants]
        audit.record(config.data_dir, "experiment", name=experiment.name, variants=variants)


def promote(
    config: SaikiConfig, version: int, reason: str = "", *, force: bool = False
) -> int | None:
    """Put a version in production (its artifacts verified first); returns the previous.
    With ``[models] require_shadow``, only after a shadow period that passed (unless
    ``force``)."""
    registry = ModelRegistry.open(config)
    registry.load(version)  # refuse to promote an artifact that fails its checksum
    if config.models.require_shadow and not force and registry.production() not in {None, version}:
        judged = verdict(config, compare(config, version))
        if not judged.passed:
            raise PreconditionError(
                f"v{version} has not passed a shadow period: {'; '.join(judged.reasons)} "
                f"(`saiki models stage {version}`, `saiki models compare {version}`; "
                "--force overrides)"
            )
    previous = registry.promote(version)
    audit.record(config.data_dir, "promote", version=version, previous=previous, reason=reason)
    return previous


def rollback(config: SaikiConfig) -> int:
    """Back to the previous production version; returns it."""
    restored = ModelRegistry.open(config).rollback()
    audit.record(config.data_dir, "rollback", version=restored)
    return restored


def _of(metrics: dict[str, Any], key: str) -> str:
    """`` (a sample of N)`` when a cap sampled that side, else nothing."""
    available = metrics.get(f"{key}_available", 0)
    return f" (a sample of {available})" if available > metrics[key] else ""


def print_training_report(outcome: TrainOutcome) -> None:
    """The training report: every scorer on the same held-out rows, int8 against fp32."""
    name, metrics, artifacts = outcome.entry.name, outcome.metrics, outcome.entry.artifacts
    print(
        f"model {name}: trained on {metrics['rows_train']}{_of(metrics, 'rows_train')} "
        f"impressions, held out {metrics['rows_holdout']}{_of(metrics, 'rows_holdout')} "
        f"from {format_iso(metrics['holdout_from_ms'])} "
        f"({metrics['positives_holdout']} clicks) in {metrics['seconds']}s"
    )
    scorers = [
        (f"{name} fp32", metrics["fp32"]),
        (f"{name} int8 (served)", metrics["int8"]),
        ("baseline: item smoothed CTR", metrics["baseline_item_ctr"]),
        ("baseline: logistic regression", metrics["baseline_logistic"]),
    ]
    if "production_backtest" in metrics:
        backtested = metrics["production_backtest"]
        scorers.append((f"production v{backtested['version']} (backtest)", backtested))
    print_table(
        ("scorer (same held-out rows)", "AUC", "log loss"),
        [(label, f"{m['auc']:.4f}", f"{m['log_loss']:.4f}") for label, m in scorers],
    )
    if "threshold" in metrics:
        chosen = metrics["threshold"]
        print(
            f"operating threshold {chosen['min_score']:.4f}: on the held-out rows the items "
            f"scored at or above it were clicked {chosen['precision']:.1%} of the time "
            f"(target {chosen['target_precision']:.0%}), {chosen['recall']:.1%} of all clicks"
        )
    latency = metrics["latency_ms_batch100"]
    print(
        f"int8 vs fp32: AUC {metrics['int8']['auc'] - metrics['fp32']['auc']:+.4f}, "
        f"{artifacts['int8']['bytes'] / 1e6:.2f} MB vs {artifacts['fp32']['bytes'] / 1e6:.2f} MB,"
        f" forward at batch 100 {latency['int8']:.3f} ms vs {latency['fp32']:.3f} ms"
    )
    if outcome.promoted:
        print(f"promoted {name} to production")
    elif outcome.staged:
        print(f"{name} beats production: staged in shadow, promoted after a shadow period")
    elif outcome.production_before is not None and "production_backtest" in metrics:
        print(f"{name} does not beat production v{outcome.production_before}: kept as candidate")
