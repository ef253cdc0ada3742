"""GetFeatures benchmark: saiki's exact-window gRPC call against stock Feast reads.

Side by side in one run on the same SQLite online store: ``GetFeatures`` over loopback
gRPC (a ``saiki serve`` process; the client in this one) for 1 user and for 100 items,
every window × aggregation plus derived features, batch view merged with speed tiles;
and Feast's in-process ``get_online_features`` for the same entities and the same 15
features of the batch views (which Feast can only serve as of the batch cutoff).
    python -m benchmarks.bench_features
"""

from __future__ import annotations

import functools
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np

from benchmarks.common import DATA, conditions, fresh_dir, start_server
from saiki.core.config import load_config
from saiki.feature_repo.spec import FEATURE_NAMES
from saiki.v1 import features_pb2, features_pb2_grpc

CALLS = 2_000
SERVE_PORT = 50_931


def prepare(data: Path) -> None:
    """Simulate, ingest, batch run two hours before the end, speed layer over the rest."""
    run = [sys.executable, "-m", "saiki.cli.main", "--data-dir", str(data)]
    traffic = data.parent / "features-traffic.jsonl"
    subprocess.run(
        [
            *run,
            "simulate",
            "--users",
            "5000",
            "--items",
            "1000",
            "--days",
            "4",
            "--seed",
            "3",
            "--end",
            "2026-11-20T00:00:00Z",
            "--out",
            str(traffic),
        ],
        check=True,
        capture_output=True,
    )
    subprocess.run([*run, "ingest", str(traffic)], check=True, capture_output=True)
    subprocess.run(
        [*run, "batch", "run", "--as-of", "2026-11-19T22:00:00Z"], check=True, capture_output=True
    )
    subprocess.run([*run, "speed", "run", "--until-idle"], check=True, capture_output=True)


def percentiles(samples: list[float]) -> tuple[float, float, float]:
    """p50, p99 (ms) and calls per second."""
    values = np.array(samples) * 1000
    return (
        float(np.percentile(values, 50)),
        float(np.percentile(values, 99)),
        (len(samples) / sum(samples)),
    )


def time_calls(call: object, calls: int = CALLS) -> list[float]:
    for _ in range(50):  # warm-up
        call()  # type: ignore[operator]
    samples = []
    for _ in range(calls):
        started = time.perf_counter()
        call()  # type: ignore[operator]
        samples.append(time.perf_counter() - started)
    return samples


def main() -> None:
    data = DATA / "features" / "data"
    if not (data / "views" / "CURRENT").exists():
        fresh_dir("features")
        prepare(data)
    config = load_config(data, environ={})
    users = [f"u{i}" for i in range(100)]
    items = [f"i{i}" for i in range(100)]
    one_user = features_pb2.GetFeaturesRequest(entity="user", ids=users[:1])
    hundred_items = features_pb2.GetFeaturesRequest(entity="item", ids=items)
    results: dict[str, list[float]] = {}
    # The cache holds merged rows until the online store, the view or the minute changes:
    # measured with it (the steady state between speed-layer flushes) and without it
    # (every call merges: the first call after each flush).
    for cache, suffix in (("true", ""), ("false", ", cache off")):
        server = start_server(data, SERVE_PORT, SERVING_FEATURE_CACHE=cache)
        try:
            channel = grpc.insecure_channel(f"127.0.0.1:{SERVE_PORT}")
            grpc.channel_ready_future(channel).result(timeout=60)
            stub = features_pb2_grpc.FeatureServiceStub(channel)
            for name, request in (("1 user", one_user), ("100 items", hundred_items)):
                results[f"saiki GetFeatures (gRPC, merge){suffix}, {name}"] = time_calls(
                    functools.partial(stub.GetFeatures, request)
                )
            channel.close()
        finally:
            server.terminate()
            server.wait(30)
    from saiki.feature_repo.feast_repo import open_store

    store = open_store(config)
    features = [f"item_batch:{name}" for name in FEATURE_NAMES]
    user_features = [f"user_batch:{name}" for name in FEATURE_NAMES]
    rows_items = [{"item_id": i} for i in items]
    results["stock Feast get_online_features, 1 user"] = time_calls(
        lambda: store.get_online_features(
            features=user_features, entity_rows=[{"user_id": users[0]}]
        ).to_dict()
    )
    results["stock Feast get_online_features, 100 items"] = time_calls(
        lambda: store.get_online_features(features=features, entity_rows=rows_items).to_dict()
    )
    print(f"# GetFeatures benchmark — {conditions()}")
    print(
        f"{CALLS} calls each after 50 warm-up calls; {len(FEATURE_NAMES)} features per entity; "
        "SQLite online store; loopback"
    )
    print(f"{'call':<60}{'p50 ms':>9}{'p99 ms':>9}{'calls/s':>9}")
    for name, samples in results.items():
        p50, p99, rate = percentiles(samples)
        print(f"{name:<60}{p50:>9.2f}{p99:>9.2f}{rate:>9.0f}")
    feast = percentiles(results["stock Feast get_online_features, 100 items"])
    for suffix in ("", ", cache off"):
        ours = percentiles(results[f"saiki GetFeatures (gRPC, merge){suffix}, 100 items"])
        print(
            f"100 items{suffix}: saiki p99 {ours[1]:.2f} ms (target <= 5 ms); stock Feast "
            f"p50/saiki p50 = {feast[0] / ours[0]:.1f}x, p99 ratio {feast[1] / ours[1]:.1f}x "
            "(target >= 3x)"
        )


if __name__ == "__main__":
    main()
