"""What the soak samples while ``saiki up`` runs: each role's CPU and RSS, the speed
layer's lag behind the log's head, the scheduled jobs' runs, and folder sizes."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import psutil

from saiki.ops.schedule import job_specs
from saiki.ops.status import read_job
from saiki.speed.progress import progress


def processes(up: psutil.Process) -> dict[str, list[psutil.Process]]:
    """``saiki up``'s tree by role."""
    roles: dict[str, list[psutil.Process]] = {
        "up": [up],
        "server": [],
        "speed": [],
        "jvm": [],
        "jobs": [],
    }
    for child in up.children(recursive=True):
        try:
            line = " ".join(child.cmdline())
        except psutil.Error:
            continue
        if "java" in line:
            roles["jvm"].append(child)
        elif " serve" in line:
            roles["server"].append(child)
        elif " speed run" in line:
            roles["speed"].append(child)
        elif "saiki.cli.main" in line:
            roles["jobs"].append(child)
    return roles


class Sampler:
    """Samples ``saiki up``'s process tree twice a second: CPU used per role (by pid, so a
    restarted part counts from its start and a job that lives seconds is caught while it
    runs) and the latest RSS per role."""

    def __init__(self, parent: psutil.Process, roles: tuple[str, ...]) -> None:
        self._parent = parent
        self._last: dict[int, float] = {}
        self._used = dict.fromkeys(roles, 0.0)
        self._rss = dict.fromkeys(roles, 0.0)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sample()
        self._used = dict.fromkeys(roles, 0.0)  # from now on
        threading.Thread(target=self._run, daemon=True).start()

    def _sample(self) -> None:
        tree = processes(self._parent)
        with self._lock:
            for role, members in tree.items():
                rss = 0.0
                for process in members:
                    try:
                        times = process.cpu_times()
                        rss += process.memory_info().rss
                    except psutil.Error:
                        continue
                    total = times.user + times.system
                    self._used[role] += total - self._last.get(process.pid, 0.0)
                    self._last[process.pid] = total
                self._rss[role] = rss / 2**20

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            self._sample()

    def take(self) -> dict[str, tuple[float, float]]:
        """CPU seconds per role since the last call, and the latest RSS (MiB)."""
        self._sample()
        with self._lock:
            taken = {role: (used, self._rss[role]) for role, used in self._used.items()}
            self._used = dict.fromkeys(self._used, 0.0)
        return taken

    def stop(self) -> None:
        self._stop.set()


def watch_lag(config: Any, lags: list[tuple[float, float]], done: threading.Event) -> None:
    """Once a second: how far (s) the speed job is behind the log's head."""
    while not done.wait(1.0):
        try:
            lags.append((time.time(), progress(config).lag_seconds))
        except Exception:  # a listing that raced the archive: the next second
            continue


JobRuns = dict[tuple[str, float], float | None]


def watch_jobs(config: Any, runs: JobRuns, done: threading.Event) -> None:
    """Once a second: every scheduled job's run, from the status records the jobs keep
    (start -> end, None while running), so each window can name the jobs it overlapped."""
    names = [spec.name for spec in job_specs(config)]
    while not done.wait(1.0):
        for name in names:
            record = read_job(config.data_dir, name)
            if record is not None and record.outcome != "running":
                runs[(name, record.started_at)] = record.finished_at
            elif record is not None:
                runs.setdefault((name, record.started_at), None)


def jobs_in(runs: JobRuns, begin: float, end: float) -> str:
    """``recompute 41s, monitor 6s``: the seconds each job ran within [begin, end)."""
    seconds: dict[str, float] = {}
    for (name, started), finished in list(runs.items()):
        overlap = min(end, finished or end) - max(begin, started)
        if overlap > 0:
            seconds[name] = seconds.get(name, 0.0) + overlap
    return ", ".join(f"{name} {secs:.0f}s" for name, secs in seconds.items()) or "-"


def folder_bytes(folder: Path) -> int:
    """Bytes of the files under a folder (0 for what vanished meanwhile: Flink deletes
    checkpoints it no longer retains)."""
    total = 0
    for path in folder.rglob("*"):
        try:
            total += path.stat().st_size if path.is_file() else 0
        except OSError:
            continue
    return total
