"""``saiki speed run|status``: the Flink speed layer."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from saiki.core.config import load_config
from saiki.core.errors import ConfigError
from saiki.core.process import hold_to_cpus, lower_priority
from saiki.core.timeutil import format_iso

MANY_SEGMENTS = 10_000  # where `saiki speed status` says what the folder costs


def add_parsers(subparsers: Any) -> None:
    """Register ``saiki speed run`` and ``saiki speed status``."""
    speed = subparsers.add_parser("speed", help="the speed layer (PyFlink)")
    verbs = speed.add_subparsers(dest="verb", metavar="VERB", required=True)
    run = verbs.add_parser("run", help="run the Flink job (resumes from its last checkpoint)")
    run.add_argument(
        "--until-idle",
        action="store_true",
        help="exit once the whole log is processed and checkpointed",
    )
    run.add_argument(
        "--fresh",
        action="store_true",
        help="discard checkpoints; start from the current batch cutoff",
    )
    run.add_argument("--jobmanager", default="", help="HOST:PORT of a Flink cluster")
    run.set_defaults(handler=run_speed_command)
    status = verbs.add_parser("status", help="watermark, lag, late events, tiles written")
    status.set_defaults(handler=run_status)
    stop = verbs.add_parser("stop", help="cancel the job on the Flink cluster ([speed] jobmanager)")
    stop.add_argument("--jobmanager", default="", help="HOST:PORT of a Flink cluster")
    stop.set_defaults(handler=run_stop)


def _line(look: Any) -> str:
    status = look.status
    if status is None:
        return f"starting… log head {look.log_head}"
    return (
        f"read {status.events_seen}/{look.log_head} events, lag {look.lag_events} "
        f"({look.lag_seconds:.1f}s), watermark "
        f"{format_iso(status.watermark_ms) if status.watermark_ms else '-'}, "
        f"late {status.late_events}, rows written {status.rows_written}"
    )


def run_speed_command(args: argparse.Namespace) -> int:
    """``saiki speed run``."""
    from saiki.speed.runner import run_speed

    config = load_config(args.data_dir, speed={"jobmanager": args.jobmanager or None})
    if not config.speed.jobmanager:  # the local mini-cluster's JVM inherits both
        lower_priority(config.speed.nice)
        try:
            if held := hold_to_cpus(config.speed.cpus):
                print(f"held to CPU(s) {sorted(held)} ([speed] cpus)", file=sys.stderr)
        except ValueError as exc:
            raise ConfigError(f"speed.cpus: {exc}") from exc
    last = [0.0]

    def report(look: Any) -> None:
        if time.monotonic() - last[0] >= 2.0:
            print(_line(look), file=sys.stderr, flush=True)
            last[0] = time.monotonic()

    try:
        final = run_speed(
            config,
            until_idle=args.until_idle,
            fresh=args.fresh,
            report=report,
            stage=lambda step: print(step, file=sys.stderr, flush=True),
        )
    except KeyboardInterrupt:
        if config.speed.jobmanager:
            print(
                f"stopped watching; the job keeps running on {config.speed.jobmanager} "
                "(saiki speed stop cancels it)",
                file=sys.stderr,
            )
        else:
            print("speed layer stopped; it resumes from its last checkpoint", file=sys.stderr)
        return 130
    print(_line(final))
    return 0


def run_status(args: argparse.Namespace) -> int:
    """``saiki speed status``."""
    from saiki.speed.progress import progress

    config = load_config(args.data_dir)
    look = progress(config)
    monitor_ms = config.speed.monitor_ms
    status = look.status
    if status is None:
        print("the speed layer has not run yet: saiki speed run")
        return 0
    print(_line(look))
    if config.speed.jobmanager:
        from saiki.speed.cluster import FlinkRest, describe_job

        for line in describe_job(FlinkRest.for_config(config)):
            print(f"  {line}")
    print(
        f"  started {format_iso(status.job_started_ms)} from batch cutoff "
        f"{format_iso(status.start_cutoff_ms)}; tiles kept from "
        f"{format_iso(status.keep_from_ms) if status.keep_from_ms else '-'}"
    )
    print(
        f"  events tiled {status.events_tiled}, late (left to batch) {status.late_events}, "
        f"tile updates {status.tiles_updated}, rows written {status.rows_written} in "
        f"{status.flushes} flushes (last {status.last_flush_seconds * 1000:.0f} ms), "
        f"rows removed {status.rows_removed}"
    )
    print(
        f"  newest event {format_iso(status.max_event_ms) if status.max_event_ms else '-'}, "
        f"newest ingest {format_iso(status.max_ingest_ms) if status.max_ingest_ms else '-'}"
    )
    print(f"  log: {look.segments} segments, re-listed by the source every {monitor_ms} ms")
    if look.segments >= MANY_SEGMENTS:
        print(
            "  (the job's idle cost grows with the segments: about a core at 20,000 every "
            "200 ms; raise [speed] monitor_ms or use the Kafka source, see docs/speed.md)"
        )
    return 0


def run_stop(args: argparse.Namespace) -> int:
    """``saiki speed stop``: cancel the cluster's job; its checkpoints stay, and the next
    ``saiki speed run`` resumes from the newest."""
    from saiki.speed.cluster import FlinkRest

    config = load_config(args.data_dir, speed={"jobmanager": args.jobmanager or None})
    if not config.speed.jobmanager:
        raise ConfigError("saiki speed stop needs a cluster: --jobmanager or [speed] jobmanager")
    rest = FlinkRest.for_config(config)
    job = rest.live_job()
    if job is None:
        print(f"no running saiki-speed job on {config.speed.jobmanager}")
        return 0
    rest.cancel(job["jid"])
    print(f"cancelled {job['jid']}; the next saiki speed run resumes from its checkpoint")
    return 0
