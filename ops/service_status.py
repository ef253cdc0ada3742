"""``saiki status``: every part and job of the service, from the records in the data dir.

It reads only files (status records, the speed layer's status, the view catalog, the
model registry), so it answers the same whether ``saiki up`` or cron runs the jobs, and
while nothing runs at all.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from saiki.core.config import SaikiConfig
from saiki.core.timeutil import format_iso
from saiki.ops.schedule import job_specs, next_run
from saiki.ops.status import JOBS, PARTS, pid_alive, read_job, read_part, read_service


@dataclass(frozen=True)
class StatusReport:
    """What ``saiki status`` prints, and whether every part is up."""

    lines: list[str]
    healthy: bool


def _ago(seconds: float) -> str:
    seconds = max(seconds, 0.0)
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def _iso(epoch_s: float | None) -> str:
    return format_iso(int(epoch_s * 1000)) if epoch_s else "-"


def service_status(config: SaikiConfig, now: float | None = None) -> StatusReport:
    """Build the report (pure reads)."""
    now = time.time() if now is None else now
    data_dir = config.data_dir
    lines: list[str] = []
    healthy = True
    service = read_service(data_dir)
    if service is None:
        lines.append(f"saiki up has not run on {data_dir}")
        running = False
    else:
        running = service.stopped_at is None and pid_alive(service.pid)
        if running:
            lines.append(
                f"saiki up: running (pid {service.pid}) since {_iso(service.started_at)}, "
                f"serving on {service.address}"
            )
        elif service.stopped_at is not None:
            lines.append(f"saiki up: stopped at {_iso(service.stopped_at)}")
        else:
            lines.append(f"saiki up: DOWN (pid {service.pid} is gone; it did not stop cleanly)")
            healthy = False
    lines.append("")
    lines.append(f"{'part':<8} {'state':<11} {'pid':>7} {'up for':>7} {'restarts':>8}  last exit")
    for name in PARTS:
        part = read_part(data_dir, name)
        if part is None:
            lines.append(f"{name:<8} {'never run':<11}")
            continue
        state = part.state
        if state == "up" and not (running and pid_alive(part.pid)):
            state = "down"
        if running and state != "up":
            healthy = False
        up_for = _ago(now - part.started_at) if state == "up" else "-"
        lines.append(
            f"{name:<8} {state:<11} {part.pid or '-':>7} {up_for:>7} {part.restarts:>8}  "
            f"{part.last_exit or '-'}"
        )
    lines.append("")
    lines.append(
        f"{'job':<10} {'cadence':<10} {'last run':<21} {'outcome':<8} {'took':>6}  "
        f"{'next run':<21} detail"
    )
    cadences = {s.name: s.cadence for s in job_specs(config)}
    for name in JOBS:
        job = read_job(data_dir, name)
        outcome = job.outcome if job else "-"
        if job is not None and outcome == "running" and not pid_alive(job.pid):
            outcome = "killed"
        took = (
            f"{job.finished_at - job.started_at:.0f}s"
            if job is not None and job.finished_at is not None
            else "-"
        )
        # A job that never ran first runs one interval after `saiki up` started.
        base = job.started_at if job else (service.started_at if service else None)
        upcoming = next_run(name, cadences[name], base, now)
        detail = job.detail if job else ""
        if job is not None and job.failures:
            detail = f"{job.failures} failed in a row: {detail}"
        lines.append(
            f"{name:<10} {cadences[name]:<10} {_iso(job.started_at if job else None):<21} "
            f"{outcome:<8} {took:>6}  {_iso(upcoming) if running else '(not running)':<21} {detail}"
        )
    lines.append("")
    lines.extend(_speed_lines(config, now))
    lines.extend(_serving_lines(config))
    return StatusReport(lines, healthy)


def _speed_lines(config: SaikiConfig, now: float) -> list[str]:
    from saiki.speed.progress import progress

    look = progress(config)
    status = look.status
    if status is None:
        return ["speed layer: has not run"]
    watermark = format_iso(status.watermark_ms) if status.watermark_ms else "-"
    last_write = _ago(now - status.last_flush_ms / 1000) if status.last_flush_ms else "-"
    lines = [
        f"speed layer: {status.state}, lag {look.lag_events} events ({look.lag_seconds:.1f}s), "
        f"last write {last_write} ago, watermark {watermark}, "
        f"{look.segments} segments listed"
    ]
    if config.speed.jobmanager:  # the job's own state, from the Flink cluster
        from saiki.core.errors import ComponentError
        from saiki.speed.cluster import FlinkRest, describe_job

        try:
            lines.extend(f"  {line}" for line in describe_job(FlinkRest.for_config(config)))
        except ComponentError as exc:
            lines.append(f"  {exc}")
    return lines


def _serving_lines(config: SaikiConfig) -> list[str]:
    from saiki.feature_repo.views import ViewCatalog
    from saiki.serving.registry import ModelRegistry

    catalog = ViewCatalog.open(config)
    view = catalog.current()
    views = len(catalog.list())
    where = f" at {catalog.shared.folder.url}" if catalog.shared is not None else ""
    registry = ModelRegistry.open(config)
    production = registry.production()
    model = "-"
    if production is not None:
        entry = registry.get(production)
        fp32 = entry.metrics.get("fp32")
        auc = fp32.get("auc") if isinstance(fp32, dict) else None
        model = f"{entry.name}" + (f" (held-out AUC {auc:.4f})" if isinstance(auc, float) else "")
    return [
        "view in service: "
        + (f"{view.view_id}, cutoff {format_iso(view.cutoff_ms)}" if view else "-")
        + f" ({views} kept{where})",
        f"model in production: {model}",
    ]
