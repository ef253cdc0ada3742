"""``saiki serve``: the gRPC server."""

from __future__ import annotations

import argparse
from typing import Any

from core.config import load_config


def add_parsers(subparsers: Any) -> None:
    """Register ``saiki serve``."""
    serve = subparsers.add_parser("serve", help="run the gRPC server (Ingest, features, predict)")
    serve.add_argument("--host", default=None)
    serve.add_argument("--port", type=int, default=None)
    serve.add_argument("--workers", type=int, default=None, help="server processes")
    serve.set_defaults(handler=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    """Start the server and block until interrupted."""
    from serving.server import serve_forever, start_server

    config = load_config(args.data_dir)
    running = start_server(config, host=args.host, port=args.port)
    print(f"saiki serving on {args.host or config.serving.host}:{running.port}", flush=True)
    serve_forever(running)
    return 0
