"""Whether a background process costs serving's tail by its priority or by its core.

A bare gRPC server answering a health check (``bench_grpc_floor``'s ``sync`` and ``aio``
servers, each in a process of its own) and one asyncio client, at 1 and 8 calls in
flight (``bench_grpc_floor``'s rows), under four conditions in turn:

* ``none``: nothing else runs;
* ``idle spin, any CPU``: one process that only spins, under Linux's SCHED_IDLE policy
  (a waking thread of normal policy preempts it at once), free to run on any CPU;
* ``idle spin, own CPU``: the same held to the last CPU, the server and the client to the
  others;
* ``none, held``: no spinner, the server and the client on the other
  CPUs, the reference for the row above.

If the tail rises under the free spinner but not under the held one, it comes from a
thread of any priority on the core a request thread wakes on, and CPU sets
(``[serving] cpus``, ``[speed] cpus``) are what keeps it off; a lower priority is not.

    python -m benchmarks.bench_busy_core
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import psutil
from grpc_health.v1 import health_pb2, health_pb2_grpc

from benchmarks.bench_grpc_floor import PORT, SECONDS, rows
from benchmarks.common import conditions
from benchmarks.live_traffic import burning, hold_threads

ROUNDS = int(os.environ.get("BUSY_ROUNDS", "2"))


@contextmanager
def held(pids: list[int], cpus: frozenset[int] | None) -> Iterator[None]:
    """Every thread of ``pids`` (this process's own threads only for itself) held to
    ``cpus`` for the block, then to every CPU again."""
    everywhere = frozenset(os.sched_getaffinity(0))
    for pid in pids:
        hold_threads(pid, cpus or everywhere, descendants=pid != os.getpid())
    try:
        yield
    finally:
        for pid in pids:
            hold_threads(pid, everywhere, descendants=pid != os.getpid())


def main() -> None:
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        raise SystemExit("needs two CPUs at least")
    last, others = frozenset(cpus[-1:]), frozenset(cpus[:-1])
    print(f"# a busy core and serving's tail — {conditions()}; {SECONDS:.0f} s per row")
    print(f"held: the spinner to CPU {cpus[-1]}, the server and the client to {sorted(others)}")
    print(
        f"{'server, condition':<34}{'in fl':>4}{'p50 ms':>8}{'p99 ms':>8}{'calls/s':>9}"
        f"{'CPU ms/call':>12}{'steal':>7}{'n':>3}"
    )
    health = ([health_pb2.HealthCheckRequest()], health_pb2_grpc.HealthStub, "Check")
    cases = (
        ("none", None, None),
        ("idle spin, any CPU", None, None),
        ("idle spin, own CPU", last, others),
        ("none, held", None, others),
    )
    for _ in range(ROUNDS):
        for kind in ("sync", "aio"):
            child = subprocess.Popen(
                [sys.executable, "-m", "benchmarks.bench_grpc_floor", kind],
                stdout=subprocess.PIPE,
                text=True,
            )
            try:
                assert child.stdout is not None
                child.stdout.readline()
                for label, spin_cpus, rest in cases:
                    spin = burning("idle", 1, spin_cpus) if "spin" in label else nullcontext()
                    with held([child.pid, os.getpid()], rest), spin:
                        rows(
                            f"{kind}, {label}",
                            psutil.Process(child.pid),
                            f"127.0.0.1:{PORT}",
                            health,
                        )
            finally:
                child.terminate()
                child.wait(30)


if __name__ == "__main__":
    main()
