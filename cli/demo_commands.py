"""``saiki demo``: the whole loop on the embedded defaults (see :mod:`saiki.ops.demo`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from saiki.core.config import load_config


def add_parsers(subparsers: Any) -> None:
    """Register ``saiki demo``."""
    demo = subparsers.add_parser("demo", help="run the whole loop on the embedded defaults")
    demo.add_argument("--quick", action="store_true", help="a smaller world (about 2 minutes)")
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument(
        "--reset", action="store_true", help="delete the data directory's state first"
    )
    demo.set_defaults(handler=run_demo_command)


def run_demo_command(args: argparse.Namespace) -> int:
    """``saiki demo [--quick] [--reset]``."""
    from saiki.ops.demo import DemoPlan, prepare_data_dir, run_demo

    data_dir = Path(args.data_dir).resolve()
    prepare_data_dir(data_dir, args.reset)
    run_demo(load_config(data_dir), DemoPlan.choose(args.quick), args.seed)
    return 0
