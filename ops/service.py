"""``saiki up``: the gRPC server, the speed layer and a scheduler, supervised until SIGTERM.

* **Parts.** The server (``saiki serve``) and the speed layer (``saiki speed run``) run as
  child processes, each in its own process group with its own log under ``<data>/logs``.
  A child that exits is restarted after a backoff (1 s, doubling to 60 s; back to 1 s
  once it has stayed up a minute); its whole process group goes first, so a speed
  driver's JVM never outlives it. The speed layer resumes from its newest checkpoint.
* **Jobs** (``saiki.ops.scheduled_jobs``). APScheduler fires ``load``, ``recompute``,
  ``monitor`` and ``retrain`` on the cadences of ``[schedule]``; each runs the plain
  ``saiki`` command as a child process, one job at a time (two cores serve first). A job
  that fails or is killed is retried with backoff (30 s doubling to 15 min, never past
  its next scheduled run) and reported; the others go on. ``monitor`` exiting "retrain
  due" starts ``retrain`` at once, unless a retrain has run since the last recompute
  (nothing new to learn from: no loop).
* **Status.** Parts, jobs and the service itself keep records under ``<data>/status``
  (``saiki.ops.status``), which ``saiki status`` reads.
* **Stopping.** SIGTERM or Ctrl-C: the scheduler stops taking jobs, a running job gets
  SIGTERM, the server drains, the speed layer cancels its job keeping its checkpoints.
  If ``saiki up`` itself is killed, its children get SIGKILL from the kernel
  (``saiki.core.process``), and the next ``saiki up`` kills any process group the last
  one recorded that is still alive before it starts.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from saiki.core.config import SaikiConfig
from saiki.core.errors import PreconditionError
from saiki.ops.processes import group_members, kill_group, logs_dir, rotate, spawn
from saiki.ops.schedule import job_specs, trigger_for
from saiki.ops.scheduled_jobs import ScheduledJobs, exit_text, stamped
from saiki.ops.status import (
    PartRecord,
    ServiceRecord,
    read_service,
    status_dir,
    write_part,
    write_service,
)

RESTART_FIRST_S = 1.0
RESTART_MAX_S = 60.0
STABLE_AFTER_S = 60.0  # up this long: the next restart waits RESTART_FIRST_S again
STOP_GRACE_S = 40.0


@dataclass
class Part:
    """One supervised child: how to start it and what happened to it."""

    name: str
    argv: tuple[str, ...]
    process: subprocess.Popen[bytes] | None = None
    log: IO[bytes] | None = None
    started_at: float = 0.0
    restarts: int = 0
    backoff: float = RESTART_FIRST_S
    restart_at: float | None = None
    last_exit: str = ""
    once: tuple[str, ...] = ()  # extra arguments for the next start only

    def record(self, state: str, data_dir: Path) -> None:
        write_part(
            data_dir,
            PartRecord(
                name=self.name,
                state=state,
                pid=self.process.pid if self.process else 0,
                started_at=self.started_at,
                restarts=self.restarts,
                last_exit=self.last_exit,
                log=str(logs_dir(data_dir) / f"{self.name}.log"),
            ),
        )


@dataclass
class Service(ScheduledJobs):
    """The supervisor and scheduler of ``saiki up``."""

    config: SaikiConfig
    serve_argv: tuple[str, ...]
    speed_argv: tuple[str, ...] = ("speed", "run")
    say: Any = stamped
    parts: list[Part] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)
    _job_process: subprocess.Popen[bytes] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _scheduler: Any = None
    _refresh_speed: threading.Event = field(default_factory=threading.Event)

    # ---- life cycle -------------------------------------------------------------------

    def run(self) -> int:
        """Run until SIGTERM/SIGINT (or ``stopping`` is set); returns the exit code."""
        data_dir = self.config.data_dir
        for spec in job_specs(self.config):
            trigger_for(spec.name, spec.cadence)  # a bad cadence fails before anything starts
        with self._exclusive(data_dir):
            self._reap_leftovers(data_dir)
            logs_dir(data_dir).mkdir(parents=True, exist_ok=True)
            record = ServiceRecord(
                pid=os.getpid(),
                started_at=time.time(),
                address=self._address(),
                schedule={s.name: s.cadence for s in job_specs(self.config)},
            )
            write_service(data_dir, record)
            self.parts = [Part("speed", self.speed_argv), Part("server", self.serve_argv)]
            previous = {
                signal.SIGTERM: signal.signal(signal.SIGTERM, self._on_signal),
                signal.SIGINT: signal.signal(signal.SIGINT, self._on_signal),
            }
            try:
                for part in self.parts:
                    self._start(part)
                self._save_groups(record)
                self._start_scheduler()
                self.say(
                    f"saiki up: pid {os.getpid()}, serving on {record.address}, "
                    f"{self._model_in_service()}; logs in {logs_dir(data_dir)}"
                )
                while not self.stopping.wait(0.5):
                    self._supervise()
                    self._save_groups(record)
            finally:
                self._stop()
                for sig, handler in previous.items():
                    signal.signal(sig, handler)
                record.stopped_at = time.time()
                record.groups = []
                write_service(data_dir, record)
        return 0

    def _model_in_service(self) -> str:
        """The start line's word on the model. The retrain policy reads the same registry
        later; reading it here, at start, loads what that read imports (pyarrow's file
        systems, about 65 MB) before the first minute, so the supervisor's memory does
        not step up hours into a run (the eleventh soak: 28 -> 94 MB at the first
        "retrain due")."""
        from saiki.serving.registry import ModelRegistry

        try:
            production = ModelRegistry.open(self.config).production()
        except Exception as exc:  # a file, PostgreSQL or S3: say so, start anyway
            return f"the model registry could not be read ({type(exc).__name__}: {exc})"
        return f"model v{production} in production" if production else "no model in production"

    def _address(self) -> str:
        args = list(self.serve_argv)
        host = args[args.index("--host") + 1] if "--host" in args else self.config.serving.host
        port = args[args.index("--port") + 1] if "--port" in args else self.config.serving.port
        return f"{host}:{port}"

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self.say(f"saiki up: {signal.Signals(signum).name}: stopping")
        self.stopping.set()

    @contextlib.contextmanager
    def _exclusive(self, data_dir: Path) -> Iterator[None]:
        """One ``saiki up`` per data dir."""
        path = status_dir(data_dir) / "up.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                running = read_service(data_dir)
                raise PreconditionError(
                    f"saiki up already runs on {data_dir}"
                    + (f" (pid {running.pid})" if running else "")
                ) from None
            yield

    def _reap_leftovers(self, data_dir: Path) -> None:
        """Kill what a ``saiki up`` that was itself killed left running (a JVM, a job)."""
        last = read_service(data_dir)
        if last is None:
            return
        for group in last.groups:
            if group_members(group):
                self.say(f"saiki up: ending process group {group} left by pid {last.pid}")
                kill_group(group)

    def _save_groups(self, record: ServiceRecord) -> None:
        groups = [p.process.pid for p in self.parts if p.process and p.process.poll() is None]
        job = self._job_process
        if job is not None and job.poll() is None:
            groups.append(job.pid)
        if groups != record.groups:
            record.groups = groups
            write_service(self.config.data_dir, record)

    # ---- parts ------------------------------------------------------------------------

    def _start(self, part: Part) -> None:
        path = logs_dir(self.config.data_dir) / f"{part.name}.log"
        rotate(path)
        if part.log is not None:
            part.log.close()
        part.log = open(path, "ab")  # noqa: SIM115 (closed when the part stops)
        part.process = spawn(self.config, (*part.argv, *part.once), part.log)
        part.once = ()
        part.started_at = time.time()
        part.restart_at = None
        part.record("up", self.config.data_dir)
        self.say(f"saiki up: started the {part.name} (pid {part.process.pid})")

    def _supervise(self) -> None:
        if self._refresh_speed.is_set():
            self._refresh_speed.clear()
            self._restart_speed_fresh()
        now = time.time()
        for part in self.parts:
            process = part.process
            if part.restart_at is not None:
                if now >= part.restart_at:
                    part.restarts += 1
                    self._start(part)
                continue
            if process is None:
                continue
            code = process.poll()
            if code is None:
                if now - part.started_at >= STABLE_AFTER_S:
                    part.backoff = RESTART_FIRST_S
                continue
            kill_group(process.pid)  # whatever it started (the JVM) goes with it
            part.last_exit = exit_text(code)
            part.restart_at = now + part.backoff
            self.say(
                f"saiki up: the {part.name} ended ({part.last_exit}); restarting in "
                f"{part.backoff:.0f}s (log: {logs_dir(self.config.data_dir) / part.name}.log)"
            )
            part.backoff = min(part.backoff * 2, RESTART_MAX_S)
            part.record("restarting", self.config.data_dir)
        for name in ("up", *(p.name for p in self.parts)):
            rotate(logs_dir(self.config.data_dir) / f"{name}.log")

    def _restart_speed_fresh(self) -> None:
        """After a handoff: stop the speed job (its checkpoint kept) and start it fresh
        from the new cutoff, so that it archives the segments the new view made useless
        and its source forgets their paths (docs/service.md). The online store keeps
        every tile meanwhile; events ingested during the restart are served once the new
        job has read them."""
        part = next((p for p in self.parts if p.name == "speed"), None)
        if part is None or part.process is None or part.process.poll() is not None:
            return
        self.say("saiki up: new batch view: restarting the speed layer fresh from its cutoff")
        kill_group(part.process.pid, signal.SIGTERM)
        try:
            part.process.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            self.say("saiki up: the speed layer did not stop in time: killed")
        kill_group(part.process.pid)
        part.process.wait()
        part.once = ("--fresh",)
        self._start(part)

    def _stop(self) -> None:
        """Jobs first, then the server (it drains), then the speed layer."""
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)
        with self._lock:
            job = self._job_process
        if job is not None and job.poll() is None:
            kill_group(job.pid, signal.SIGTERM)
        for part in reversed(self.parts):
            if part.process is not None and part.process.poll() is None:
                kill_group(part.process.pid, signal.SIGTERM)
                try:
                    part.process.wait(STOP_GRACE_S)
                except subprocess.TimeoutExpired:
                    self.say(f"saiki up: the {part.name} did not stop in time: killed")
                kill_group(part.process.pid)
                part.process.wait()
            if part.log is not None:
                part.log.close()
            part.restart_at = None
            part.record("stopped", self.config.data_dir)
        if job is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                job.wait(STOP_GRACE_S)
            kill_group(job.pid)


def run_up(config: SaikiConfig, serve_argv: Sequence[str]) -> int:
    """``saiki up``: supervise until a signal."""
    logs_dir(config.data_dir).mkdir(parents=True, exist_ok=True)
    return Service(config, tuple(serve_argv)).run()
