"""The gRPC server: saiki's services plus health checking and reflection."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from saiki.core.config import SaikiConfig
from saiki.core.errors import ConfigError
from saiki.core.eventlog import EventLog
from saiki.core.ingest import Ingestor
from saiki.feature_repo.online_readers import online_reader
from saiki.feature_repo.views import ViewCatalog
from saiki.serving.event_service import EventService
from saiki.serving.feature_service import FeatureService
from saiki.serving.merge import FeatureMerger
from saiki.serving.prediction_service import PredictionService
from saiki.serving.predictor import PredictionLog, Predictor
from saiki.serving.registry import ModelRegistry
from saiki.serving.speed_status import SpeedWatermark
from saiki.v1 import (
    events_pb2,
    events_pb2_grpc,
    features_pb2,
    features_pb2_grpc,
    prediction_pb2,
    prediction_pb2_grpc,
)

SERVICE_NAMES = (
    events_pb2.DESCRIPTOR.services_by_name["EventService"].full_name,
    features_pb2.DESCRIPTOR.services_by_name["FeatureService"].full_name,
    prediction_pb2.DESCRIPTOR.services_by_name["PredictionService"].full_name,
)


@dataclass
class RunningServer:
    """A started server and how to stop it."""

    server: grpc.Server
    port: int
    health: health.HealthServicer
    on_stop: Callable[[], None]
    predictor: Predictor

    def stop(self, grace: float = 2.0) -> None:
        """Refuse new calls, let running ones finish within ``grace`` seconds, then stop."""
        for name in (*SERVICE_NAMES, ""):
            self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        self.server.stop(grace).wait()
        self.on_stop()


def start_server(
    config: SaikiConfig, host: str | None = None, port: int | None = None
) -> RunningServer:
    """Build and start the server; ``port=0`` picks a free port (tests)."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=config.serving.threads),
        options=[("grpc.so_reuseport", 1), ("grpc.max_receive_message_length", 64 << 20)],
    )
    events_pb2_grpc.add_EventServiceServicer_to_server(
        EventService(Ingestor(EventLog(config.log_dir))), server
    )
    merger = FeatureMerger(
        ViewCatalog(config.data_dir),
        online_reader(config),
        reload_interval_ms=config.serving.reload_interval_ms,
        cache=config.serving.feature_cache,
    )
    features_pb2_grpc.add_FeatureServiceServicer_to_server(
        FeatureService(merger, SpeedWatermark(config.data_dir), config.serving.max_ids), server
    )
    prediction_log = PredictionLog(config.data_dir / "serving")
    predictor = Predictor(
        ModelRegistry(config.data_dir),
        merger,
        precision=config.serving.precision,
        prediction_log=prediction_log,
        reload_interval_ms=config.serving.reload_interval_ms,
    )
    prediction_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionService(predictor, config.serving.max_candidates), server
    )
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    address = f"{host or config.serving.host}:{config.serving.port if port is None else port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError as exc:  # grpcio reports a failed bind this way
        raise ConfigError(f"cannot listen on {address}: {exc}") from exc
    server.start()
    for name in (*SERVICE_NAMES, ""):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return RunningServer(server, bound, health_servicer, prediction_log.close, predictor)


def serve_forever(running: RunningServer) -> None:
    """Block until SIGINT/SIGTERM, then stop gracefully."""
    stopped = threading.Event()

    def handle(signum: int, frame: object) -> None:
        stopped.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    stopped.wait()
    running.stop()


def _worker(data_dir: str, host: str | None, port: int, ready: Any) -> None:
    from saiki.core.config import load_config

    running = start_server(load_config(data_dir), host=host, port=port)
    ready.put(running.port)
    serve_forever(running)


def serve_processes(
    config: SaikiConfig,
    host: str | None,
    port: int | None,
    workers: int,
    on_ready: Callable[[int], None],
) -> None:
    """Run ``workers`` server processes on one port (SO_REUSEPORT: the kernel spreads
    connections) and block until SIGINT/SIGTERM, which every worker gets too.

    The GIL makes one process one core; this is how saiki uses all of them.
    """
    import multiprocessing

    port = config.serving.port if port is None else port
    if workers <= 1:
        running = start_server(config, host=host, port=port)
        on_ready(running.port)
        serve_forever(running)
        return
    if port == 0:
        raise ConfigError("several workers need a fixed --port to share")
    context = multiprocessing.get_context("spawn")
    ready = context.Queue()
    processes = [
        context.Process(target=_worker, args=(str(config.data_dir), host, port, ready))
        for _ in range(workers)
    ]
    for process in processes:
        process.start()
    for _ in processes:
        ready.get(timeout=120)
    on_ready(port)
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    signal.signal(signal.SIGINT, lambda *_: stopped.set())
    while not stopped.wait(0.5):
        if not all(p.is_alive() for p in processes):
            stopped.set()
    for process in processes:
        if process.is_alive():
            process.terminate()  # SIGTERM: each stops gracefully
    for process in processes:
        process.join(30)
