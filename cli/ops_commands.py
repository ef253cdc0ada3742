"""``saiki consistency``, ``saiki monitor`` and ``saiki report``: checks for operators."""

from __future__ import annotations

import argparse
from typing import Any

from saiki.core.config import SaikiConfig, load_config
from saiki.core.errors import InvalidInputError
from saiki.core.timeutil import floor_minute, format_iso, now_ms, parse_duration, parse_iso
from saiki.ops.console import print_table


def add_parsers(subparsers: Any) -> None:
    """Register consistency, monitor and report."""
    consistency = subparsers.add_parser(
        "consistency", help="served features against a recomputation from the master dataset"
    )
    consistency.add_argument(
        "--sample", type=int, default=200, help="entities per kind (answers with --from-log)"
    )
    consistency.add_argument("--as-of", default=None, help="query time (default: now)")
    consistency.add_argument(
        "--from-log",
        action="store_true",
        help="the feature values the servers logged with their answers in --from..--to, "
        "against a recomputation at each answer's time over the events acknowledged by then",
    )
    consistency.add_argument("--from", dest="from_", default=None)
    consistency.add_argument("--to", default=None)
    consistency.set_defaults(handler=run_consistency)
    monitor = subparsers.add_parser(
        "monitor", help="feature drift and live CTR; exits 1 when a retrain is due"
    )
    monitor.add_argument("--window", default="1h", help="how far back to look (e.g. 1h, 30m)")
    monitor.add_argument(
        "--guard",
        action="store_true",
        help="roll production back when its live CTR clearly regressed against the "
        "version it replaced",
    )
    monitor.set_defaults(handler=run_monitor, job_name="monitor")
    report = subparsers.add_parser("report", help="write the HTML report and its PNG plots")
    report.set_defaults(handler=run_report)


def run_consistency(args: argparse.Namespace) -> int:
    """``saiki consistency [--sample N]``."""
    from saiki.feature_repo.online import read_status
    from saiki.ops.consistency import consistency_report

    config = load_config(args.data_dir)
    if args.from_log:
        return _log_consistency(config, args)
    q = floor_minute(parse_iso(args.as_of, "--as-of") if args.as_of else now_ms())
    report = consistency_report(config, args.sample, q)
    print(
        f"consistency at {format_iso(q)}: {report.sampled} sampled, {report.compared} values "
        f"compared, {sum(report.mismatches.values())} mismatched"
    )
    if report.mismatches:
        print_table(("feature", "mismatches"), sorted(report.mismatches.items()))
        for kind, ids in report.mismatched_entities.items():
            print(
                f"  {kind}s off: {len(ids)} (e.g. {', '.join(ids[:5])}); events the speed "
                "layer left to the batch layer come back with the next `saiki batch run`"
            )
    status = read_status(config.data_dir / "speed")
    if status is not None and status.max_ingest_ms:
        age = (now_ms() - status.last_flush_ms) / 1000
        print(
            f"freshness: speed rows last written {age:.1f}s ago; newest event processed "
            f"{format_iso(status.max_event_ms)}; watermark {format_iso(status.watermark_ms)}"
        )
    return 0 if report.consistent else 1


def _log_consistency(config: SaikiConfig, args: argparse.Namespace) -> int:
    """``saiki consistency --from-log --from TS --to TS``."""
    from saiki.ops.consistency import log_consistency_report

    if args.from_ is None or args.to is None:
        raise InvalidInputError("--from/--to", "--from-log needs the range of answers")
    report = log_consistency_report(
        config, parse_iso(args.from_, "--from"), parse_iso(args.to, "--to"), args.sample
    )
    print(
        f"consistency from the log: {report.answers} answers logged with features, "
        f"{report.checked} checked, {report.compared} values compared, "
        f"{sum(report.mismatches.values())} mismatched, {report.in_flight} in flight "
        "(an event of theirs acknowledged under 5 s before the answer)"
    )
    if report.mismatches:
        print_table(("feature", "mismatches"), sorted(report.mismatches.items()))
        for kind, entity_id, name, at, want, have in report.examples:
            print(
                f"  {kind} {entity_id} {name} at {format_iso(at)}: served {have:g}, "
                f"recomputed {want:g}"
            )
    return 0 if report.consistent else 1


def run_monitor(args: argparse.Namespace) -> int:
    """``saiki monitor``: exits 1 when a retrain is due."""
    from saiki.ops.monitoring import monitor_now
    from saiki.serving.monitor import PSI_LIMIT

    config = load_config(args.data_dir)
    found = monitor_now(config, parse_duration(args.window, "--window"))
    if found.production is None:
        print("no model in production yet: nothing to monitor")
        return 0
    print(
        f"production v{found.production}: {found.requests} rankings in the window; "
        f"{found.impressions} impressions, {found.clicks} clicks: live CTR "
        f"{found.live_ctr:.3f} vs expected {found.expected_ctr:.3f} "
        f"(ratio {found.ctr_ratio:.2f}, "
        + (
            f"reference {found.reference_ratio:.2f})"
            if found.reference_ratio is not None
            else "no reference yet)"
        )
    )
    if found.log_dropped:
        print(f"prediction log: {found.log_dropped} answer(s) not logged (the queue was full)")
    if args.guard:
        from saiki.ops.monitoring import guard

        acted = guard(config, found)
        if acted:
            print(acted)
            return 0  # the previous version serves again: no retrain on this verdict
    worst = sorted(found.psi.items(), key=lambda kv: -kv[1])[:8]
    if worst:
        print_table(
            ("feature", "PSI", f"drift (> {PSI_LIMIT})"),
            [(f, f"{v:.3f}", "yes" if v > PSI_LIMIT else "") for f, v in worst],
        )
    if found.retrain_due:
        reasons = []
        if found.drifted:
            reasons.append(
                f"{len(found.drifted)} feature(s) drifted: {', '.join(found.drifted[:5])}"
            )
        if found.ctr_fell:
            reasons.append(
                f"live CTR at {found.ctr_ratio:.2f} of expectation, under 0.8 of the "
                f"version's reference {found.reference_ratio:.2f}"
            )
        print("retrain due: " + "; ".join(reasons))
        return 1
    print("no retrain due")
    return 0


def run_report(args: argparse.Namespace) -> int:
    """``saiki report``."""
    from saiki.ops.report import write_report

    config = load_config(args.data_dir)
    path = write_report(config)
    print(f"report: {path}")
    return 0
