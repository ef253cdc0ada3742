"""Commands of the data path: ``saiki simulate``, ``saiki ingest``, ``saiki master``."""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

from saiki.cli.progress import print_table, progress_bar
from saiki.core.config import load_config
from saiki.core.errors import InvalidInputError, NotFoundError
from saiki.core.timeutil import floor_minute, format_iso, now_ms, parse_iso


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
    load.set_defaults(handler=run_master_load)


def run_simulate(args: argparse.Namespace) -> int:
    """``saiki simulate``."""
    from saiki.simulator import TrafficOptions, World, write_jsonl

    for name in ("malformed_rate", "late_rate", "duplicate_rate"):
        if not 0.0 <= getattr(args, name) <= 1.0:
            raise InvalidInputError(f"--{name.replace('_', '-')}", "must be within 0..1")
    if args.users < 1 or args.items < 1 or args.days <= 0:
        raise InvalidInputError("--users/--items/--days", "must be positive")
    end_ms = floor_minute(parse_iso(args.end, "--end") if args.end else now_ms())
    shift = parse_iso(args.shift_at, "--shift-at") if args.shift_at else None
    world = World(users=args.users, items=args.items, seed=args.seed, shift_at_ms=shift)
    options = TrafficOptions(
        days=args.days,
        end_ms=end_ms,
        malformed_rate=args.malformed_rate,
        late_rate=args.late_rate,
        duplicate_rate=args.duplicate_rate,
    )
    expected = int(sum(world.params["activity"]) * args.days * 8 * 1.17)
    started = time.perf_counter()
    with progress_bar(expected, "ev", "simulate") as advance:
        summary = write_jsonl(world, options, args.out, progress=advance)
    elapsed = time.perf_counter() - started
    report = summary.as_dict()
    report.update(out=str(args.out), seconds=round(elapsed, 2), end=format_iso(end_ms))
    print(json.dumps(report))
    return 0


def run_ingest(args: argparse.Namespace) -> int:
    """``saiki ingest FILE...``: validate → event log → master dataset, exactly once."""
    from saiki.core.eventlog import EventLog
    from saiki.core.ingest import Ingestor
    from saiki.core.ingest_files import ingest_files

    for path in args.files:
        if not path.is_file():
            raise NotFoundError(f"no such file: {path}")
    config = load_config(args.data_dir)
    log = EventLog(config.log_dir)
    total_bytes = sum(p.stat().st_size for p in args.files)
    lines_estimate = max(1, total_bytes // 200)
    started = time.perf_counter()
    with progress_bar(lines_estimate, "ev", "ingest → log") as advance:
        result = ingest_files(Ingestor(log), args.files, workers=args.workers, progress=advance)
    elapsed = time.perf_counter() - started
    reasons = Counter(
        f"{r.field or 'json'}: {r.reason.split(':')[0]}" for _, r in result.rejections
    )
    print(
        f"event log: {result.accepted} accepted, {result.duplicates} duplicates, "
        f"{result.quarantined} quarantined in {elapsed:.1f}s "
        f"({(result.accepted + result.duplicates + result.quarantined) / max(elapsed, 1e-9):,.0f}"
        " events/s)"
    )
    for reason, count in reasons.most_common(12):
        print(f"  quarantined {count:>8}  {reason}")
    if not args.no_load:
        _load_master(config, log)
    return 0


def _load_master(config: Any, log: Any) -> None:
    from saiki.batch.master import MasterDataset

    started = time.perf_counter()
    master = MasterDataset(config)
    pending = log.events.head() - MasterDataset.committed_offset(master.table())
    with progress_bar(max(pending, 0), "ev", "log → iceberg") as advance:
        results = master.load(log, progress=advance)
    elapsed = time.perf_counter() - started
    for result in results:
        print(
            f"master dataset: saiki.{result.table} +{result.rows} rows in {result.snapshots} "
            f"snapshot(s), log offset now {result.next_offset} ({elapsed:.1f}s)"
        )
    snapshot = master.resolve_snapshot()
    print(f"current snapshot of saiki.events: {snapshot}")


def run_master_load(args: argparse.Namespace) -> int:
    """``saiki master load``."""
    from saiki.core.eventlog import EventLog

    config = load_config(args.data_dir)
    _load_master(config, EventLog(config.log_dir))
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
