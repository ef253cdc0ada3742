"""The scheduled jobs of ``saiki up``: APScheduler fires each ``[schedule]`` job's plain
``saiki`` command as a child process, one at a time and below serving's priority; a job
that fails or is killed is retried with backoff and reported, never stopping the others;
``monitor`` saying "retrain due" starts a retrain unless nothing was recomputed since the
last one. ``saiki.ops.service.Service`` mixes this in.
"""

from __future__ import annotations

import subprocess
import threading
import time
from typing import Any

from saiki.core.config import SaikiConfig
from saiki.core.process import NICE_ENV
from saiki.ops.processes import kill_group, logs_dir, rotate, spawn
from saiki.ops.schedule import (
    JobSpec,
    job_specs,
    next_run,
    policy_retrain,
    retry_delay,
    trigger_for,
)
from saiki.ops.status import read_job, write_job


def iso_now(at: float | None = None) -> str:
    """``at`` (epoch seconds; default now) as ``2026-12-03T21:30:05Z``."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))


def stamped(line: str) -> None:
    """Print one line of ``saiki up``'s output, led by the UTC time it happened (so a
    job's run can be matched with what the service did meanwhile)."""
    print(f"{iso_now()} {line}", flush=True)


def exit_text(code: int) -> str:
    return f"signal {-code}" if code < 0 else f"exit {code}"


class ScheduledJobs:
    """The job half of ``saiki up``'s supervisor (its state lives on the ``Service``)."""

    config: SaikiConfig
    say: Any
    stopping: threading.Event
    _job_process: subprocess.Popen[bytes] | None
    _lock: threading.Lock
    _scheduler: Any
    _refresh_speed: threading.Event

    def _start_scheduler(self) -> None:
        from apscheduler.executors.pool import ThreadPoolExecutor
        from apscheduler.schedulers.background import BackgroundScheduler

        scheduler = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(1)},  # one job at a time
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
            timezone="UTC",
        )
        now = time.time()
        import datetime as dt

        for spec in job_specs(self.config):
            last = read_job(self.config.data_dir, spec.name)
            first = next_run(spec.name, spec.cadence, last.started_at if last else None, now)
            scheduler.add_job(
                self.run_job,
                trigger_for(spec.name, spec.cadence),
                args=(spec, "scheduled"),
                id=spec.name,
                next_run_time=dt.datetime.fromtimestamp(first, dt.UTC) if first else None,
            )
        scheduler.start()
        self._scheduler = scheduler

    def run_job(self, spec: JobSpec, trigger: str) -> int | None:
        """Run one job's command to its end; retry on failure, react to its answer."""
        if self.stopping.is_set():
            return None
        path = logs_dir(self.config.data_dir) / f"{spec.name}.log"
        rotate(path)
        started = time.time()
        with open(path, "ab") as log:
            log.write(f"\n== {spec.name} ({trigger}) at {iso_now()}\n".encode())
            log.flush()
            process = spawn(
                self.config,
                spec.argv,
                log,
                SAIKI_JOB_TRIGGER=trigger,
                **{NICE_ENV: str(self.config.schedule.nice)},
            )
            with self._lock:
                self._job_process = process
            code = process.wait()
            kill_group(process.pid)
        with self._lock:
            self._job_process = None
        seconds = time.time() - started
        if code < 0:
            self._mark_killed(spec.name, process.pid, code)
        if self.stopping.is_set():
            return code
        if code == 0 and spec.name == "recompute":
            self._refresh_speed.set()
        if code == 0 or (spec.name == "monitor" and code == 1):
            self.say(
                f"saiki up: {spec.name} ({trigger}) "
                f"{'ok' if code == 0 else 'says a retrain is due'} "
                f"({seconds:.1f}s from {iso_now(started)})"
            )
            if spec.name == "monitor" and code == 1:
                self._retrain_if_new_data()
            return code
        record = read_job(self.config.data_dir, spec.name)
        failures = record.failures if record else 1
        delay = retry_delay(failures)
        self.say(
            f"saiki up: {spec.name} ({trigger}) failed ({exit_text(code)}, {seconds:.1f}s "
            f"from {iso_now(started)}); retry "
            f"{failures} in {delay:.0f}s; log: {path}"
        )
        self._later(spec, "retry", delay)
        return code

    def _mark_killed(self, name: str, pid: int, code: int) -> None:
        """A job killed by a signal could not write its own outcome."""
        record = read_job(self.config.data_dir, name)
        if record is not None and record.outcome == "running" and record.pid == pid:
            record.outcome = "failed"
            record.detail = f"killed by {exit_text(code)}"
            record.failures += 1
            record.finished_at = time.time()
            write_job(self.config.data_dir, record)

    def _later(self, spec: JobSpec, trigger: str, delay: float) -> None:
        import datetime as dt

        scheduler = self._scheduler
        if scheduler is None or self.stopping.is_set():
            return
        at = dt.datetime.fromtimestamp(time.time() + delay, dt.UTC)
        scheduled = scheduler.get_job(spec.name)
        if (
            scheduled is not None
            and scheduled.next_run_time is not None
            and scheduled.next_run_time <= at
        ):
            return  # the scheduled run comes first and is the retry
        scheduler.add_job(
            self.run_job,
            "date",
            run_date=at,
            args=(spec, trigger),
            id=f"{spec.name}-{trigger}",
            replace_existing=True,
        )

    def _retrain_if_new_data(self) -> None:
        """Retrain now, unless a retrain already ran after the newest recompute, or the
        last retrains lost and the policy's wait since the last one has not passed."""
        from saiki.serving.registry import ModelRegistry

        data_dir = self.config.data_dir
        retrain, recompute = read_job(data_dir, "retrain"), read_job(data_dir, "recompute")
        try:
            registry = ModelRegistry.open(self.config)
            production = registry.production()
            losers = sum(1 for v in registry.versions() if v.version > (production or 0))
        except Exception as exc:  # a file, PostgreSQL or S3: any of them may fail
            # The retrain would read the same registry; the scheduler thread must not die.
            self.say(
                f"saiki up: retrain due, but the model registry could not be read "
                f"({type(exc).__name__}: {exc}); the next monitor run asks again"
            )
            return
        why_not = policy_retrain(
            retrain.started_at if retrain else None,
            recompute.started_at if recompute else None,
            losers,
            time.time(),
        )
        if why_not is not None:
            self.say(f"saiki up: retrain due, but {why_not}")
            return
        spec = next(s for s in job_specs(self.config) if s.name == "retrain")
        self._later(spec, "policy", 0.0)
