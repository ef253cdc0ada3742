"""``monitor`` over the serving path's merger and the event log, in this process, and the
guard that rolls a promotion back on a clear regression."""

from __future__ import annotations

from saiki.core.config import SaikiConfig
from saiki.core.eventlog import EventLog
from saiki.core.timeutil import now_ms
from saiki.ops.consistency import serving_merger
from saiki.serving.monitor import Baselines, MonitorReport, monitor, regression
from saiki.serving.registry import ModelRegistry


def monitor_now(config: SaikiConfig, window_ms: int) -> MonitorReport:
    """Drift and live CTR of the production model over the last ``window_ms``, judged
    against the version's own reference (which the first such window sets)."""
    report = monitor(
        config.data_dir,
        serving_merger(config),
        EventLog(config.log_dir),
        now_ms(),
        window_ms,
        registry=ModelRegistry.open(config),
    )
    return Baselines(config.data_dir).observe(report)


def guard(config: SaikiConfig, report: MonitorReport) -> str | None:
    """Roll production back when it clearly earns less than the version it replaced;
    returns what was done, or None."""
    registry = ModelRegistry.open(config)
    if report.production is None or registry.production() != report.production:
        return None
    previous = registry.previous()
    why = regression(report, previous, Baselines(config.data_dir))
    if why is None:
        return None
    restored = registry.rollback()
    return f"{why}: rolled back to v{restored}"
