"""``saiki forget USER_ID``: remove one user's data from the master dataset, the
prediction log and the online rows, and record the deletion.

Order, so that nothing brings the data back and a crash leaves a deletion that running
the command again completes:

1. the deletion record (``core/forgotten.py``, fsync'd): from here on the speed sink
   drops the user's tiles, the prediction loader the user's answers, and a batch view's
   publication writes no row for the user;
2. the event log into the master dataset (so that nothing acknowledged before the
   deletion is loaded after it), then, under the loader's lock, Iceberg row-level
   deletes in ``saiki.events`` and ``saiki.predictions`` and the user's answers out of
   the serving folder's closed files;
3. a speed-layer write that began after the record (up to 15 s; none when the speed
   layer is not running), then the user's online rows, with a change record so that
   servers drop them from their caches;
4. with ``recompute``, a batch run, so that the served batch view no longer holds the
   user's aggregates (else the next scheduled recompute does it).

What it does not remove, and says: the event log's segment files (immutable; the raw
events stay until the log is trimmed), older published views (until ``keep_views``
recomputes have passed), quarantined records (unparsed payloads), and old Iceberg files,
which go when ``saiki master maintain`` expires the snapshots that reach them: after
``[schedule] snapshot_retention``, unless a view, a training set or a model pins one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from saiki.batch.forget import TableForgotten, forget_in_master
from saiki.batch.master import MasterDataset
from saiki.batch.predictions import FilesForgotten, forget_in_files
from saiki.batch.tables import EVENTS_TABLE
from saiki.core import audit, forgotten
from saiki.core.config import SaikiConfig
from saiki.core.errors import InvalidInputError
from saiki.core.eventlog import EventLog
from saiki.core.schema import MAX_ID_CHARS
from saiki.core.timeutil import format_iso, now_ms, parse_duration
from saiki.feature_repo.online import read_status
from saiki.feature_repo.speed_rows import delete_online_rows
from saiki.feature_repo.views import ViewCatalog
from saiki.ops.maintenance import pin_reasons

SPEED_WAIT_S = 15.0


@dataclass
class ForgetReport:
    """What ``saiki forget`` removed, and what still holds the user's data until when."""

    at_ms: int
    tables: list[TableForgotten] = field(default_factory=list)
    files: FilesForgotten = field(default_factory=FilesForgotten)
    online_values: int = 0
    speed_waited: bool = False
    recomputed_view: str | None = None
    old_files_gone_after_ms: int = 0
    pinned: dict[int, list[str]] = field(default_factory=dict)
    older_views: list[str] = field(default_factory=list)


def forget_user(config: SaikiConfig, user_id: str, *, recompute: bool = False) -> ForgetReport:
    """Remove the user's data everywhere saiki keeps it that can be rewritten."""
    if not user_id or len(user_id) > MAX_ID_CHARS:
        raise InvalidInputError("USER_ID", f"required: 1..{MAX_ID_CHARS} characters")
    at = now_ms()
    forgotten.record(config.data_dir, user_id, at)
    audit.record(config.data_dir, "forget", user_sha256=forgotten.user_digest(user_id))
    report = ForgetReport(at)
    master = MasterDataset(config)
    master.load(EventLog(config.log_dir))
    with master.loader_lock():
        report.tables = forget_in_master(master, user_id)
        report.files = forget_in_files(config.data_dir / "serving", user_id, at)
    report.speed_waited = _speed_wrote_after(config, at)
    report.online_values = delete_online_rows(config, "user", [user_id])
    if recompute:
        from saiki.batch.run import BatchRunRequest, run_batch_view

        report.recomputed_view = run_batch_view(config, BatchRunRequest()).view_id
    retention = parse_duration(config.schedule.snapshot_retention, "schedule.snapshot_retention")
    report.old_files_gone_after_ms = at + retention
    deleted = {t.snapshot_id for t in report.tables if t.snapshot_id is not None}
    older = {s.snapshot_id for s in master.snapshots(EVENTS_TABLE) if s.snapshot_id not in deleted}
    report.pinned = {s: why for s, why in pin_reasons(config).items() if s in older}
    current = ViewCatalog.open(config).current_id()
    report.older_views = [
        v.view_id for v in ViewCatalog.open(config).list() if v.view_id != current
    ]
    if not recompute and current is not None:
        report.older_views.insert(0, current)
    return report


def _speed_wrote_after(config: SaikiConfig, at: int) -> bool:
    """Wait for a speed-layer write that began after ``at`` (the sink has read the
    deletion record by then); False when the speed layer is not writing."""
    deadline = time.monotonic() + SPEED_WAIT_S
    while time.monotonic() < deadline:
        status = read_status(config.data_dir / "speed")
        if status is None or status.state != "running" or now_ms() - status.last_flush_ms > 30_000:
            return False
        began = status.last_flush_ms - status.last_flush_seconds * 1000
        if began > at:
            return True
        time.sleep(0.1)
    return False


def describe(report: ForgetReport) -> list[str]:
    """What ``saiki forget`` prints."""
    lines = [
        f"{t.table}: {t.rows} row(s) deleted"
        + (f" (snapshot {t.snapshot_id})" if t.snapshot_id is not None else "")
        for t in report.tables
    ]
    files = report.files
    lines.append(
        f"prediction log: {files.answers} answer(s) removed from {files.files_rewritten} "
        f"closed file(s); {files.open_files} open file(s) are filtered when loaded"
    )
    lines.append(f"online rows: {report.online_values} value(s) deleted; servers' caches told")
    if report.recomputed_view:
        lines.append(f"batch view {report.recomputed_view} published without the user")
    else:
        lines.append(
            "the served batch view still holds the user's aggregates until the next "
            "recompute (`saiki forget --recompute` runs one now)"
        )
    if report.older_views:
        lines.append(
            f"older views kept for handoffs hold them until pruned: {', '.join(report.older_views)}"
        )
    lines.append(
        "old Iceberg files go when `saiki master maintain` expires the snapshots reaching "
        f"them: after {format_iso(report.old_files_gone_after_ms)}"
        + (", except snapshots pinned by:" if report.pinned else "")
    )
    for snapshot, why in sorted(report.pinned.items()):
        lines.append(f"  snapshot {snapshot}: {', '.join(why)} (kept while pinned)")
    lines.append("not removed: the event log's segment files (immutable) and quarantined records")
    return lines
