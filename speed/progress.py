"""The speed job as its driver and ``saiki status`` see it: its status and its lag
behind the log's head."""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from saiki.core.config import SaikiConfig
from saiki.core.ingest import SEGMENT_ARROW_SCHEMA
from saiki.core.timeutil import now_ms
from saiki.feature_repo.online import SpeedStatus, read_status
from saiki.speed.archive import log_topic

_INGEST_ONLY = pa.schema([SEGMENT_ARROW_SCHEMA.field("ingest_ms")])


@dataclass(frozen=True)
class SpeedProgress:
    """One look at the running job."""

    status: SpeedStatus | None
    log_head: int
    lag_events: int
    lag_seconds: float
    segments: int = 0  # in the folder Flink's source re-lists (its idle cost grows with them)


def progress(config: SaikiConfig) -> SpeedProgress:
    """The job's status with its lag behind the log's head.

    Called twice a second while the job runs: one listing of the log's folder, and only
    the ``ingest_ms`` column of the oldest unread segment.
    """
    events = log_topic(config.log_dir)
    segments = events.live_segments()
    head = segments[-1].end if segments else events.head()
    status = read_status(config.data_dir / "speed")
    seen = status.events_seen if status else 0  # a log position: from the first offset read
    lag = max(head - seen, 0)
    lag_seconds = 0.0
    unread = next((s for s in segments if s.end > seen), None) if lag else None
    if unread is not None:
        table = events.read(unread, _INGEST_ONLY)
        oldest = table.column("ingest_ms")[max(seen - unread.first, 0)].as_py()
        lag_seconds = max((now_ms() - oldest) / 1000, 0.0)
    return SpeedProgress(status, head, lag, lag_seconds, len(segments))
