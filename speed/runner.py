"""``saiki speed run``: start (or resume) the Flink job and watch it.

A job resumes from its newest retained checkpoint with the SQL it was started with (its
*epoch cutoff* is remembered in ``speed/job.json``); ``--fresh`` discards checkpoints and
starts from the current batch cutoff. With ``--until-idle`` the driver stops the job once
it has read the whole log, written every tile, and completed one more checkpoint.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from saiki.core.config import SaikiConfig
from saiki.core.errors import ComponentError, ConfigError
from saiki.core.eventlog import EventLog
from saiki.core.timeutil import now_ms
from saiki.feature_repo.views import ViewCatalog
from saiki.speed.archive import (
    ARCHIVED_FILE,
    RunningArchive,
    arrange_for_start,
    log_topic,
    restore_covered,
)
from saiki.speed.cluster import TERMINAL, FlinkRest, job_name, package_distribution
from saiki.speed.idle import (
    IdleWatch,
    checkpoint_folder,
    restored_counters,
    skip_if_nothing_new,
    watch_once,
)
from saiki.speed.job import (
    build_job,
    embedded_python_path,
    flink_environment,
    latest_checkpoint,
    load_lineage,
    save_lineage,
)
from saiki.speed.jvm import jvm_args
from saiki.speed.progress import SpeedProgress, progress
from saiki.speed.shape import JOB_SHAPE, SpeedJobSpec, checkpoint_root


def resolve_spec(config: SaikiConfig, fresh: bool) -> tuple[SpeedJobSpec, Path | None]:
    """The job to run and the checkpoint to restore it from (None: a fresh start)."""
    speed_dir = config.data_dir / "speed"
    checkpoints = checkpoint_root(config.data_dir, config.speed.checkpoint_dir)
    lineage = load_lineage(speed_dir)
    checkpoint = latest_checkpoint(checkpoints)
    # A checkpoint of another job shape (an older saiki) cannot be restored: start fresh
    # from the current cutoff; the tiles already written stay and are max-merged.
    resumable = lineage is not None and lineage.shape == JOB_SHAPE
    if not fresh and resumable and lineage is not None and checkpoint is not None:
        # The listing and checkpoint intervals, object reuse and the Kafka client's
        # settings (a rotated password) are no part of the job's state: the configured
        # ones apply.
        settings = replace(
            lineage,
            monitor_ms=config.speed.monitor_ms,
            checkpoint_interval_ms=config.speed.checkpoint_interval_ms,
            object_reuse=config.speed.object_reuse,
        )
        return replace(settings, kafka_properties=_kafka_properties(config)), checkpoint
    shutil.rmtree(checkpoints, ignore_errors=True)
    current = ViewCatalog.open(config).current()
    spec = SpeedJobSpec(
        data_dir=str(config.data_dir),
        log_dir=str(EventLog(config.log_dir).events.directory),
        epoch_cutoff_ms=current.cutoff_ms if current else 0,
        allowed_lateness_s=config.speed.allowed_lateness_s,
        checkpoint_interval_ms=config.speed.checkpoint_interval_ms,
        sink_flush_ms=config.speed.sink_flush_ms,
        monitor_ms=config.speed.monitor_ms,
        state_ttl_s=max(config.speed.state_ttl_s, 2 * config.speed.allowed_lateness_s + 120),
        kafka_bootstrap=config.log.kafka_bootstrap if config.log.backend == "kafka" else "",
        kafka_topic=config.log.kafka_topic,
        kafka_properties=_kafka_properties(config),
        checkpoint_dir=config.speed.checkpoint_dir,
        object_reuse=config.speed.object_reuse,
    )
    return spec, None


def _kafka_properties(config: SaikiConfig) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(config.log.kafka_properties.items()))


def _start_spec(
    config: SaikiConfig, fresh: bool, reached: Callable[[str], None]
) -> tuple[SpeedJobSpec, Path | None]:
    """The job to start, saved as the lineage. On segment files, the archived segments it
    may read come back first; a fresh job's folder then loses what it would read for
    nothing, and its count of records read starts after that (speed/archive.py)."""
    spec, checkpoint = resolve_spec(config, fresh)
    if not spec.kafka_bootstrap:
        record = spec.speed_dir / ARCHIVED_FILE
        if checkpoint is not None and not restore_covered(checkpoint, record):
            reached("the checkpoint predates what was archived since: starting fresh")
            spec, checkpoint = resolve_spec(config, fresh=True)
        back, archived = arrange_for_start(config, spec.epoch_cutoff_ms, checkpoint, record)
        live = log_topic(config.log_dir).live_segments()
        reached(f"{back} segments brought back, {archived} archived, {len(live)} to list")
        if checkpoint is None:
            first = live[0].first if live else 0
            spec = replace(spec, first_offset=first)
    save_lineage(spec)
    if checkpoint is not None and not spec.kafka_bootstrap:
        spec = replace(spec, restored=restored_counters(spec.speed_dir, checkpoint))
    return spec, checkpoint


def _require_kafka_connector() -> None:
    """The local mini-cluster reads a Kafka topic only with Flink's Kafka connector jar
    in the package's ``lib/``; say so before starting a JVM for nothing."""
    if not any((package_distribution() / "lib").glob("flink-sql-connector-kafka*.jar")):
        raise ConfigError(
            '[log] backend = "kafka": the speed job reads the topic through Flink\'s Kafka '
            "connector (flink-sql-connector-kafka for Flink 2.x), which the apache-flink "
            f"package does not ship; put its jar in {package_distribution() / 'lib'}, or run "
            "the job on a session cluster that has it ([speed] jobmanager)"
        )


