"""The long-running parts of ``saiki demo``: the speed layer and the gRPC server, as child
processes started with the same ``saiki`` command a user would run, and stopped cleanly.

Children run in their own session so that a Ctrl-C in the terminal reaches only the demo,
which then stops them in order (SIGTERM: the server drains its calls, the speed layer
cancels its Flink job and keeps its checkpoints), and kills what does not stop in time.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from saiki.core.config import SaikiConfig
from saiki.core.errors import ComponentError

_STOP_GRACE_S = 40.0


def free_port() -> int:
    """A TCP port on loopback that nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Child:
    """One child process and where its output goes."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    log: IO[bytes]

    def check(self) -> None:
        """Raise if the child has died."""
        code = self.process.poll()
        if code is not None:
            tail = self.log_path.read_text(errors="replace").strip().splitlines()[-5:]
            raise ComponentError(
                f"the {self.name} exited ({code}); last lines of {self.log_path}:\n  "
                + "\n  ".join(tail)
            )


@dataclass
class DemoServices:
    """Starts children and guarantees they are gone when the demo ends."""

    config: SaikiConfig
    children: list[Child] = field(default_factory=list)

    def start(self, name: str, *argv: str) -> Child:
        """Run ``saiki --data-dir D ARGV…`` in the background, output to a log file."""
        folder = self.config.data_dir / "demo"
        folder.mkdir(parents=True, exist_ok=True)
        log_path = folder / f"{name.replace(' ', '-')}.log"
        log = open(log_path, "wb")  # noqa: SIM115 (closed in stop())
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "saiki.cli.main",
                "--data-dir",
                str(self.config.data_dir),
                *argv,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        child = Child(name, process, log_path, log)
        self.children.append(child)
        return child

    def start_server(self, port: int) -> Child:
        """``saiki serve`` on loopback; returns once its health check says SERVING."""
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        child = self.start(
            "server", "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"
        )
        deadline = time.monotonic() + 180
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                child.check()
                with contextlib.suppress(grpc.RpcError):
                    reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return child
                if time.monotonic() > deadline:
                    raise ComponentError(f"the server did not come up on port {port}")
                time.sleep(0.3)

    def wait_speed_caught_up(self, child: Child, timeout_s: float = 240) -> float:
        """Block until the speed layer has read the whole log; returns the seconds taken."""
        from saiki.speed.progress import progress

        started = time.monotonic()
        while True:
            child.check()
            look = progress(self.config)
            if look.status is not None and look.lag_events == 0 and not look.status.pending_rows:
                return time.monotonic() - started
            if time.monotonic() - started > timeout_s:
                raise ComponentError("the speed layer did not catch up with the event log")
            time.sleep(0.5)

    def stop(self) -> None:
        """Stop every child, newest first: SIGTERM, a grace period, then SIGKILL."""
        for child in reversed(self.children):
            if child.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + _STOP_GRACE_S
        for child in reversed(self.children):
            try:
                child.process.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                print(f"the {child.name} did not stop in time: killed", file=sys.stderr)
            # The whole session: a JVM the speed layer started goes with it.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.process.pid, signal.SIGKILL)
            child.process.wait()
            child.log.close()
        self.children.clear()
