"""The rows `bench_live` measures: serving calls at 1 and 8 in flight with the merge
cache's hit rate, Feast's baselines on the same keys, and saiki with the cache off."""

from __future__ import annotations

import asyncio
import os
import urllib.request
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from benchmarks.common import call_load, start_server, timed_calls, with_least_steal
from benchmarks.live_traffic import ITEMS, USERS, feast_item_reads
from saiki.v1 import features_pb2, features_pb2_grpc, prediction_pb2, prediction_pb2_grpc

METRICS_PORT, CACHE_OFF_PORT = 50_952, 50_953
PHASE_S = 12.0
STORE = os.environ.get("LIVE_STORE", "sqlite")
FAILURES: list[str] = []


def _percentiles(samples: list[float]) -> tuple[float, float]:
    values = np.array(samples) * 1000
    return float(np.percentile(values, 50)), float(np.percentile(values, 99))


Load = tuple[list[Any], Callable[[grpc.aio.Channel], Any], str]


def loads(rng: np.random.Generator) -> dict[str, Load]:
    """Each serving row's requests (built beforehand), stub and method."""
    items = [[str(i) for i in rng.choice(ITEMS, 100, replace=False)] for _ in range(64)]
    users = [str(u) for u in rng.choice(USERS, 64)]
    features, predict = (
        features_pb2_grpc.FeatureServiceStub,
        prediction_pb2_grpc.PredictionServiceStub,
    )
    return {
        "GetFeatures, 100 items": (
            [features_pb2.GetFeaturesRequest(entity="item", ids=i) for i in items],
            features,
            "GetFeatures",
        ),
        "GetFeatures, 1 user": (
            [features_pb2.GetFeaturesRequest(entity="user", ids=[u]) for u in users],
            features,
            "GetFeatures",
        ),
        "Predict, 100 candidates": (
            [
                prediction_pb2.PredictRequest(user_id=u, item_ids=items[(n + 1) % 64])
                for n, u in enumerate(users)
            ],
            predict,
            "Predict",
        ),
    }


def _load(
    target: str, load: Load, seconds: float, in_flight: int = 1, connections: int | None = None
) -> tuple[list[float], float]:
    """One row's latencies and calls/s, from one asyncio client (``common.call_load``)."""
    requests, stub, method = load
    return asyncio.run(
        call_load(
            target,
            requests,
            in_flight,
            seconds,
            connections=connections,
            failures=FAILURES,
            stub=stub,
            method=method,
        )
    )


def _cache_counts() -> tuple[float, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=5).read()
    counts = {"hit": 0.0, "miss": 0.0}
    for line in text.decode().splitlines():
        if line.startswith("saiki_feature_cache_total"):
            kind = "hit" if 'result="hit"' in line else "miss"
            counts[kind] += float(line.rpartition(" ")[2])
    return counts["hit"], counts["miss"]


def serving_rows(
    target: str,
    label: str,
    rows: list[str],
    hold: Callable[[], AbstractContextManager[None]] = nullcontext,
) -> None:
    """Every row of `loads` at 1 in flight, and Predict at 8 over 64 connections (the load
    of many clients, spread near evenly over the workers), with the cache hit rate. One
    asyncio client sends requests built beforehand: a client of 8 Python threads had
    held the rate at 8 in flight down with its own CPU and GIL. Each measurement runs
    inside ``hold()`` (the paused phase's: the speed layer stopped)."""
    row_loads = loads(np.random.default_rng(11))
    for name, load in row_loads.items():

        def measure(load: Load = load) -> tuple[list[float], float, float]:
            with hold():
                hits, misses = _cache_counts()
                samples, rate = _load(target, load, PHASE_S)
                hits2, misses2 = _cache_counts()
            served = (hits2 - hits) + (misses2 - misses)
            return samples, rate, (hits2 - hits) / served if served else float("nan")

        (samples, rate, hit_rate), steal, tries = with_least_steal(measure)
        rows.append(
            _row(
                label,
                name + ", 1 in flight",
                samples,
                rate=rate,
                steal=steal,
                tries=tries,
                extra=f"{hit_rate:>10.1%}",
            )
        )

    def eight() -> tuple[list[float], float]:
        with hold():
            return _load(target, row_loads["Predict, 100 candidates"], PHASE_S, 8, 64)

    (samples, rate), steal, tries = with_least_steal(eight)
    name = "Predict, 100 candidates, 8 in flight"
    rows.append(_row(label, name, samples, rate=rate, steal=steal, tries=tries))


def _row(
    label: str,
    name: str,
    samples: list[float],
    *,
    rate: float,
    steal: float,
    tries: int,
    extra: str = "",
) -> str:
    """One printed row: p50, p99, calls/s, the host's steal over it and the attempts
    (``common.with_least_steal``), then any further column."""
    p50, p99 = _percentiles(samples)
    label = f"{label} "  # a long phase label still ends in a space
    return f"{label:<12}{name:<36}{p50:>8.2f}{p99:>8.2f}{rate:>9.0f}{steal:>7.1%}{tries:>3}{extra}"


def feast_rows(data: Path, label: str, rows: list[str]) -> None:
    """Feast on the same store and keys: get_online_features and the store's online_read
    (``live_traffic.feast_item_reads``)."""
    for read, call in feast_item_reads(data):
        store = f" ({STORE})" if "online_read" in read else ""
        (samples, rate), steal, tries = with_least_steal(partial(timed_calls, call, PHASE_S / 2))
        name = f"{read}{store}, 100 items"
        rows.append(_row(label, name, samples, rate=rate, steal=steal, tries=tries))


def cache_off_row(data: Path, label: str, rows: list[str]) -> None:
    """saiki with the cache off: every call merges (a server started for this row)."""
    server = start_server(
        data, CACHE_OFF_PORT, SERVING_FEATURE_CACHE="false", SERVING_MAX_IN_FLIGHT="8"
    )
    try:
        load = loads(np.random.default_rng(13))["GetFeatures, 100 items"]
        (samples, rate), steal, tries = with_least_steal(
            lambda: _load(f"127.0.0.1:{CACHE_OFF_PORT}", load, PHASE_S / 2)
        )
        rows.append(
            _row(
                label,
                "GetFeatures, 100 items, cache off",
                samples,
                rate=rate,
                steal=steal,
                tries=tries,
            )
        )
    finally:
        server.terminate()
        server.wait(30)
