"""``saiki``: argument parsing, dispatch, and the one place errors become exit codes.

Each command module registers its subcommands with ``add_parser(subparsers)`` and sets
``handler``; heavy layers (Beam, Flink, Feast, torch) are imported only by the command
that needs them, so ``saiki --help`` and ``saiki ingest`` start fast.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from saiki.cli import (
    batch_commands,
    data_commands,
    demo_commands,
    model_commands,
    ops_commands,
    serve_commands,
    service_commands,
    speed_commands,
)
from saiki.core.errors import SaikiError
from saiki.core.process import die_with_parent, nice_from_environment

_MODULES = (
    data_commands,
    batch_commands,
    speed_commands,
    serve_commands,
    model_commands,
    ops_commands,
    service_commands,
    demo_commands,
)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (exposed for tests and docs)."""
    parser = argparse.ArgumentParser(
        prog="saiki",
        description="A lambda-architecture backend for rankings that learn from their users.",
    )
    parser.add_argument(
        "--data-dir",
        default=os.environ.get("SAIKI_DATA_DIR", ".saiki"),
        help="where all embedded state lives (default: .saiki, env SAIKI_DATA_DIR)",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in _MODULES:
        module.add_parsers(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; a failure prints a one-line reason and returns non-zero."""
    die_with_parent()
    nice_from_environment()
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "beam_passthrough", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.beam_args = extra
    try:
        code = _run(args)
    except SaikiError as exc:
        print(f"saiki {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"saiki {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(code or 0)


def _run(args: argparse.Namespace) -> int:
    """Run the handler; a scheduled job's command (``job_name``) keeps a status record
    of each run, read by ``saiki status`` whoever ran it (``saiki up`` or cron)."""
    job = getattr(args, "job_name", None)
    if job is None:
        return int(args.handler(args) or 0)
    from saiki.core.config import resolve_data_dir
    from saiki.ops.status import job_record

    with job_record(resolve_data_dir(args.data_dir), job) as record:
        code = int(args.handler(args) or 0)
        if code:
            # `saiki monitor` exits 1 when a retrain is due: an answer, not a failure.
            record.outcome = "due" if job == "monitor" and code == 1 else "failed"
            record.detail = record.detail or f"exit {code}"
    return code


if __name__ == "__main__":
    sys.exit(main())
