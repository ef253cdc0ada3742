"""What a unary call costs before saiki does anything: gRPC Python's own floor.

Side by side in one run, each server in a process of its own, one asyncio client
(``common.call_load``) at 1 and 8 calls in flight for ``FLOOR_SECONDS`` each:

* ``grpc.server`` (threads, as ``saiki serve`` uses) answering a health check with a
  constant, bare;
* the same with ``maximum_concurrent_rpcs`` (16), with saiki's ``ObservingInterceptor``
  (metrics, one JSON access line a call), and with both, as ``saiki serve`` builds it;
* ``grpc.aio.server`` with an ``async`` handler returning the same constant: whether the
  asyncio server would lower the floor;
* ``saiki serve`` itself (one worker, 16 in flight) on ``bench_live``'s data, when it is
  there: its health check, and ``GetFeatures`` for 1 user (the merged row from the
  cache); with an access line for every call (``[serving] access_log_share = 1``, the
  default) and for none but the failed (0), in alternating order, ``FLOOR_ROUNDS`` (2)
  times.

Printed per row: p50/p99 (ms), calls/s, the server process's CPU time per call (user +
system, the figure that does not depend on how the two cores were shared) and the host's
steal over the row (``common.with_least_steal`` measures a row again while it is over 2%).

    python -m benchmarks.bench_grpc_floor
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import time
from concurrent import futures
from typing import Any

import grpc
import numpy as np
import psutil
from grpc_health.v1 import health_pb2, health_pb2_grpc

from benchmarks.common import DATA, call_load, conditions, start_server, with_least_steal

PORT, SAIKI_PORT = 50_977, 50_978
SECONDS = float(os.environ.get("FLOOR_SECONDS", "8"))
ROUNDS = int(os.environ.get("FLOOR_ROUNDS", "2"))
SERVERS = (
    "sync",
    "sync+max-concurrent",
    "sync+saiki-interceptor",
    "sync+both",
    "aio",
)


def _answer() -> health_pb2.HealthCheckResponse:
    return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)


def _serve(kind: str) -> None:
    """One of ``SERVERS``, on PORT, until killed (the child process's whole life)."""
    if kind == "aio":

        class AsyncHealth(health_pb2_grpc.HealthServicer):  # type: ignore[misc]
            async def Check(self, request: Any, context: Any) -> Any:  # noqa: N802
                return _answer()

        async def run() -> None:
            server = grpc.aio.server()
            health_pb2_grpc.add_HealthServicer_to_server(AsyncHealth(), server)
            server.add_insecure_port(f"127.0.0.1:{PORT}")
            await server.start()
            print("ready", flush=True)
            await server.wait_for_termination()

        asyncio.run(run())
        return

    class Health(health_pb2_grpc.HealthServicer):  # type: ignore[misc]
        def Check(self, request: Any, context: Any) -> Any:  # noqa: N802
            return _answer()

    settings: dict[str, Any] = {}
    if kind in {"sync+saiki-interceptor", "sync+both"}:
        from saiki.serving.observability import ObservingInterceptor, configure_logging

        configure_logging()
        for handler in logging.getLogger("saiki").handlers:  # as the benchmarks' servers
            if isinstance(handler, logging.StreamHandler):
                handler.setStream(open(os.devnull, "w"))  # noqa: SIM115
        settings["interceptors"] = [ObservingInterceptor()]
    if kind in {"sync+max-concurrent", "sync+both"}:
        settings["maximum_concurrent_rpcs"] = 16
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), **settings)
    health_pb2_grpc.add_HealthServicer_to_server(Health(), server)
    server.add_insecure_port(f"127.0.0.1:{PORT}")
    server.start()
    print("ready", flush=True)
    server.wait_for_termination()


def _cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def rows(label: str, process: psutil.Process, target: str, load: tuple[Any, Any, str]) -> None:
    requests, stub, method = load
    asyncio.run(call_load(target, requests, 1, 1.0, stub=stub, method=method))  # warm
    for in_flight in (1, 8):

        def measure(in_flight: int = in_flight) -> tuple[list[float], int, float]:
            before = _cpu(process)
            samples, rate = asyncio.run(
                call_load(target, requests, in_flight, SECONDS, stub=stub, method=method)
            )
            return samples, rate, _cpu(process) - before

        (samples, rate, cpu), steal, tries = with_least_steal(measure)
        values = np.array(samples) * 1000
        print(
            f"{label:<34}{in_flight:>4}{np.percentile(values, 50):>8.2f}"
            f"{np.percentile(values, 99):>8.2f}{rate:>9}{cpu * 1000 / len(samples):>12.3f}"
            f"{steal:>7.1%}{tries:>3}",
            flush=True,
        )


def main() -> None:
    """Every row; the saiki rows only where ``bench_live`` left its data."""
    print(f"# gRPC's floor — {conditions()}; {SECONDS:.0f} s per row")
    print(
        f"{'server':<34}{'in fl':>4}{'p50 ms':>8}{'p99 ms':>8}{'calls/s':>9}"
        f"{'CPU ms/call':>12}{'steal':>7}{'n':>3}"
    )
    health = ([health_pb2.HealthCheckRequest()], health_pb2_grpc.HealthStub, "Check")
    for kind in SERVERS:
        child = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.bench_grpc_floor", kind],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert child.stdout is not None
            child.stdout.readline()
            rows(kind, psutil.Process(child.pid), f"127.0.0.1:{PORT}", health)
        finally:
            child.terminate()
            child.wait(30)
    data = DATA / "live" / "data"
    if not (data / "models" / "registry.json").exists():
        print("# no bench_live data: run `python -m benchmarks.bench_live` for saiki's rows")
        return
    from benchmarks.live_rows import loads

    user = loads(np.random.default_rng(11))["GetFeatures, 1 user"]
    for share in ("1", "0") * ROUNDS:  # alternating: the machine drifts between rows
        server = start_server(
            data, SAIKI_PORT, SERVING_MAX_IN_FLIGHT="16", SERVING_ACCESS_LOG_SHARE=share
        )
        try:
            time.sleep(3)  # the view and model load
            process = psutil.Process(server.pid)
            target = f"127.0.0.1:{SAIKI_PORT}"
            rows(f"saiki, access {share}: health", process, target, health)
            rows(f"saiki, access {share}: 1 user", process, target, user)
        finally:
            server.terminate()
            server.wait(30)


if __name__ == "__main__":
    if len(sys.argv) > 1:
        _serve(sys.argv[1])
    else:
        main()
