"""``saiki demo``: the main job end to end on the embedded defaults.

Stages so far: simulate a few days of traffic → ingest it through the event log into the
Iceberg master dataset → show the master dataset's snapshot and counts.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from cli import data_commands


def add_parsers(subparsers: Any) -> None:
    """Register ``saiki demo``."""
    demo = subparsers.add_parser("demo", help="run the whole loop on the embedded defaults")
    demo.add_argument("--quick", action="store_true", help="a smaller world (about 2 minutes)")
    demo.add_argument("--seed", type=int, default=7)
    demo.set_defaults(handler=run_demo)


def _stage(title: str) -> None:
    print(f"\n== {title}", flush=True)


def run_demo(args: argparse.Namespace) -> int:
    """Run every stage in order, printing a short summary of each."""
    started = time.perf_counter()
    data_dir = Path(args.data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    users, items, days = (300, 150, 2.0) if args.quick else (2000, 800, 5.0)
    history = data_dir / "demo" / "history.jsonl"

    _stage(f"1. simulate {days:g} days of traffic: {users} users, {items} items")
    data_commands.run_simulate(
        argparse.Namespace(
            users=users,
            items=items,
            days=days,
            seed=args.seed,
            out=history,
            malformed_rate=0.005,
            late_rate=0.02,
            duplicate_rate=0.002,
            end=None,
            shift_at=None,
        )
    )
    _stage("2. ingest: validate → event log → Iceberg master dataset (exactly once)")
    data_commands.run_ingest(
        argparse.Namespace(data_dir=str(data_dir), files=[history], workers=None, no_load=False)
    )
    _stage("3. the master dataset")
    data_commands.run_master_show(
        argparse.Namespace(data_dir=str(data_dir), snapshot=None, as_of=None)
    )
    print(f"\ndemo finished in {time.perf_counter() - started:.0f}s; data in {data_dir}")
    return 0
