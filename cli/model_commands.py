"""``saiki train`` and ``saiki models …``: training, the registry's stages, A/B splits."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from saiki.cli.progress import print_table
from saiki.core.config import SaikiConfig, load_config
from saiki.core.errors import InvalidInputError, PreconditionError
from saiki.core.timeutil import MS_PER_DAY, format_iso, now_ms, parse_iso


def add_parsers(subparsers: Any) -> None:
    """Register ``saiki train`` and ``saiki models list|promote|rollback|experiment``."""
    train = subparsers.add_parser("train", help="train, evaluate and register a ranking model")
    train.add_argument(
        "--training-set",
        type=Path,
        default=None,
        help="a file from `saiki batch training-set` (default: build one)",
    )
    train.add_argument("--from", dest="from_", default=None, help="when building one")
    train.add_argument("--to", default=None, help="when building one")
    train.add_argument(
        "--holdout-from",
        default=None,
        help="evaluate on rows from this time on (default: the last day of the set)",
    )
    train.add_argument("--epochs", type=int, default=6)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument(
        "--promote-if-better",
        action="store_true",
        help="promote when its held-out AUC beats production's",
    )
    train.set_defaults(handler=run_train)

    models = subparsers.add_parser("models", help="the model registry")
    verbs = models.add_subparsers(dest="verb", metavar="VERB", required=True)
    verbs.add_parser("list", help="versions, stages and metrics").set_defaults(handler=run_list)
    promote = verbs.add_parser("promote", help="put a version in production")
    promote.add_argument("version", help="3 or v3")
    promote.set_defaults(handler=run_promote)
    verbs.add_parser("rollback", help="back to the previous production version").set_defaults(
        handler=run_rollback
    )
    experiment = verbs.add_parser("experiment", help="start or end an A/B split")
    experiment.add_argument(
        "--split", default=None, help="VARIANT=VERSION:SHARE,… e.g. control=1:0.5,treatment=2:0.5"
    )
    experiment.add_argument("--name", default="ab")
    experiment.add_argument("--end", action="store_true", help="end the running experiment")
    experiment.set_defaults(handler=run_experiment)


def _version(text: str) -> int:
    try:
        return int(text.lstrip("v"))
    except ValueError as exc:
        raise InvalidInputError("VERSION", f"not a version like 3 or v3: {text!r}") from exc


def default_training_set(config: SaikiConfig, from_ms: int | None, to_ms: int | None) -> Path:
    """Build a training set from the master dataset (all of it, after a day of warm-up)."""
    from saiki.batch.master import MasterDataset
    from saiki.batch.run import newest_cutoff
    from saiki.batch.training import build_training_set
    from saiki.core.eventlog import EventLog

    master = MasterDataset(config)
    master.load(EventLog(config.log_dir))
    snapshot = master.resolve_snapshot()
    if snapshot is None:
        raise PreconditionError("the master dataset is empty: ingest events first")
    to_ms = to_ms or newest_cutoff(master, snapshot)
    if from_ms is None:
        earliest = master.read(snapshot, ("event_time",)).column("event_time")
        import pyarrow.compute as pc

        first = int(pc.cast(pc.min(earliest), "int64").as_py()) // 1000
        from_ms = min(first + MS_PER_DAY, to_ms - MS_PER_DAY)
    out = config.data_dir / "training" / f"set-{now_ms()}.parquet"
    out.parent.mkdir(parents=True, exist_ok=True)
    lineage = build_training_set(config, from_ms, to_ms, out, snapshot_id=snapshot)
    print(
        f"training set {out}: {lineage.rows} impressions from {format_iso(from_ms)} to "
        f"{format_iso(to_ms)}"
    )
    return out


def run_train(args: argparse.Namespace) -> int:
    """``saiki train``."""
    from saiki.batch.training import read_lineage
    from saiki.serving.registry import ModelRegistry
    from saiki.serving.training import train_and_evaluate

    config = load_config(args.data_dir)
    path = args.training_set or default_training_set(
        config,
        parse_iso(args.from_, "--from") if args.from_ else None,
        parse_iso(args.to, "--to") if args.to else None,
    )
    holdout = parse_iso(args.holdout_from, "--holdout-from") if args.holdout_from else None
    model, quantised, report = train_and_evaluate(
        path, epochs=args.epochs, seed=args.seed, holdout_from_ms=holdout
    )
    registry = ModelRegistry(config.data_dir)
    production = registry.production()
    metrics = report.as_dict()
    if production is not None:
        # The model in production, scored on exactly the rows the new one is judged on.
        metrics["production_backtest"] = backtest(registry, production, path, holdout)
    lineage = {"training_set": str(path), **read_lineage(path).__dict__}
    from saiki.serving.model import ModelConfig

    entry = registry.register(model, quantised, ModelConfig(), lineage, metrics)
    print_report(entry.name, metrics, entry.artifacts)
    if args.promote_if_better:
        beats = production is None or (
            metrics["fp32"]["auc"] > metrics["production_backtest"]["auc"]
        )
        if beats:
            registry.promote(entry.version)
            print(f"promoted {entry.name} to production")
        else:
            print(f"{entry.name} does not beat production v{production}: kept as candidate")
    args.registered = entry.version  # for callers in-process (saiki demo)
    return 0


def backtest(
    registry: Any, version: int, path: Path, holdout_from_ms: int | None = None
) -> dict[str, float]:
    """A registered model's AUC and log loss on the held-out days of a training set."""
    from saiki.serving.training import auc, load_rows, log_loss, predict, split_by_time

    model, config = registry.load(version, "fp32")
    _, test, _ = split_by_time(load_rows(path), holdout_from_ms)
    scores = predict(model, config, test)
    return {
        "version": version,
        "auc": auc(test.labels, scores),
        "log_loss": log_loss(test.labels, scores),
    }


