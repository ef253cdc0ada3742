"""Predict benchmark: ranked predictions over loopback, int8 against fp32, against Feast.

Side by side in one run on the same data and online store:
* ``Predict`` with 100 candidates at 1 and at 8 calls in flight, the server on all cores
  (``--workers 2``), with the int8 model and then with fp32 (``SAIKI_SERVING_PRECISION``);
* stock Feast ``get_online_features`` for the same 101 entities (1 user + 100 items), in
  process: the feature fetch alone, without any model;
* a trivial gRPC call (the health check) as the loopback floor;
* the model's forward pass alone at batch 100, int8 against fp32;
* int8 again with the feature cache off (``SAIKI_SERVING_FEATURE_CACHE=false``): every
  call merges, as the first calls after a speed-layer flush do.
    python -m benchmarks.bench_predict          (after benchmarks.bench_features)
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from benchmarks.bench_features import prepare
from benchmarks.common import DATA, PROJECT, call_load, conditions, fresh_dir, start_server
from saiki.core.config import load_config
from saiki.feature_repo.spec import FEATURE_NAMES
from saiki.v1 import prediction_pb2

PORT = 50_933
SECONDS = 12
USERS = [f"u{i}" for i in range(500)]
ITEMS = [f"i{i}" for i in range(1000)]


def cli(data: Path, *argv: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAIKI_")}
    subprocess.run(
        [sys.executable, "-m", "saiki.cli.main", "--data-dir", str(data), *argv],
        cwd=PROJECT,
        env=env,
        check=True,
        capture_output=True,
    )


async def load(
    address: str, in_flight: int, connections: int | None = None
) -> tuple[list[float], int]:
    """``Predict`` with 100 random candidates at ``in_flight`` (``common.call_load``)."""
    rng = np.random.default_rng(1)
    requests = [
        prediction_pb2.PredictRequest(
            user_id=USERS[n % len(USERS)],
            item_ids=[ITEMS[i] for i in rng.choice(len(ITEMS), 100, replace=False)],
        )
        for n in range(2_000)
    ]
    return await call_load(address, requests, in_flight, SECONDS, connections=connections)


async def floor(address: str) -> list[float]:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        samples = []
        for _ in range(2000):
            started = time.perf_counter()
            await stub.Check(health_pb2.HealthCheckRequest(service=""))
            samples.append(time.perf_counter() - started)
        return samples


def run_server(data: Path, precision: str, cache: bool = True) -> subprocess.Popen[str]:
    # 8 calls in flight over two processes, each admitting all of its share (the
    # defaults, spelled out so that the figures keep their conditions if defaults move).
    return start_server(
        data,
        PORT,
        workers=2,
        SERVING_PRECISION=precision,
        SERVING_FEATURE_CACHE=str(cache).lower(),
        SERVING_THREADS="2",
        SERVING_MAX_IN_FLIGHT="8",
    )


async def measure(
    precision: str, data: Path, cache: bool = True
) -> dict[str, tuple[list[float], int]]:
    server = run_server(data, precision, cache)
    name = precision if cache else f"{precision} cache off"
    try:
        address = f"127.0.0.1:{PORT}"
        return {f"{name}, {n} in flight": await load(address, n) for n in (1, 8)}
    finally:
        server.terminate()
        server.wait(60)


def feast_fetch(data: Path) -> list[float]:
    from saiki.feature_repo.feast_repo import open_store

    store = open_store(load_config(data, environ={}))
    users = [f"user_batch:{n}" for n in FEATURE_NAMES]
    items = [f"item_batch:{n}" for n in FEATURE_NAMES]
    samples = []
    for n in range(1050):
        chosen = [ITEMS[i] for i in np.random.default_rng(n).choice(len(ITEMS), 100, False)]
        started = time.perf_counter()
        store.get_online_features(
            features=users, entity_rows=[{"user_id": USERS[n % 500]}]
        ).to_dict()
        store.get_online_features(
            features=items, entity_rows=[{"item_id": i} for i in chosen]
        ).to_dict()
        if n >= 50:
            samples.append(time.perf_counter() - started)
    return samples


def main() -> None:
    data = DATA / "features" / "data"
    if not (data / "views" / "CURRENT").exists():
        fresh_dir("features")
        prepare(data)
    if not (data / "models" / "registry.json").exists():
        cli(data, "train", "--promote-if-better")
    results = {}
    for precision in ("int8", "fp32"):
        results.update(asyncio.run(measure(precision, data)))
    # Every call merges its features, as the first calls after a speed-layer flush do.
    results.update(asyncio.run(measure("int8", data, cache=False)))
    server = run_server(data, "int8")
    try:
        echo = asyncio.run(floor(f"127.0.0.1:{PORT}"))
    finally:
        server.terminate()
        server.wait(60)
    feast = feast_fetch(data)
    from saiki.serving.registry import ModelRegistry

    registry = ModelRegistry(data)
    version = registry.production()
    assert version is not None
    forward = registry.get(version).metrics["latency_ms_batch100"]

    def ms(samples: list[float], q: float) -> float:
        return float(np.percentile(np.array(samples) * 1000, q))

    print(f"# Predict benchmark — {conditions()}")
    print(
        f"server: saiki serve --workers 2 (one torch thread each); client: one asyncio "
        f"process, one connection per call in flight, requests built beforehand; {SECONDS}s "
        f"per row; 100 candidates per call; model v{version}"
    )
    print(f"{'call':<44}{'p50 ms':>8}{'p99 ms':>8}{'calls/s':>9}")
    for name, (samples, rate) in results.items():
        print(f"{'Predict ' + name:<44}{ms(samples, 50):>8.2f}{ms(samples, 99):>8.2f}{rate:>9}")
    print(
        f"{'stock Feast fetch, 1 user + 100 items':<44}{ms(feast, 50):>8.2f}"
        f"{ms(feast, 99):>8.2f}{len(feast) / sum(feast):>9.0f}"
    )
    print(
        f"{'trivial gRPC call (health check)':<44}{ms(echo, 50):>8.2f}{ms(echo, 99):>8.2f}"
        f"{len(echo) / sum(echo):>9.0f}"
    )
    print(
        f"forward pass at batch 100, one thread: int8 {forward['int8']:.3f} ms, fp32 "
        f"{forward['fp32']:.3f} ms ({forward['fp32'] / forward['int8']:.1f}x; target >= 1.5x)"
    )
    for name in ("int8", "int8 cache off"):
        one = results[f"{name}, 1 in flight"]
        eight = results[f"{name}, 8 in flight"]
        print(
            f"targets, {name}: p99 at 1 in flight {ms(one[0], 99):.2f} ms (<= 8 ms); "
            f"{eight[1]} predictions/s at 8 in flight (>= 400); Predict p50 "
            f"{ms(one[0], 50):.2f} ms vs Feast fetch alone {ms(feast, 50):.2f} ms"
        )


if __name__ == "__main__":
    main()
