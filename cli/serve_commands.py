"""``saiki serve``: the gRPC server."""

from __future__ import annotations

import argparse
from typing import Any

from saiki.core.config import load_config


def add_parsers(subparsers: Any) -> None:
    """Register ``saiki serve``."""
    serve = subparsers.add_parser("serve", help="run the gRPC server (Ingest, features, predict)")
    serve.add_argument("--host", default=None)
    serve.add_argument("--port", type=int, default=None)
    serve.add_argument("--workers", type=int, default=None, help="server processes")
    serve.set_defaults(handler=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    """Start the server and block until interrupted."""
    from saiki.serving.server import serve_processes

    # Flags are the last layer: defaults → saiki.toml → environment → flags.
    config = load_config(
        args.data_dir, serving={"host": args.host, "port": args.port, "workers": args.workers}
    )
    serving = config.serving

    def ready(port: int) -> None:
        print(
            f"saiki serving on {serving.host}:{port} ({serving.workers} process(es); Ctrl-C stops)",
            flush=True,
        )

    serve_processes(config, serving.host, serving.port, serving.workers, ready)
    return 0
