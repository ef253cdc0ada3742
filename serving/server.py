"""The gRPC server: saiki's services plus health checking and reflection."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from saiki.core.config import SaikiConfig
from saiki.core.errors import ConfigError
from saiki.core.timeutil import now_ms
from saiki.feature_repo.online import read_status
from saiki.feature_repo.online_readers import online_reader
from saiki.feature_repo.views import ViewCatalog
from saiki.serving import observability
from saiki.serving.event_service import EventService, LocalAppender, event_appender
from saiki.serving.event_writer import WriterAddress, WriterClient
from saiki.serving.feature_service import FeatureService
from saiki.serving.merge import FeatureMerger
from saiki.serving.names import SERVICE_NAMES
from saiki.serving.observability import SHADOW_SKIPPED, ObservingInterceptor
from saiki.serving.prediction_log import PredictionLog
from saiki.serving.prediction_service import PredictionService
from saiki.serving.predictor import Predictor
from saiki.serving.registry import ModelRegistry
from saiki.serving.security import AuthInterceptor, TokenBook, check_exposure, server_credentials
from saiki.serving.shadow_budget import ShadowBudget
from saiki.serving.speed_status import SpeedWatermark
from saiki.v1 import (
    events_pb2_grpc,
    features_pb2_grpc,
    prediction_pb2_grpc,
)

log = logging.getLogger(__name__)


@dataclass
class RunningServer:
    """A started server and how to stop it."""

    server: grpc.Server
    port: int
    health: health.HealthServicer
    on_stop: Callable[[], None]
    predictor: Predictor
    readiness: Readiness
    health_server: grpc.Server | None = None
    health_port: int = 0

    def stop(self, grace: float = 2.0) -> None:
        """Refuse new calls, let running ones finish within ``grace`` seconds, then stop."""
        self.readiness.stop()
        for name in (*SERVICE_NAMES, ""):
            self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        self.server.stop(grace).wait()
        if self.health_server is not None:
            self.health_server.stop(0).wait()
        self.on_stop()


class Readiness:
    """Keeps each service's health status and the server's gauges true, every interval.

    EventService serves once started. FeatureService serves once its view index is loaded
    (or there is explicitly no view yet: it answers the speed layer's tiles alone).
    PredictionService serves while every model the registry and the experiment name is
    loaded; a corrupt production model leaves it NOT_SERVING with the reason logged and
    in the metrics, and the process up. The overall status ("") is SERVING when all are.
    """

    def __init__(
        self,
        config: SaikiConfig,
        servicers: list[health.HealthServicer],
        predictor: Predictor,
        merger: FeatureMerger,
    ) -> None:
        self._config = config
        self._servicers = servicers
        self._predictor = predictor
        self._merger = merger
        self._stopped = threading.Event()
        self._reported: str | None = None
        self.update()
        self._thread = threading.Thread(target=self._loop, name="readiness", daemon=True)
        self._thread.start()

    def statuses(self) -> dict[str, bool]:
        """Service name -> serving now."""
        event, feature, prediction = SERVICE_NAMES
        return {event: True, feature: True, prediction: self._predictor.ready}

    def update(self) -> None:
        """Set health and gauges from the server's state now; pick up a new model set
        and a new batch view (loaded in the background) even while no request comes."""
        self._predictor.refresh()
        self._merger.refresh()
        statuses = self.statuses()
        statuses[""] = all(statuses.values())
        for name, serving in statuses.items():
            code = (
                health_pb2.HealthCheckResponse.SERVING
                if serving
                else health_pb2.HealthCheckResponse.NOT_SERVING
            )
            for servicer in self._servicers:
                servicer.set(name, code)
            observability.HEALTH_SERVING.labels(name or "server").set(int(serving))
        production = self._predictor.models.production
        observability.MODEL_VERSION.set(production or 0)
        observability.MODEL_RELOAD_FAILING.set(int(self._predictor.last_error is not None))
        cutoff = self._merger.index.cutoff_ms
        observability.VIEW_AGE.set((now_ms() - cutoff) / 1000 if cutoff else 0)
        status = read_status(self._config.data_dir / "speed")
        if status is not None:
            if status.max_ingest_ms:
                observability.SPEED_LAG.set((now_ms() - status.max_ingest_ms) / 1000)
            for figure in _SPEED_FIGURES:
                observability.SPEED_JOB.labels(figure).set(getattr(status, figure))
        manifest = self._merger.index.manifest
        if manifest is not None:
            for figure in _VIEW_FIGURES:
                observability.BATCH_VIEW.labels(figure).set(getattr(manifest, figure))
        error = self._predictor.last_error
        if error != self._reported:
            self._reported = error
            if error:
                state = "still serving the models before" if statuses[""] else "NOT_SERVING"
                log.error("model reload failed (PredictionService %s): %s", state, error)
            else:
                log.info("every service SERVING")

    def _loop(self) -> None:
        interval = self._config.serving.reload_interval_ms / 1000
        while not self._stopped.wait(interval):
            try:
                self.update()
            except Exception:  # the loop must outlive a bad read; the log says what
                log.exception("readiness update failed")

    def stop(self) -> None:
        """End the loop."""
        self._stopped.set()


_SPEED_FIGURES = (
    "events_seen",
    "events_tiled",
    "late_events",
    "rows_written",
    "rows_removed",
    "flushes",
    "pending_rows",
)
_VIEW_FIGURES = ("events_read", "dead_letters", "seconds", "cutoff_ms")


def _listen(server: grpc.Server, address: str, config: SaikiConfig) -> int:
    credentials = server_credentials(config)
    try:
        if credentials is None:
            return int(server.add_insecure_port(address))
        return int(server.add_secure_port(address, credentials))
    except RuntimeError as exc:  # grpcio reports a failed bind this way
        raise ConfigError(f"cannot listen on {address}: {exc}") from exc


def start_server(
    config: SaikiConfig,
    host: str | None = None,
    port: int | None = None,
    health_port: int | None = None,
    event_writer: WriterAddress | None = None,
) -> RunningServer:
    """Build and start the server; ``port=0`` picks a free port (tests). ``health_port``
    (default ``[serving] health_port``; 0: none) starts a health-only server beside it.
    With ``event_writer``, ``Ingest`` calls are forwarded to that process
    (``serving/event_writer.py``); without, this process appends them itself."""
    serving = config.serving
    host = host or serving.host
    check_exposure(config, host)
    interceptors: list[grpc.ServerInterceptor] = [ObservingInterceptor(serving.access_log_share)]
    if config.auth.tokens_file:
        interceptors.insert(0, AuthInterceptor(TokenBook(Path(config.auth.tokens_file))))
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=serving.threads),
        interceptors=interceptors,
        options=[("grpc.so_reuseport", 1), ("grpc.max_receive_message_length", 64 << 20)],
        maximum_concurrent_rpcs=serving.max_in_flight,
    )
    appender = (
        WriterClient(event_writer)
        if event_writer is not None
        else LocalAppender(event_appender(config))
    )
    event_service = EventService(appender, serving.max_events_per_ingest)
    events_pb2_grpc.add_EventServiceServicer_to_server(event_service, server)
    merger = FeatureMerger(
        ViewCatalog.open(config),
        online_reader(config),
        reload_interval_ms=serving.reload_interval_ms,
        cache=serving.feature_cache,
    )
    features_pb2_grpc.add_FeatureServiceServicer_to_server(
        FeatureService(merger, SpeedWatermark(config.data_dir), serving.max_ids), server
    )
    prediction_log = (
        PredictionLog(config.data_dir / "serving", features_share=serving.log_features_share)
        if serving.log_predictions
        else None
    )
    predictor = Predictor(
        ModelRegistry.open(config),
        merger,
        precision=serving.precision,
        prediction_log=prediction_log,
        reload_interval_ms=serving.reload_interval_ms,
        shadow_budget=ShadowBudget(config.models.shadow_cpu, on_skip=SHADOW_SKIPPED.inc),
    )
    prediction_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionService(predictor, serving.max_candidates), server
    )
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    bound = _listen(server, f"{host}:{serving.port if port is None else port}", config)
    servicers = [health_servicer]
    health_server, health_bound = None, 0
    wanted_health = serving.health_port if health_port is None else health_port
    if wanted_health:
        health_server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=1), options=[("grpc.so_reuseport", 1)]
        )
        own = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(own, health_server)
        health_bound = _listen(health_server, f"{host}:{wanted_health}", config)
        servicers.append(own)
        health_server.start()
    server.start()
    readiness = Readiness(config, servicers, predictor, merger)

    def on_stop() -> None:
        event_service.close()
        if prediction_log is not None:
            prediction_log.close()

    return RunningServer(
        server,
        bound,
        health_servicer,
        on_stop,
        predictor,
        readiness,
        health_server,
        health_bound,
    )
