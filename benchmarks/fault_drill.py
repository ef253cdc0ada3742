"""Fault drill: kill -9 each part of ``saiki up`` under load and check what comes back.

Set-up as the soak (benchmarks/bench_soak.py): a day of history, a view, a model, then
``saiki up`` with ``recompute`` every 2 minutes. A driver process sends 20 ``Ingest``
calls/s × 50 events, as a real client would: a call that fails is sent again, same
events, until it is acknowledged; it records every acknowledged event id, and probes
freshness (``Ingest`` acked → the new count served) once a second.

Faults, one after the other, each once the previous one has recovered:

1. SIGKILL the server (``saiki up`` restarts it);
2. SIGKILL the speed layer's JVM (the driver exits, ``saiki up`` restarts it; it resumes
   from its checkpoint);
3. SIGKILL the scheduler's running batch job (``recompute``; reported, run again);
4. SIGKILL ``saiki up`` itself (its children die with it); then run ``saiki up`` again.

Printed per fault: seconds until a freshness probe is back under 2 s, and the calls that
failed meanwhile (then resent). At the end, with the driver stopped and the log loaded:
every acknowledged event is in the master dataset exactly once, no event id is there
twice, and served features equal the recomputation (``saiki consistency``).

    python -m benchmarks.fault_drill
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pyarrow.compute as pc

from benchmarks.common import PROJECT, conditions, fresh_dir, impressions
from benchmarks.live_traffic import ITEMS, USERS, prepare
from saiki.core.timeutil import now_ms
from saiki.ops.status import read_job, read_part, read_service
from saiki.serving.client import SaikiClient

PORT = 50_971
RECOVERED_MS = 2_000
CALLS_PER_S, EVENTS_PER_CALL = 20, 50


def _drive(target: str, stop: Any, out: Any, acked_path: str) -> None:
    """Ingest at the fixed rate, resending a failed call until acknowledged."""
    client = SaikiClient(target, timeout_s=5)
    rng = np.random.default_rng(7)
    sent, tick, probe_at = 0, time.perf_counter(), 0.0
    with open(acked_path, "a") as acked:
        while not stop.is_set():
            now = now_ms()
            users = rng.choice(USERS, EVENTS_PER_CALL)
            events = impressions(
                users, rng.choice(ITEMS, EVENTS_PER_CALL), "drill", sent, now - 1_000
            )
            probe = time.perf_counter() >= probe_at
            before = None
            while not stop.is_set():
                try:
                    if probe and before is None:
                        before = client.get_features("user", [str(users[0])])
                    client.ingest(events)
                    break
                except Exception as exc:  # resent, as a client would
                    out.put(("failed", time.time(), repr(exc)[:120]))
                    time.sleep(0.5)
            else:
                break
            acked_at = time.perf_counter()
            acked.write("".join(f"{e.event_id}\n" for e in events))
            acked.flush()
            sent += len(events)
            if probe and before is not None:
                probe_at = acked_at + 1.0
                wanted = before.entities[0].values["impressions_1h"] + int(
                    (users == users[0]).sum()
                )
                while time.perf_counter() - acked_at < 60 and not stop.is_set():
                    try:
                        reply = client.get_features("user", [str(users[0])])
                        if reply.entities[0].values["impressions_1h"] >= wanted:
                            break
                    except Exception:
                        pass
                    time.sleep(0.02)
                out.put(("fresh", time.time(), (time.perf_counter() - acked_at) * 1000))
            tick += 1 / CALLS_PER_S
            time.sleep(max(0.0, tick - time.perf_counter()))
    client.close()


def _up(data: Path, log: Any) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAIKI_")}
    return subprocess.Popen(
        [sys.executable, "-m", "saiki.cli.main", "--data-dir", str(data), "up"],
        cwd=PROJECT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


class Drill:
    """The running system, the driver's reports, and the faults."""

    def __init__(self, data: Path) -> None:
        self.data = data
        self.log = open(data.parent / "up.out", "ab")  # noqa: SIM115
        self.up = _up(data, self.log)
        context = multiprocessing.get_context("spawn")
        self.stop, self.out = context.Event(), context.Queue()
        self.acked = data.parent / "acked.txt"
        self.fresh: list[tuple[float, float]] = []
        self.failed: list[tuple[float, str]] = []
        self.driver = context.Process(
            target=_drive, args=(f"127.0.0.1:{PORT}", self.stop, self.out, str(self.acked))
        )

    def drain(self) -> None:
        while not self.out.empty():
            kind, at, value = self.out.get()
            (self.fresh if kind == "fresh" else self.failed).append((at, value))

    def recovered_after(self, at: float, timeout: float = 300) -> float:
        """Seconds from ``at`` until a probe acked after it is served within 2 s."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            self.drain()
            for when, ms in self.fresh:
                if when - ms / 1000 > at and ms < RECOVERED_MS:
                    return when - at
            time.sleep(1)
        return float("nan")

    def fault(self, name: str, kill: Any) -> None:
        time.sleep(20)  # steady first
        at = time.time()
        what = kill()
        seconds = self.recovered_after(at)
        self.drain()
        failed = sum(1 for t, _ in self.failed if t >= at)
        print(
            f"{name:<34} killed {what:<22} fresh < 2 s again after {seconds:6.1f} s; "
            f"{failed} calls failed meanwhile (resent)",
            flush=True,
        )

    def kill_server(self) -> str:
        part = read_part(self.data, "server")
        assert part is not None
        os.kill(part.pid, signal.SIGKILL)
        return f"pid {part.pid}"

    def kill_jvm(self) -> str:
        part = read_part(self.data, "speed")
        assert part is not None
        jvms = [p for p in psutil.Process(part.pid).children(recursive=True) if "java" in p.name()]
        for jvm in jvms:
            jvm.kill()
        return f"pid {jvms[0].pid}" if jvms else "no JVM found"

    def kill_batch_job(self) -> str:
        deadline = time.time() + 600
        while time.time() < deadline:
            job = read_job(self.data, "recompute")
            if job is not None and job.outcome == "running" and psutil.pid_exists(job.pid):
                time.sleep(2)  # into the pipeline
                os.killpg(job.pid, signal.SIGKILL)
                return f"recompute pid {job.pid}"
            time.sleep(0.5)
        return "no recompute ran"

    def kill_up(self) -> str:
        pid = self.up.pid
        self.up.kill()
        self.up.wait()
        time.sleep(3)
        self.up = _up(self.data, self.log)
        return f"saiki up pid {pid}"


def main() -> None:
    data = fresh_dir("drill") / "data"
    print(f"# fault drill — {conditions()}")
    prepare(data)
    (data / "saiki.toml").write_text(
        '[schedule]\nload = "1m"\nrecompute = "2m"\nmonitor = "1h"\nretrain = "1d"\n'
        f"[serving]\nport = {PORT}\n"
    )
    drill = Drill(data)
    client = SaikiClient(f"127.0.0.1:{PORT}", timeout_s=5)
    deadline = time.monotonic() + 300
    while True:
        try:
            client.get_features("user", [USERS[0]])
            break
        except Exception:
            if time.monotonic() > deadline:
                raise SystemExit("saiki up did not start serving") from None
            time.sleep(1)
    time.sleep(30)
    drill.driver.start()
    try:
        drill.fault("1. server", drill.kill_server)
        drill.fault("2. the speed layer's JVM", drill.kill_jvm)
        drill.fault("3. the running batch job", drill.kill_batch_job)
        drill.fault("4. saiki up itself (then rerun)", drill.kill_up)
        time.sleep(20)
    finally:
        drill.stop.set()
        drill.driver.join(120)
        drill.drain()
    _verify(data, drill)
    os.killpg(drill.up.pid, signal.SIGTERM)
    drill.up.wait(120)
    service = read_service(data)
    leftovers = [g for g in (service.groups if service else []) if psutil.pid_exists(g)]
    print(f"after SIGTERM: {len(leftovers)} process groups left")


def _verify(data: Path, drill: Drill) -> None:
    from saiki.batch.master import MasterDataset
    from saiki.core.config import load_config

    done = subprocess.run(
        [sys.executable, "-m", "saiki.cli.main", "--data-dir", str(data), "master", "load"],
        cwd=PROJECT,
        capture_output=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    acked = set(drill.acked.read_text().split())
    table = (
        MasterDataset(load_config(data, environ={}))
        .table()
        .scan(selected_fields=("event_id",))
        .to_arrow()
    )
    ids = table.column("event_id")
    drill_ids = ids.filter(pc.starts_with(ids, "drill-"))
    counts = pc.value_counts(drill_ids)
    doubled = sum(1 for c in counts.field("counts").to_pylist() if c > 1)
    present = set(drill_ids.to_pylist())
    print(
        f"acknowledged {len(acked):,} events; in the master dataset {len(acked & present):,} "
        f"of them; lost {len(acked - present)}; event ids there twice: {doubled}; "
        f"not acknowledged but present (a call that failed after its append): "
        f"{len(present - acked)}"
    )
    consistency = subprocess.run(
        [
            sys.executable,
            "-m",
            "saiki.cli.main",
            "--data-dir",
            str(data),
            "consistency",
            "--sample",
            "300",
        ],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        check=False,
    )
    verdict = [line for line in consistency.stdout.splitlines() if line.startswith("consistency")]
    print(verdict[0] if verdict else consistency.stderr[-500:])


if __name__ == "__main__":
    main()
