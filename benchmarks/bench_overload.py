"""Overload benchmark: admitted calls' latency and time to reject under 4x capacity.

One `saiki serve` process answers `GetFeatures` for 100 items at a past minute (never
cached: every call merges), for each setting of [serving] threads and max_in_flight (the
capacity): first one caller alone (the unloaded reference), then 4 x capacity callers at
once, spread over four client processes so the client's own GIL does not hold calls
back; a prober asks the health-only port every 100 ms throughout. Per setting, in one run:

* unloaded p50/p99 against admitted p50/p99 under overload (target: p99 <= 2x);
* time to reject (RESOURCE_EXHAUSTED answered, client side) p50/p99 (target <= 50 ms);
* health probes answered, and their p99.

    python -m benchmarks.bench_overload
"""

from __future__ import annotations

import multiprocessing
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np

from benchmarks.common import DATA, conditions, fresh_dir, start_server
from saiki.serving.client import SaikiClient

# A refused caller waits this long before it calls again, as gRPC's retry policy
# (serving/client.py: initialBackoff 50 ms) would make it; without it the refusals alone
# keep both cores busy on the client side of this one machine.
BACKOFF_S = 0.05
PORT, HEALTH_PORT = 50_941, 50_942
ITEMS = [f"i{n:05d}" for n in range(100)]
AS_OF = 1_795_089_600_000  # 2026-11-19T12:00Z: after the cutoff, a past minute, never cached
SECONDS = 20.0


def prepare(data: Path) -> None:
    """Two simulated days ingested and a batch view, so the merge has real rows."""
    run = [sys.executable, "-m", "saiki.cli.main", "--data-dir", str(data)]
    traffic = data.parent / "overload-traffic.jsonl"
    subprocess.run(
        [
            *run,
            *("simulate", "--users", "2000", "--items", "500", "--days", "2", "--seed", "5"),
            *("--end", "2026-11-20T00:00:00Z", "--out", str(traffic)),
        ],
        check=True,
        capture_output=True,
    )
    subprocess.run([*run, "ingest", str(traffic)], check=True, capture_output=True)
    subprocess.run(
        [*run, "batch", "run", "--as-of", "2026-11-19T00:00:00Z"], check=True, capture_output=True
    )


def _caller(seconds: float, threads: int) -> tuple[list[float], list[float], int]:
    """``threads`` callers for ``seconds``: (admitted ms, rejected ms, other failures)."""
    admitted: list[float] = []
    rejected: list[float] = []
    failures = [0]
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def loop() -> None:
        with SaikiClient(f"127.0.0.1:{PORT}", attempts=1, timeout_s=30) as client:
            while time.monotonic() < deadline:
                started = time.perf_counter()
                try:
                    client.get_features("item", ITEMS, as_of_ms=AS_OF)
                    bucket = admitted
                except grpc.RpcError as exc:
                    if exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                        with lock:
                            failures[0] += 1
                            if failures[0] == 1:
                                print(f"first failure: {exc.code().name}: {exc.details()}")
                        continue
                    bucket = rejected
                with lock:
                    bucket.append((time.perf_counter() - started) * 1000)
                if bucket is rejected:
                    time.sleep(BACKOFF_S)

    workers = [threading.Thread(target=loop) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return admitted, rejected, failures[0]


def _probe(stop: threading.Event, answered: list[float], missed: list[int]) -> None:
    with SaikiClient(f"127.0.0.1:{HEALTH_PORT}", attempts=1) as prober:
        while not stop.is_set():
            started = time.perf_counter()
            try:
                prober.health(timeout_s=1.0)
                answered.append((time.perf_counter() - started) * 1000)
            except grpc.RpcError:
                missed.append(1)
            time.sleep(0.1)


def _figures(values: list[float]) -> str:
    if not values:
        return "none"
    return (
        f"p50 {np.percentile(values, 50):7.2f} ms  p99 {np.percentile(values, 99):7.2f} ms  "
        f"({len(values)} calls)"
    )


# (threads, max_in_flight): one call at a time; one running and one waiting (the
# default); two at a time; two running and six waiting.
SETTINGS = ((1, 1), (1, 2), (2, 2), (2, 8))


def run_setting(data: Path, threads: int, capacity: int) -> None:
    """Both phases against one server with these settings; prints their figures."""
    server = start_server(
        data,
        PORT,
        SERVING_MAX_IN_FLIGHT=str(capacity),
        SERVING_THREADS=str(threads),
        SERVING_HEALTH_PORT=str(HEALTH_PORT),
    )
    try:
        _caller(2.0, 1)  # warm-up
        quiet, _, _ = _caller(SECONDS / 2, 1)
        stop = threading.Event()
        answered: list[float] = []
        missed: list[int] = []
        prober = threading.Thread(target=_probe, args=(stop, answered, missed))
        prober.start()
        context = multiprocessing.get_context("spawn")
        callers = 4 * capacity
        with context.Pool(4) as pool:
            parts = pool.starmap(
                _caller, [(SECONDS, callers // 4 + (n < callers % 4)) for n in range(4)]
            )
        stop.set()
        prober.join()
    finally:
        server.terminate()
        server.wait(30)
    admitted = [ms for part in parts for ms in part[0]]
    rejected = [ms for part in parts for ms in part[1]]
    failures = sum(part[2] for part in parts)
    ratio = np.percentile(admitted, 99) / np.percentile(quiet, 99) if admitted else float("nan")
    print(f"\n{threads} thread(s), max_in_flight {capacity}; {callers} callers under overload")
    print(f"  unloaded, 1 caller     {_figures(quiet)}")
    print(f"  overload, admitted     {_figures(admitted)}")
    print(f"  overload, rejected     {_figures(rejected)}")
    print(f"  health probes          {_figures(answered)}; {len(missed)} missed")
    print(f"  other failures: {failures}")
    reject_p99 = np.percentile(rejected, 99) if rejected else float("nan")
    print(
        f"  admitted p99 / unloaded p99 = {ratio:.2f}x (target <= 2x); time to reject p99 "
        f"{reject_p99:.2f} ms (target <= 50 ms)"
    )


def main() -> None:
    """Every setting against the same data, one after the other, in one run."""
    data = fresh_dir("overload") / "data"
    prepare(data)
    print(f"# overload benchmark — {conditions()}")
    print(
        "one `saiki serve` process; GetFeatures, 100 items, a past minute (merged every "
        f"call); a refused caller backs off {BACKOFF_S * 1000:.0f} ms; data in {DATA}"
    )
    for threads, capacity in SETTINGS:
        run_setting(data, threads, capacity)


if __name__ == "__main__":
    main()
