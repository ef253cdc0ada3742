"""Commands of the data path: ``saiki simulate``, ``saiki ingest``, ``saiki master``."""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path
from typing import Any

from saiki.core.config import load_config
from saiki.core.timeutil import floor_minute, format_iso, now_ms, parse_iso
from saiki.ops.console import print_table


def add_parsers(subparsers: Any) -> None:
    """Register simulate, ingest and master."""
    simulate = subparsers.add_parser("simulate", help="write synthetic traffic as JSON lines")
    simulate.add_argument("--users", type=int, default=1000)
    simulate.add_argument("--items", type=int, default=500)
    simulate.add_argument("--days", type=float, default=3.0)
    simulate.add_argument("--seed", type=int, default=0)
    simulate.add_argument("--out", type=Path, required=True)
    simulate.add_argument("--malformed-rate", type=float, default=0.0)
    simulate.add_argument("--late-rate", type=float, default=0.0)
    simulate.add_argument("--duplicate-rate", type=float, default=0.0)
    simulate.add_argument(
        "--end", default=None, help="end of simulated time, ISO-8601 UTC (default: now)"
    )
    simulate.add_argument(
        "--shift-at", default=None, help="users' tastes change at this time (ISO-8601 UTC)"
    )
    simulate.set_defaults(handler=run_simulate)

    ingest = subparsers.add_parser(
        "ingest", help="validate JSON-lines files into the event log and the master dataset"
    )
    ingest.add_argument("files", nargs="+", type=Path, metavar="FILE")
    ingest.add_argument("--workers", type=int, default=None, help="validating processes")
    ingest.add_argument(
        "--no-load", action="store_true", help="append to the event log only (load later)"
    )
    ingest.set_defaults(handler=run_ingest)

    master = subparsers.add_parser("master", help="the Iceberg master dataset")
    verbs = master.add_subparsers(dest="verb", metavar="VERB", required=True)
    snapshots = verbs.add_parser("snapshots", help="list the snapshots of saiki.events")
    snapshots.set_defaults(handler=run_master_snapshots)
    show = verbs.add_parser("show", help="counts per day and event type at a snapshot")
    which = show.add_mutually_exclusive_group()
    which.add_argument("--snapshot", type=int, default=None)
    which.add_argument("--as-of", default=None, help="the newest snapshot at this time")
    show.set_defaults(handler=run_master_show)
    load = verbs.add_parser("load", help="append what the event log holds beyond the table")
    load.set_defaults(handler=run_master_load, job_name="load")
    maintain = verbs.add_parser(
        "maintain",
        help="compact small files; expire unpinned snapshots older than "
        "[schedule] snapshot_retention and remove the files only they reached",
    )
    maintain.set_defaults(handler=run_master_maintain, job_name="maintain")
    forget = subparsers.add_parser(
        "forget",
        help="remove one user's data from the master dataset, the prediction log and the "
        "online rows, and record the deletion",
    )
    forget.add_argument("user_id", metavar="USER_ID")
    forget.add_argument(
        "--recompute",
        action="store_true",
        help="also publish a batch view without the user now (else the next recompute)",
    )
    forget.set_defaults(handler=run_forget)


def run_simulate(args: argparse.Namespace) -> int:
    """``saiki simulate``."""
    from saiki.ops.data import SimulateRequest, simulate

    request = SimulateRequest(
        users=args.users,
        items=args.items,
        days=args.days,
        seed=args.seed,
        out=args.out,
        end_ms=floor_minute(parse_iso(args.end, "--end") if args.end else now_ms()),
        malformed_rate=args.malformed_rate,
        late_rate=args.late_rate,
        duplicate_rate=args.duplicate_rate,
        shift_at_ms=parse_iso(args.shift_at, "--shift-at") if args.shift_at else None,
    )
    print(json.dumps(simulate(request)))
    return 0


def run_ingest(args: argparse.Namespace) -> int:
    """``saiki ingest FILE...``: validate → event log → master dataset, exactly once."""
    from saiki.ops.data import describe_ingest, ingest

    config = load_config(args.data_dir)
    outcome = ingest(config, args.files, workers=args.workers, load=not args.no_load)
    for line in describe_ingest(outcome):
        print(line)
    return 0


def run_master_load(args: argparse.Namespace) -> int:
    """``saiki master load``."""
    from saiki.ops.data import describe_load, load_master

    for line in describe_load(load_master(load_config(args.data_dir))):
        print(line)
    return 0


def run_forget(args: argparse.Namespace) -> int:
    """``saiki forget USER_ID [--recompute]``."""
    from saiki.ops.forget import describe, forget_user

    report = forget_user(load_config(args.data_dir), args.user_id, recompute=args.recompute)
    for line in describe(report):
        print(line)
    return 0


def run_master_maintain(args: argparse.Namespace) -> int:
    """``saiki master maintain``."""
    from saiki.core.timeutil import now_ms
    from saiki.ops.maintenance import describe, maintain

    for line in describe(maintain(load_config(args.data_dir), now_ms())):
        print(line)
    return 0


def run_master_snapshots(args: argparse.Namespace) -> int:
    """``saiki master snapshots``."""
    from saiki.batch.master import MasterDataset

    master = MasterDataset(load_config(args.data_dir))
    rows = [
        (
            s.snapshot_id,
            format_iso(s.timestamp_ms),
            s.operation,
            s.added_records,
            s.total_records,
            s.next_offset,
        )
        for s in master.snapshots()
    ]
    if not rows:
        print("saiki.events has no snapshots yet: run `saiki ingest FILE`")
        return 0
    print_table(("snapshot_id", "committed_at", "operation", "added", "total", "log_offset"), rows)
    return 0


def run_master_show(args: argparse.Namespace) -> int:
    """``saiki master show [--snapshot ID | --as-of TS]``: counts per day and type."""
    from saiki.batch.master import MasterDataset

    master = MasterDataset(load_config(args.data_dir))
    as_of = parse_iso(args.as_of, "--as-of") if args.as_of else None
    snapshot = master.resolve_snapshot(args.snapshot, as_of)
    if snapshot is None:
        print("saiki.events has no snapshots yet: run `saiki ingest FILE`")
        return 0
    counts = master.counts(snapshot).to_pylist()
    info = next(s for s in master.snapshots() if s.snapshot_id == snapshot)
    print(
        f"saiki.events @ snapshot {snapshot} (committed {format_iso(info.timestamp_ms)}, "
        f"{info.total_records} events, log offset {info.next_offset})"
    )
    print_table(
        ("day", "event_type", "events"),
        [(r["day"], r["event_type"], r["events"]) for r in counts],
    )
    by_type: Counter[str] = Counter()
    for row in counts:
        by_type[row["event_type"]] += row["events"]
    days = len({r["day"] for r in counts})
    print(f"total: {sum(by_type.values())} events over {days} day(s): {dict(by_type)}")
    return 0
