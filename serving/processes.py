"""``saiki serve``'s processes: one server or several workers on one port, the event
writer beside them (``[serving] ingest_cpus``), held to ``[serving] cpus``, and watched
until a signal, or until one of them ends on its own."""

from __future__ import annotations

import os
import shutil
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

from saiki.core.config import SaikiConfig
from saiki.core.errors import ComponentError, ConfigError
from saiki.core.process import hold_to_cpus, parse_cpus, usable_cpus
from saiki.serving import observability
from saiki.serving.event_writer import EventWriter, WriterAddress
from saiki.serving.server import RunningServer, start_server

# How often `saiki serve` checks that its worker processes and event writer still run.
_SUPERVISE_S = 0.5


def serve_forever(running: RunningServer, writer: EventWriter | None = None) -> None:
    """Block until SIGINT/SIGTERM, then stop gracefully. With ``writer``, also stop when
    the event writer exits, and raise ComponentError saying so."""
    stopped = threading.Event()

    def handle(signum: int, frame: object) -> None:
        stopped.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    while not stopped.wait(_SUPERVISE_S):
        if writer is not None and not writer.alive():
            break
    running.stop()
    if writer is not None:
        _stop_writer(writer)


def _stop_writer(writer: EventWriter) -> None:
    """Stop the event writer after the servers (their last calls need it); raise if it
    had ended on its own."""
    ended = writer.exitcode()
    writer.stop()
    if ended is not None:
        raise ComponentError(f"the event writer process exited (code {ended}); server stopped")


def _worker(
    config: SaikiConfig, host: str | None, port: int, ready: Any, writer: WriterAddress | None
) -> None:
    observability.configure_logging()
    running = start_server(config, host=host, port=port, event_writer=writer)
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
    connections) and block until SIGINT/SIGTERM, which every worker gets too. With
    ``[serving] metrics_port``, this process serves every worker's metrics at one
    endpoint. With ``[serving] ingest_cpus``, an event writer process on those CPUs
    appends every worker's ``Ingest`` calls (``serving/event_writer.py``).

    The GIL makes one process one core; this is how saiki uses all of them. Raises
    ComponentError when a worker or the event writer exits on its own.
    """
    observability.configure_logging()
    serving = config.serving
    port = serving.port if port is None else port
    metrics_host = host or serving.host
    if workers > 1 and port == 0:
        raise ConfigError("several workers need a fixed --port to share")
    for key in ("cpus", "ingest_cpus"):
        try:
            usable_cpus(getattr(serving, key))
        except ValueError as exc:
            raise ConfigError(f"serving.{key}: {exc}") from exc
    # The writer first, while this process may still use every CPU it holds itself to.
    writer = EventWriter(config) if serving.ingest_cpus else None
    if writer is not None:
        print(
            f"event writer (pid {writer.pid}) on CPU(s) {sorted(parse_cpus(serving.ingest_cpus))}"
            " ([serving] ingest_cpus)",
            file=sys.stderr,
            flush=True,
        )
    # Then this process and the workers it starts (they inherit the CPU set).
    if held := hold_to_cpus(serving.cpus):
        print(f"held to CPU(s) {sorted(held)} ([serving] cpus)", file=sys.stderr, flush=True)
    address = writer.address if writer is not None else None
    if workers <= 1:
        try:
            running = start_server(config, host=host, port=port, event_writer=address)
        except BaseException:
            if writer is not None:
                writer.stop()
            raise
        metrics = observability.serve_metrics(serving.metrics_port, metrics_host)
        on_ready(running.port)
        try:
            serve_forever(running, writer)
        finally:
            if metrics is not None:
                metrics.shutdown()
        return
    _serve_workers(config, host, port, workers, on_ready, writer=writer)


def _serve_workers(
    config: SaikiConfig,
    host: str | None,
    port: int,
    workers: int,
    on_ready: Callable[[int], None],
    *,
    writer: EventWriter | None,
) -> None:
    serving = config.serving
    metrics_host = host or serving.host
    import multiprocessing

    folder = config.data_dir / "serving" / f"metrics-{os.getpid()}"
    if serving.metrics_port:
        observability.prepare_multiprocess(folder)
    context = multiprocessing.get_context("spawn")
    ready = context.Queue()
    address = writer.address if writer is not None else None
    processes = [
        context.Process(target=_worker, args=(config, host, port, ready, address))
        for _ in range(workers)
    ]
    for process in processes:
        process.start()
    for _ in processes:
        ready.get(timeout=120)
    metrics = None
    if serving.metrics_port:
        metrics = observability.serve_metrics(serving.metrics_port, metrics_host, folder)
    on_ready(port)
    ended = _supervise(processes, writer)
    for process in processes:
        if process.is_alive():
            process.terminate()  # SIGTERM: each stops gracefully
    for process in processes:
        process.join(30)
    if metrics is not None:
        metrics.shutdown()
        shutil.rmtree(folder, ignore_errors=True)
    if writer is not None:
        _stop_writer(writer)
    if ended:
        raise ComponentError(f"server process(es) exited: {', '.join(ended)}; server stopped")


def _supervise(processes: list[Any], writer: EventWriter | None) -> list[str]:
    """Block until SIGINT/SIGTERM (returns []) or until a worker or the event writer
    ends on its own (returns the workers that ended)."""
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    signal.signal(signal.SIGINT, lambda *_: stopped.set())
    while not stopped.wait(_SUPERVISE_S):
        ended = [f"worker {p.pid} (code {p.exitcode})" for p in processes if not p.is_alive()]
        if ended or (writer is not None and not writer.alive()):
            # Asked to stop meanwhile: the workers were told to as well.
            return [] if stopped.is_set() else ended
    return []
