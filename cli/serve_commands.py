"""``saiki serve``: the gRPC server; ``saiki auth``: its tokens."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from saiki.core.config import load_config
from saiki.core.errors import ConfigError


def add_parsers(subparsers: Any) -> None:
    """Register ``saiki serve`` and ``saiki auth add-token``."""
    serve = subparsers.add_parser("serve", help="run the gRPC server (Ingest, features, predict)")
    serve.add_argument("--host", default=None)
    serve.add_argument("--port", type=int, default=None)
    serve.add_argument("--workers", type=int, default=None, help="server processes")
    serve.add_argument(
        "--insecure",
        action="store_true",
        default=None,
        help="listen beyond loopback without TLS and tokens (refused otherwise)",
    )
    serve.set_defaults(handler=run_serve)

    auth = subparsers.add_parser("auth", help="bearer tokens for the gRPC services")
    verbs = auth.add_subparsers(dest="verb", metavar="VERB", required=True)
    add = verbs.add_parser("add-token", help="create a token; prints it once, stores its hash")
    add.add_argument("name", help="who the token is for (shown in logs and refusals)")
    add.add_argument("--roles", required=True, help="comma-separated: ingest, read, predict, admin")
    add.set_defaults(handler=run_add_token)


def run_serve(args: argparse.Namespace) -> int:
    """Start the server and block until interrupted."""
    from saiki.serving.processes import serve_processes

    # Flags are the last layer: defaults → saiki.toml → environment → flags.
    config = load_config(
        args.data_dir,
        serving={
            "host": args.host,
            "port": args.port,
            "workers": args.workers,
            "insecure": args.insecure,
        },
    )
    serving = config.serving

    def ready(port: int) -> None:
        print(
            f"saiki serving on {serving.host}:{port} ({serving.workers} process(es); Ctrl-C stops)",
            flush=True,
        )

    serve_processes(config, serving.host, serving.port, serving.workers, ready)
    return 0


def run_add_token(args: argparse.Namespace) -> int:
    """``saiki auth add-token NAME --roles ingest,read``."""
    from saiki.serving.security import add_token

    config = load_config(args.data_dir)
    if not config.auth.tokens_file:
        raise ConfigError("set [auth] tokens_file in saiki.toml (or SAIKI_AUTH_TOKENS_FILE) first")
    roles = [r.strip() for r in args.roles.split(",") if r.strip()]
    token = add_token(Path(config.auth.tokens_file), args.name, roles)
    print(token)
    return 0
