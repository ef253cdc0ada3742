"""``saiki train`` and ``saiki models …``: training, the registry's stages, A/B splits."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from saiki.core.config import load_config
from saiki.core.errors import InvalidInputError
from saiki.core.timeutil import format_iso, parse_iso
from saiki.ops.console import print_table


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
    train.set_defaults(handler=run_train, job_name="retrain")

    models = subparsers.add_parser("models", help="the model registry")
    verbs = models.add_subparsers(dest="verb", metavar="VERB", required=True)
    verbs.add_parser("list", help="versions, stages and metrics").set_defaults(handler=run_list)
    promote = verbs.add_parser("promote", help="put a version in production")
    promote.add_argument("version", help="3 or v3")
    promote.add_argument("--force", action="store_true", help="even without a passed shadow period")
    promote.set_defaults(handler=run_promote)
    stage = verbs.add_parser(
        "stage", help="shadow a version: it scores live requests beside production"
    )
    stage.add_argument("version", nargs="?", help="3 or v3")
    stage.add_argument(
        "--share", type=float, default=None, help="of requests ([models] shadow_share)"
    )
    stage.add_argument("--end", action="store_true", help="end the shadow stage")
    stage.set_defaults(handler=run_stage)
    compare = verbs.add_parser(
        "compare", help="a shadow version against production on the same requests"
    )
    compare.add_argument("version", nargs="?", help="3 or v3 (default: the staged one)")
    # A run with --promote is the scheduled job `shadow` (it keeps a status record).
    compare.add_argument(
        "--promote",
        action="store_const",
        const="shadow",
        dest="job_name",
        default=None,
        help="promote it if its shadow period passed",
    )
    compare.set_defaults(handler=run_compare)
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


def run_train(args: argparse.Namespace) -> int:
    """``saiki train``."""
    from saiki.ops.models import TrainRequest, print_training_report, train_and_register

    request = TrainRequest(
        training_set=args.training_set,
        from_ms=parse_iso(args.from_, "--from") if args.from_ else None,
        to_ms=parse_iso(args.to, "--to") if args.to else None,
        holdout_from_ms=parse_iso(args.holdout_from, "--holdout-from")
        if args.holdout_from
        else None,
        epochs=args.epochs,
        seed=args.seed,
        promote_if_better=args.promote_if_better,
    )
    print_training_report(train_and_register(load_config(args.data_dir), request))
    return 0


def run_list(args: argparse.Namespace) -> int:
    """``saiki models list``."""
    from saiki.serving.registry import ModelRegistry

    registry = ModelRegistry.open(load_config(args.data_dir))
    rows = [
        (
            v.name,
            registry.stage_of(v.version),
            format_iso(v.created_ms),
            f"{v.metrics['fp32']['auc']:.4f}",
            f"{v.metrics['int8']['auc']:.4f}",
            _threshold(v.metrics),
            v.lineage.get("snapshot_id", ""),
            v.spec_version,
        )
        for v in registry.versions()
    ]
    if not rows:
        print("no models yet: run `saiki train`")
        return 0
    print_table(
        ("version", "stage", "created", "AUC fp32", "AUC int8", "threshold", "snapshot", "spec"),
        rows,
    )
    return 0


def _threshold(metrics: dict[str, Any]) -> str:
    """A version's operating threshold with the precision and recall it was chosen at."""
    chosen = metrics.get("threshold")
    if not chosen:
        return "-"
    return (
        f"{chosen['min_score']:.3f} (precision {chosen['precision']:.2f}, "
        f"recall {chosen['recall']:.2f})"
    )


def run_promote(args: argparse.Namespace) -> int:
    """``saiki models promote V``."""
    from saiki.ops.models import parse_version, promote

    version = parse_version(args.version)
    reason = "by hand, forced" if args.force else "by hand"
    previous = promote(load_config(args.data_dir), version, reason=reason, force=args.force)
    if previous == version:
        print(f"v{version} is already in production")
    else:
        print(f"v{version} is in production" + (f" (v{previous} archived)" if previous else ""))
    return 0


def run_rollback(args: argparse.Namespace) -> int:
    """``saiki models rollback``."""
    from saiki.ops.models import rollback

    restored = rollback(load_config(args.data_dir))
    print(f"rolled back: v{restored} is in production")
    return 0


def run_experiment(args: argparse.Namespace) -> int:
    """``saiki models experiment --split control=1:0.5,treatment=2:0.5`` or ``--end``."""
    from saiki.ops.models import parse_split, set_experiment

    config = load_config(args.data_dir)
    if args.end:
        set_experiment(config, None)
        print("experiment ended: production serves everyone")
        return 0
    if not args.split:
        raise InvalidInputError("--split", "give VARIANT=VERSION:SHARE,… or --end")
    experiment = parse_split(args.name, args.split)
    set_experiment(config, experiment)
    print(
        json.dumps(
            {"experiment": experiment.name, "variants": [v.__dict__ for v in experiment.variants]}
        )
    )
    return 0


def run_stage(args: argparse.Namespace) -> int:
    """``saiki models stage V [--share S]`` or ``--end``."""
    from saiki.ops.models import parse_version
    from saiki.ops.shadow import end_stage, stage

    config = load_config(args.data_dir)
    if args.end:
        ended = end_stage(config)
        print(f"shadow stage of {ended.name} ended" if ended else "nothing was in shadow")
        return 0
    if not args.version:
        raise InvalidInputError("VERSION", "give the version to stage, or --end")
    staged = stage(config, parse_version(args.version), args.share)
    print(
        f"{staged.name} staged in shadow: it scores {staged.share:.0%} of requests beside "
        "production, answers unchanged; `saiki models compare` judges it"
    )
    return 0


def run_compare(args: argparse.Namespace) -> int:
    """``saiki models compare [V] [--promote]``."""
    from saiki.ops.models import parse_version, promote
    from saiki.ops.shadow import compare, print_comparison, verdict
    from saiki.serving.registry import ModelRegistry

    config = load_config(args.data_dir)
    if args.version:
        version = parse_version(args.version)
    else:
        staged = ModelRegistry.open(config).shadow()
        if staged is None:
            print("nothing is staged in shadow: `saiki models stage V`")
            return 0
        version = staged.version
    report = compare(config, version)
    judged = verdict(config, report)
    print_comparison(report, judged)
    if args.job_name and judged.passed:
        promote(config, version, reason="passed its shadow period")
        print(f"promoted {report.shadow} to production")
    return 0