def run_speed(
    config: SaikiConfig,
    *,
    until_idle: bool = False,
    fresh: bool = False,
    report: Callable[[SpeedProgress], None] | None = None,
    idle_seconds: float = 1.0,
    stop: threading.Event | None = None,
    stage: Callable[[str], None] | None = None,
) -> SpeedProgress:
    """Run the job until interrupted (or, with until_idle, until caught up).

    ``stage`` hears of each step of the start (JVM up, job planned, views registered,
    job submitted) with the seconds since the call.
    """
    began = time.perf_counter()

    def reached(step: str) -> None:
        if stage is not None:
            stage(f"{step} after {time.perf_counter() - began:.1f}s")

    if config.log.backend == "kafka" and not config.speed.jobmanager:
        _require_kafka_connector()
    os.environ["PYTHONPATH"] = embedded_python_path()
    os.environ["JVM_ARGS"] = jvm_args(config.data_dir / "speed")  # if the JVM starts here
    stop = stop or threading.Event()
    rest = FlinkRest.for_config(config) if config.speed.jobmanager else None
    running = rest.live_job() if rest is not None else None
    if running is not None:
        # A session cluster already runs the job (submitted by an earlier client that
        # has since exited): watch it, never start a second one.
        assert rest is not None
        if fresh:
            raise ComponentError(
                f"--fresh: the Flink cluster at {config.speed.jobmanager} still runs "
                f"{rest.name!r} ({running['jid']}, {running['state']}); saiki speed stop first"
            )
        reached(f"watching the cluster's running job {running['jid']}")
        job: _Job = _ClusterJob(rest, running["jid"])
    else:
        if until_idle and not fresh and (done := skip_if_nothing_new(config)) is not None:
            reached(
                "nothing appended since the newest checkpoint, which holds the whole log "
                f"(head {done.log_head}): every row is written; no job started"
            )
            return done
        (config.data_dir / "speed" / "status.json").unlink(missing_ok=True)
        job = _submit(config, fresh, reached, rest)
    previous = signal.getsignal(signal.SIGTERM)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
    idle = IdleWatch(config.data_dir / "speed")
    try:
        return _watch(config, job, stop, report, idle_seconds if until_idle else None, idle=idle)
    finally:
        # A local job ends with its client; a cluster's keeps running unless this was a
        # bounded run (--until-idle).
        if rest is None or until_idle:
            job.cancel()
            # No checkpoint completes after the cancel: the newest may hold the whole log.
            with contextlib.suppress(Exception):
                watch_once(config, idle)
        elif stage is not None:
            stage(f"the job keeps running on the cluster at {config.speed.jobmanager}")
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, previous)


def _watch(
    config: SaikiConfig,
    job: _Job,
    stop: threading.Event,
    report: Callable[[SpeedProgress], None] | None,
    idle_seconds: float | None,
    *,
    idle: IdleWatch,
) -> SpeedProgress:
    """Watch ``job`` twice a second until ``stop`` (or, with ``idle_seconds``, until it
    has read the whole log, written every row, stayed so that long and a checkpoint holds
    it all: ``idle``, which records each such checkpoint, see speed/idle.py)."""
    spec = load_lineage(config.data_dir / "speed")
    # Only a job this driver runs: a cluster's job outlives its client, and the folder it
    # lists is archived at its next fresh start.
    archive = (
        RunningArchive(
            log_topic(config.log_dir), checkpoint_folder(config), spec.speed_dir / ARCHIVED_FILE
        )
        if isinstance(job, _LocalJob) and spec is not None and not spec.kafka_bootstrap
        else None
    )
    caught_up_at: int | None = None
    while not stop.wait(0.5):
        job.raise_if_failed()
        # Idle: every record read and every changed row written, for a while, and a
        # checkpoint that holds it all, so that a later run resumes past it all.
        checkpointed, look = watch_once(config, idle)
        if archive is not None:
            archive.tick(look.status)
        if report is not None:
            report(look)
        if idle_seconds is None:
            continue
        if look.status is None or look.lag_events or look.status.pending_rows:
            caught_up_at = None
            continue
        if caught_up_at is None:
            caught_up_at = now_ms()
        if now_ms() - caught_up_at >= idle_seconds * 1000 and checkpointed:
            break
    return progress(config)


