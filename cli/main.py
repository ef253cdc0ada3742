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
    speed_commands,
)
from saiki.core.errors import SaikiError

_MODULES = (
    data_commands,
    batch_commands,
    speed_commands,
    serve_commands,
    model_commands,
    ops_commands,
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
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "beam_passthrough", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.beam_args = extra
    try:
        code = args.handler(args)
    except SaikiError as exc:
        print(f"saiki {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"saiki {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
