"""What a server tells its operators: Prometheus metrics, one JSON access line per RPC.

Metrics (``prometheus_client``), at ``http://HOST:<[serving] metrics_port>/metrics``:

* ``saiki_rpc_seconds{method,code}``: latency histogram of every handled RPC;
* ``saiki_rpc_received_total{method}``: calls that reached the server's handlers' door.
  Calls refused by gRPC's concurrency bound (``RESOURCE_EXHAUSTED``, answered in its C
  core before any saiki code runs) or abandoned while queued are ``received`` but never
  ``handled``: their count is ``received - handled - in_flight``;
* ``saiki_rpc_in_flight``: calls running now;
* ``saiki_feature_cache_total{result}``: merged rows served from memory or merged;
* ``saiki_model_version``, ``saiki_model_reload_failing``, ``saiki_view_age_seconds``,
  ``saiki_speed_lag_seconds``, ``saiki_health_serving{service}``: gauges set by the
  server's readiness loop;
* ``saiki_speed_job{figure}`` (events seen, tiled, late, rows written, flushes, pending
  rows) and ``saiki_batch_view{figure}`` (events read, dead letters, seconds, cutoff):
  the jobs' own figures, which they leave in the data dir and the server exports.

With ``--workers N`` every worker process writes its figures to a shared folder
(prometheus_client's multiprocess mode) and the parent process alone serves them: one
endpoint per server. Logs go through :mod:`logging` as JSON lines.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Final

import grpc
import orjson
from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    multiprocess,
    start_http_server,
)

MULTIPROC_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"
_BUCKETS: Final = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)

RPC_SECONDS: Final = Histogram(
    "saiki_rpc_seconds", "Latency of handled RPCs", ("method", "code"), buckets=_BUCKETS
)
RPC_RECEIVED: Final = Counter("saiki_rpc_received", "RPCs that reached the server", ("method",))
RPC_IN_FLIGHT: Final = Gauge("saiki_rpc_in_flight", "RPCs running now", multiprocess_mode="livesum")
SHADOW_SKIPPED: Final = Counter(
    "saiki_shadow_skipped", "Requests a staged shadow left unscored: over its CPU budget"
)
FEATURE_CACHE: Final = Counter(
    "saiki_feature_cache", "Merged feature rows, from memory (hit) or merged (miss)", ("result",)
)
MODEL_VERSION: Final = Gauge(
    "saiki_model_version", "Model version in production (0: none)", multiprocess_mode="max"
)
VIEW_AGE: Final = Gauge(
    "saiki_view_age_seconds", "Now minus the serving view's cutoff", multiprocess_mode="max"
)
SPEED_LAG: Final = Gauge(
    "saiki_speed_lag_seconds",
    "Now minus the speed layer's newest ingest time processed",
    multiprocess_mode="max",
)
MODEL_RELOAD_FAILING: Final = Gauge(
    "saiki_model_reload_failing",
    "1 while the registry or experiment names models that cannot be loaded (the log says why)",
    multiprocess_mode="max",
)
# The jobs' own figures: the speed job and the batch run are separate (often short-lived)
# processes that leave their figures in the data dir; the server exports them.
SPEED_JOB: Final = Gauge(
    "saiki_speed_job",
    "The speed job's running totals, from its status file",
    ("figure",),
    multiprocess_mode="max",
)
BATCH_VIEW: Final = Gauge(
    "saiki_batch_view",
    "The serving batch view's run, from its manifest",
    ("figure",),
    multiprocess_mode="max",
)
HEALTH_SERVING: Final = Gauge(
    "saiki_health_serving",
    "1 when the service answers SERVING",
    ("service",),
    multiprocess_mode="min",
)

ACCESS: Final = logging.getLogger("saiki.access")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and any extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON."""
        document: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        document.update(getattr(record, "fields", {}))
        if record.exc_info:
            document["exc"] = self.formatException(record.exc_info)
        # orjson: an access line per call, so the formatter is on every call's path.
        return orjson.dumps(document, default=str).decode()


def configure_logging(level: int = logging.INFO) -> None:
    """Send saiki's logs to stderr as JSON lines (once per process)."""
    root = logging.getLogger("saiki")
    if any(isinstance(h.formatter, JsonFormatter) for h in root.handlers):
        return
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False


def _request_id(request: Any) -> str:
    return str(getattr(request, "request_id", "") or "")


class ObservingInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    """Times every unary call, counts it by method and status, and logs one access line
    for every failed call and for ``access_share`` of the others (``[serving]
    access_log_share``): the line goes through ``logging``, whose handler lock and record
    cost about 0.1 ms of CPU a call with calls in flight on two threads
    (``benchmarks/bench_grpc_floor.py``), which a busy server may rather spend on calls.
    The metrics count every call either way."""

    def __init__(self, access_share: float = 1.0) -> None:
        self._access_share = access_share
        self._credit = 0.0  # shares owed; racing threads may drift it by a line, no more

    def _access_due(self, code: str) -> bool:
        if code != "OK" or self._access_share >= 1.0:
            return True
        self._credit += self._access_share
        if self._credit >= 1.0:
            self._credit -= 1.0
            return True
        return False

    def intercept_service(self, continuation: Any, details: Any) -> Any:
        """Wrap the method's behaviour; other handler kinds pass through untouched."""
        handler = continuation(details)
        method = details.method
        RPC_RECEIVED.labels(method).inc()
        if handler is None or handler.unary_unary is None:
            return handler
        behaviour = handler.unary_unary

        def observed(request: Any, context: grpc.ServicerContext) -> Any:
            started = time.perf_counter()
            RPC_IN_FLIGHT.inc()
            code = "OK"
            try:
                return behaviour(request, context)
            except BaseException:
                status = context.code() if hasattr(context, "code") else None
                code = status.name if isinstance(status, grpc.StatusCode) else "UNKNOWN"
                raise
            finally:
                RPC_IN_FLIGHT.dec()
                seconds = time.perf_counter() - started
                RPC_SECONDS.labels(method, code).observe(seconds)
                if self._access_due(code):
                    ACCESS.info(
                        "rpc",
                        extra={
                            "fields": {
                                "method": method,
                                "code": code,
                                "ms": round(seconds * 1000, 3),
                                "peer": context.peer(),
                                "request_id": _request_id(request),
                            }
                        },
                    )

        return grpc.unary_unary_rpc_method_handler(
            observed,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


def prepare_multiprocess(folder: Path) -> None:
    """Make this process and the workers it starts write metrics under ``folder``
    (call before they import this module's metrics: the env var is read at import)."""
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.db"):
        stale.unlink()
    os.environ[MULTIPROC_ENV] = str(folder)


def serve_metrics(port: int, host: str, multiprocess_folder: Path | None = None) -> Any:
    """Start the /metrics endpoint; in multiprocess mode it aggregates every worker."""
    if not port:
        return None
    registry = REGISTRY
    if multiprocess_folder is not None:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=str(multiprocess_folder))  # type: ignore[no-untyped-call]
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server
