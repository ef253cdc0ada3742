"""``monitor`` over the serving path's merger and the event log, in this process."""

from __future__ import annotations

from saiki.core.config import SaikiConfig
from saiki.core.eventlog import EventLog
from saiki.core.timeutil import now_ms
from saiki.ops.consistency import serving_merger
from saiki.serving.monitor import MonitorReport, monitor


def monitor_now(config: SaikiConfig, window_ms: int) -> MonitorReport:
    """Drift and live CTR of the production model over the last ``window_ms``."""
    return monitor(
        config.data_dir, serving_merger(config), EventLog(config.log_dir), now_ms(), window_ms
    )
