"""Four times the server's capacity in concurrent calls: the excess gets RESOURCE_EXHAUSTED
(gRPC's core refuses it without queueing; how fast is a figure of
benchmarks/bench_overload.py), health keeps answering, and the server is normal once the
load stops."""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2

from saiki.core.config import load_config
from saiki.ops.demo_services import free_port
from saiki.serving.client import SaikiClient
from saiki.serving.server import start_server

pytestmark = pytest.mark.slow
CAPACITY = 4  # [serving] max_in_flight
IDS = [f"u{n}" for n in range(3_000)]


def test_overload_is_refused_at_once_and_health_keeps_answering(tmp_path: Path) -> None:
    config = load_config(
        tmp_path / "data",
        environ={},
        serving={"max_in_flight": CAPACITY, "threads": 2},
    )
    health_port = free_port()
    running = start_server(config, host="127.0.0.1", port=0, health_port=health_port)
    target = f"127.0.0.1:{running.port}"
    outcomes: Counter[str] = Counter()
    health: list[int] = []
    stop = threading.Event()
    lock = threading.Lock()

    def hammer() -> None:
        # One channel per caller, as separate clients would have; a past minute is never
        # cached, so every call does the full merge.
        with SaikiClient(target, attempts=1, timeout_s=30) as client:
            while not stop.is_set():
                try:
                    client.get_features("user", IDS, as_of_ms=1_764_000_000_000)
                    outcome = "OK"
                except grpc.RpcError as exc:
                    outcome = exc.code().name
                with lock:
                    outcomes[outcome] += 1

    def probe() -> None:
        with SaikiClient(f"127.0.0.1:{health_port}", attempts=1) as prober:
            while not stop.is_set():
                try:
                    health.append(prober.health(timeout_s=1.0))
                except grpc.RpcError:
                    health.append(-1)
                time.sleep(0.1)

    callers = [threading.Thread(target=hammer) for _ in range(4 * CAPACITY)]
    prober = threading.Thread(target=probe)
    try:
        for thread in [*callers, prober]:
            thread.start()
        time.sleep(4)
        stop.set()
        for thread in [*callers, prober]:
            thread.join(60)
        assert set(outcomes) == {"OK", "RESOURCE_EXHAUSTED"}, outcomes
        assert outcomes["OK"] > 0 and outcomes["RESOURCE_EXHAUSTED"] > 0
        assert health and set(health) == {health_pb2.HealthCheckResponse.SERVING}
        with SaikiClient(target, attempts=1) as client:  # normal once the load stops
            for _ in range(20):
                assert len(client.get_features("user", IDS[:10]).entities) == 10
    finally:
        stop.set()
        running.stop(0)
