"""``saiki batch …``: batch views (run, list, backfill) and training sets."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from saiki.core.config import load_config
from saiki.core.errors import InvalidInputError
from saiki.core.timeutil import format_iso, parse_duration, parse_iso
from saiki.ops.console import print_table, progress_bar

# Beam runners by name; a typo fails when the command is parsed, not inside Beam. The
# portable and cluster runners need what infra/README.md says.
RUNNERS = ("DirectRunner", "PortableRunner", "FlinkRunner", "SparkRunner", "DataflowRunner")


def add_parsers(subparsers: Any) -> None:
    """Register ``saiki batch run|views|backfill|training-set``."""
    batch = subparsers.add_parser("batch", help="the batch layer (Apache Beam)")
    verbs = batch.add_subparsers(dest="verb", metavar="VERB", required=True)

    run = verbs.add_parser(
        "run",
        help="recompute every feature from a pinned master snapshot and publish the view",
        epilog="Unknown options are passed to Beam, e.g. --runner FlinkRunner "
        "--flink_master host:8081, or --direct_num_workers 2.",
    )
    run.add_argument("--as-of", default=None, help="cutoff T (default: newest whole minute)")
    run.add_argument("--snapshot", type=int, default=None, help="master snapshot (default: newest)")
    run.add_argument(
        "--runner", default="DirectRunner", choices=RUNNERS, help="Beam runner (default: embedded)"
    )
    run.add_argument("--no-load", action="store_true", help="do not load the event log first")
    run.set_defaults(handler=run_batch, beam_passthrough=True, job_name="recompute")

    views = verbs.add_parser("views", help="list published batch views")
    views.set_defaults(handler=run_views)

    backfill = verbs.add_parser("backfill", help="recompute views as of each cutoff in a range")
    backfill.add_argument("--from", dest="from_", required=True)
    backfill.add_argument("--to", required=True)
    backfill.add_argument("--every", default="1d")
    backfill.add_argument("--runner", default="DirectRunner", choices=RUNNERS)
    backfill.set_defaults(handler=run_backfill, beam_passthrough=True)

    training = verbs.add_parser(
        "training-set", help="one row per impression, features as of its time, label clicked"
    )
    training.add_argument("--from", dest="from_", required=True)
    training.add_argument("--to", required=True)
    training.add_argument("--out", type=Path, required=True)
    training.add_argument("--snapshot", type=int, default=None)
    training.add_argument("--runner", default="DirectRunner", choices=RUNNERS)
    training.add_argument(
        "--features",
        choices=("recomputed", "logged"),
        default="recomputed",
        help="recomputed from the master dataset (default), or the vectors the servers "
        "logged in saiki.predictions",
    )
    training.set_defaults(handler=run_training_set, beam_passthrough=True)


def run_batch(args: argparse.Namespace) -> int:
    """``saiki batch run``."""
    from saiki.batch.run import BatchRunRequest, describe, run_batch_view

    config = load_config(args.data_dir)
    request = BatchRunRequest(
        as_of_ms=parse_iso(args.as_of, "--as-of") if args.as_of else None,
        snapshot_id=args.snapshot,
        runner=args.runner,
        beam_args=tuple(args.beam_args),
        load_first=not args.no_load,
    )
    with progress_bar(None, "ev", "batch view") as advance:
        done = [0]

        def report(read: int, total: int) -> None:
            advance(read - done[0])
            done[0] = read

        manifest = run_batch_view(config, request, progress=report)
    print(f"published {describe(manifest)}")
    print(
        f"  current view: {manifest.view_id} (speed layer reads the log from offset "
        f"{manifest.speed_start_offset})"
    )
    return 0


def run_views(args: argparse.Namespace) -> int:
    """``saiki batch views``."""
    from saiki.feature_repo.views import ViewCatalog

    catalog = ViewCatalog.open(load_config(args.data_dir))
    current = catalog.current_id()
    rows = [
        (
            ("* " if m.view_id == current else "  ") + m.view_id,
            format_iso(m.cutoff_ms),
            m.snapshot_id,
            m.events_read,
            "/".join(str(m.entities.get(k, 0)) for k in ("user", "item")),
            m.dead_letters,
            m.spec_version,
            m.code_version,
            f"{m.seconds:.1f}s",
        )
        for m in catalog.list()
    ]
    if not rows:
        print("no batch views yet: run `saiki batch run`")
        return 0
    print_table(
        (
            "view (* current)",
            "cutoff",
            "snapshot",
            "events",
            "users/items",
            "dead",
            "spec",
            "code",
            "took",
        ),
        rows,
    )
    return 0


def run_backfill(args: argparse.Namespace) -> int:
    """``saiki batch backfill --from TS --to TS [--every 1d]``: one view per cutoff."""
    from saiki.batch.master import MasterDataset
    from saiki.batch.run import BatchRunRequest, describe, run_batch_view
    from saiki.core.eventlog import EventLog

    start, stop = parse_iso(args.from_, "--from"), parse_iso(args.to, "--to")
    step = parse_duration(args.every, "--every")
    if stop < start or step <= 0:
        raise InvalidInputError("--to", "must not be before --from")
    cutoffs = list(range(start, stop + 1, step))
    config = load_config(args.data_dir)
    MasterDataset(config).load(EventLog(config.log_dir))
    snapshot = MasterDataset(config).resolve_snapshot()
    with progress_bar(len(cutoffs), "view", "backfill") as advance:
        for cutoff in cutoffs:
            manifest = run_batch_view(
                config,
                BatchRunRequest(
                    as_of_ms=cutoff,
                    snapshot_id=snapshot,
                    runner=args.runner,
                    beam_args=tuple(args.beam_args),
                    load_first=False,
                    make_current=False,
                ),
            )
            print(f"  {describe(manifest)}", flush=True)
            advance(1)
    print(f"backfilled {len(cutoffs)} view(s) at snapshot {snapshot} (none made current)")
    return 0


def run_training_set(args: argparse.Namespace) -> int:
    """``saiki batch training-set --from TS --to TS --out FILE``."""
    from saiki.batch.training import build_training_set

    config = load_config(args.data_dir)
    from_ms, to_ms = parse_iso(args.from_, "--from"), parse_iso(args.to, "--to")
    with progress_bar(None, "step", "training set"):
        if args.features == "logged":
            from saiki.batch.logged_training import build_logged_training_set

            lineage = build_logged_training_set(
                config, from_ms, to_ms, args.out, snapshot_id=args.snapshot
            )
        else:
            lineage = build_training_set(
                config,
                from_ms,
                to_ms,
                args.out,
                snapshot_id=args.snapshot,
                runner=args.runner,
                beam_args=tuple(args.beam_args),
            )
    print(f"wrote {args.out}: {lineage.rows} impressions, {lineage.positives} clicked")
    if lineage.unmatched:
        print(f"{lineage.unmatched} impressions had no logged vector and are not in the set")
    print(json.dumps(asdict(lineage)))
    return 0