def print_report(name: str, metrics: dict[str, Any], artifacts: dict[str, Any]) -> None:
    """The training report as a table."""
    print(
        f"model {name}: trained on {metrics['rows_train']} impressions, held out "
        f"{metrics['rows_holdout']} from {format_iso(metrics['holdout_from_ms'])} "
        f"({metrics['positives_holdout']} clicks) in {metrics['seconds']}s"
    )
    rows = [
        (f"{name} fp32", metrics["fp32"]["auc"], metrics["fp32"]["log_loss"]),
        (f"{name} int8 (served)", metrics["int8"]["auc"], metrics["int8"]["log_loss"]),
        (
            "baseline: item smoothed CTR",
            metrics["baseline_item_ctr"]["auc"],
            metrics["baseline_item_ctr"]["log_loss"],
        ),
        (
            "baseline: logistic regression",
            metrics["baseline_logistic"]["auc"],
            metrics["baseline_logistic"]["log_loss"],
        ),
    ]
    if "production_backtest" in metrics:
        backtested = metrics["production_backtest"]
        rows.append(
            (
                f"production v{backtested['version']} (backtest)",
                backtested["auc"],
                backtested["log_loss"],
            )
        )
    print_table(
        ("scorer (same held-out rows)", "AUC", "log loss"),
        [(r[0], f"{r[1]:.4f}", f"{r[2]:.4f}") for r in rows],
    )
    latency = metrics["latency_ms_batch100"]
    print(
        f"int8 vs fp32: AUC {metrics['int8']['auc'] - metrics['fp32']['auc']:+.4f}, "
        f"{artifacts['int8']['bytes'] / 1e6:.2f} MB vs {artifacts['fp32']['bytes'] / 1e6:.2f} MB,"
        f" forward at batch 100 {latency['int8']:.3f} ms vs {latency['fp32']:.3f} ms"
    )


def run_list(args: argparse.Namespace) -> int:
    """``saiki models list``."""
    from saiki.serving.registry import ModelRegistry

    registry = ModelRegistry(load_config(args.data_dir).data_dir)
    rows = [
        (
            v.name,
            registry.stage_of(v.version),
            format_iso(v.created_ms),
            f"{v.metrics['fp32']['auc']:.4f}",
            f"{v.metrics['int8']['auc']:.4f}",
            v.lineage.get("snapshot_id", ""),
            v.spec_version,
        )
        for v in registry.versions()
    ]
    if not rows:
        print("no models yet: run `saiki train`")
        return 0
    print_table(("version", "stage", "created", "AUC fp32", "AUC int8", "snapshot", "spec"), rows)
    return 0


def run_promote(args: argparse.Namespace) -> int:
    """``saiki models promote V``."""
    from saiki.serving.registry import ModelRegistry

    registry = ModelRegistry(load_config(args.data_dir).data_dir)
    version = _version(args.version)
    registry.load(version)  # refuse to promote an artifact that fails its checksum
    previous = registry.promote(version)
    if previous == version:
        print(f"v{version} is already in production")
    else:
        print(f"v{version} is in production" + (f" (v{previous} archived)" if previous else ""))
    return 0


def run_rollback(args: argparse.Namespace) -> int:
    """``saiki models rollback``."""
    from saiki.serving.registry import ModelRegistry

    restored = ModelRegistry(load_config(args.data_dir).data_dir).rollback()
    print(f"rolled back: v{restored} is in production")
    return 0


def run_experiment(args: argparse.Namespace) -> int:
    """``saiki models experiment --split control=1:0.5,treatment=2:0.5`` or ``--end``."""
    from saiki.serving.experiment import Experiment, Variant, write_experiment

    root = load_config(args.data_dir).data_dir / "models"
    if args.end:
        write_experiment(root, None)
        print("experiment ended: production serves everyone")
        return 0
    if not args.split:
        raise InvalidInputError("--split", "give VARIANT=VERSION:SHARE,… or --end")
    variants = []
    for part in args.split.split(","):
        try:
            name, rest = part.split("=")
            version, share = rest.split(":")
            variants.append(
                Variant(name, None if version == "production" else _version(version), float(share))
            )
        except ValueError as exc:
            raise InvalidInputError("--split", f"cannot read {part!r}") from exc
    experiment = Experiment(args.name, tuple(variants))
    write_experiment(root, experiment)
    print(json.dumps({"experiment": args.name, "variants": [v.__dict__ for v in variants]}))
    return 0
