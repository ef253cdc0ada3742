"""``saiki up``: the whole system, supervised; ``saiki status``: how each part is doing."""

from __future__ import annotations

import argparse
from typing import Any

from saiki.core.config import load_config


def add_parsers(subparsers: Any) -> None:
    """Register ``saiki up`` and ``saiki status``."""
    up = subparsers.add_parser(
        "up", help="server + speed layer + scheduled jobs, supervised, until SIGTERM"
    )
    up.add_argument("--host", default=None)
    up.add_argument("--port", type=int, default=None)
    up.add_argument("--workers", type=int, default=None, help="server processes")
    up.add_argument(
        "--insecure",
        action="store_true",
        help="let the server listen beyond loopback without TLS and tokens",
    )
    up.set_defaults(handler=run_up_command)
    status = subparsers.add_parser(
        "status", help="every part and job: up/down, restarts, last and next runs, lag"
    )
    status.set_defaults(handler=run_status_command)


def run_up_command(args: argparse.Namespace) -> int:
    """Run until SIGTERM / Ctrl-C."""
    from saiki.ops.service import run_up

    config = load_config(args.data_dir)
    serve = ["serve"]
    for flag, value in (("--host", args.host), ("--port", args.port), ("--workers", args.workers)):
        if value is not None:
            serve += [flag, str(value)]
    if args.insecure:
        serve.append("--insecure")
    return run_up(config, serve)


def run_status_command(args: argparse.Namespace) -> int:
    """Print the report; exit 1 when ``saiki up`` runs but a part is down."""
    from saiki.ops.service_status import service_status

    report = service_status(load_config(args.data_dir))
    print("\n".join(report.lines))
    return 0 if report.healthy else 1