def _submit(
    config: SaikiConfig, fresh: bool, reached: Callable[[str], None], rest: FlinkRest | None
) -> _Job:
    """Plan the job and submit it: to a local mini-cluster, or to ``rest``'s cluster."""
    spec, checkpoint = _start_spec(config, fresh, reached)
    # The sink writes to the Feast views: they must be registered before the job runs.
    # Registering imports Feast (~5 s) and applies (~2 s): done in a separate process
    # while the JVM starts and the job is planned. Not in a thread: Feast's import churns
    # the garbage collector, whose py4j finalisers then open a second gateway connection,
    # and Flink's planner (which keeps state per Java thread) intermittently failed with
    # "NullPointerException: metadataHandlerProvider".
    from saiki.feature_repo.feast_repo import is_applied

    registering = None if is_applied(config) else _register_views(config)
    env, t_env = flink_environment(spec, checkpoint, config.speed.jobmanager)
    reached("JVM started")
    build_job(env, t_env, spec, config)
    reached("job planned")
    if registering is not None:
        registering.result()  # raises what apply raised
        reached("Feast views registered")
    client = env.execute_async(job_name(config.data_dir))
    reached("job submitted")
    if rest is None:
        return _LocalJob(client)
    return _ClusterJob(rest, str(client.get_job_id()))


class _Job(Protocol):
    """The running job, as the driver sees it."""

    def raise_if_failed(self) -> None: ...

    def cancel(self) -> None: ...


@dataclass
class _LocalJob:
    """A job on the client's own mini-cluster, through its JobClient."""

    client: Any

    def raise_if_failed(self) -> None:
        _raise_if_failed(self.client)

    def cancel(self) -> None:
        _cancel(self.client)


@dataclass
class _ClusterJob:
    """A job on a session cluster, through Flink's REST API. Restarts (a lost
    TaskManager) are Flink's to handle; only a terminal state stops the driver."""

    rest: FlinkRest
    job_id: str

    def raise_if_failed(self) -> None:
        state = self.rest.call(f"/jobs/{self.job_id}").get("state", "")
        if state in TERMINAL:
            failures = self.rest.exceptions(self.job_id)
            reason = failures[0] if failures else "see the JobManager's log"
            raise ComponentError(f"the Flink job {self.job_id} stopped ({state}): {reason}")

    def cancel(self) -> None:
        with contextlib.suppress(ComponentError):
            self.rest.cancel(self.job_id)


def _register_views(config: SaikiConfig) -> Future[None]:
    """:func:`_apply_views` started in a fresh interpreter (spawned, not forked: this
    one may hold Arrow's threads); the pool goes away once it is done."""
    pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
    registered = pool.submit(_apply_views, config)
    pool.shutdown(wait=False)
    return registered


def _apply_views(config: SaikiConfig) -> None:
    from saiki.feature_repo.feast_repo import apply

    apply(config)


def _raise_if_failed(client: Any) -> None:
    try:
        status = str(client.get_job_status().result())
    except Exception:  # the per-job mini-cluster is gone: the job ended
        status = "GONE"
    if "FAILED" not in status and status != "GONE":
        return
    reason = "see the Flink log under " + str(
        Path(sys.executable).parent.parent / "lib/python*/site-packages/pyflink/log/"
    )
    try:
        client.get_job_execution_result().result()
    except Exception as exc:  # the job's failure, with its Python cause inside
        causes = [
            line.strip()
            for line in str(exc).splitlines()
            if "PythonException" in line or line.strip().startswith("Caused by")
        ]
        if causes:
            reason = causes[-1]
    raise ComponentError(f"the Flink job stopped ({status}): {reason}")


def _cancel(client: Any) -> None:
    # Already gone is fine: its retained checkpoints stay on disk for the next run.
    with contextlib.suppress(Exception):
        client.cancel().result()
    time.sleep(0.2)
