"""``saiki batch run``: recompute every feature from a pinned master snapshot and publish.

A run loads the event log into the master dataset (so the snapshot holds everything
ingested), pins a snapshot, picks the cutoff T, runs the Beam pipeline into a hidden
folder and publishes the view atomically. A failure anywhere before the last step
publishes nothing; the previous view stays current.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from saiki.batch.master import MasterDataset
from saiki.batch.pipeline import (
    DEAD_LETTER,
    LOCAL_PROGRESS,
    ComputeBatchView,
    ReadSnapshotByDay,
    SnapshotScan,
    WriteDeadLetters,
    WriteTables,
    window_lower_bound,
)
from saiki.batch.tables import EVENTS_TABLE, iceberg_time
from saiki.core.config import SaikiConfig
from saiki.core.errors import ComponentError, InvalidInputError, PreconditionError
from saiki.core.eventlog import EventLog
from saiki.core.timeutil import floor_minute, format_iso, now_ms
from saiki.feature_repo.spec import ENTITIES, SPEC_VERSION
from saiki.feature_repo.views import ViewCatalog, ViewManifest

EMBEDDED_RUNNER = "DirectRunner"


@dataclass(frozen=True)
class BatchRunRequest:
    """What a data engineer asks of a run."""

    as_of_ms: int | None = None
    snapshot_id: int | None = None
    runner: str = EMBEDDED_RUNNER
    beam_args: tuple[str, ...] = ()
    load_first: bool = True
    make_current: bool = True
    # Materialise the view into Feast's online store before it becomes current.
    publish_online: bool = True


def code_version() -> str:
    """The package version plus the git commit when run from a checkout."""
    version = metadata.version("saiki")
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return version
    return f"{version}+g{commit}"


def catalog_properties(config: SaikiConfig) -> dict[str, str]:
    """The catalog settings a Beam worker needs to open the master dataset itself
    (``[catalog.properties]`` included: object-store endpoint and credentials)."""
    return {"name": config.catalog.name, **config.iceberg_properties}


def pipeline_options(runner: str, beam_args: Sequence[str]) -> PipelineOptions:
    """Beam options: the embedded runner pinned in-process (no runner binary download)."""
    args = [f"--runner={runner}", *beam_args]
    if runner == EMBEDDED_RUNNER and not any(a.startswith("--direct_running_mode") for a in args):
        args += ["--direct_running_mode=in_memory", "--direct_num_workers=1"]
    return PipelineOptions(args)


def newest_cutoff(master: MasterDataset, snapshot_id: int) -> int:
    """The default cutoff: the end of the newest whole minute the snapshot covers."""
    rows = master.table().scan(snapshot_id=snapshot_id, selected_fields=("event_time",))
    newest = 0
    for task in rows.plan_files():
        bound = task.file.upper_bounds.get(2)  # field 2: event_time, microseconds
        if bound is not None:
            newest = max(newest, int.from_bytes(bound, "little", signed=True) // 1000)
    if newest == 0:
        raise PreconditionError("the master dataset is empty: ingest events first")
    return floor_minute(newest)


def speed_start_offset(
    master: MasterDataset, snapshot_id: int, cutoff_ms: int, next_offset: int
) -> int:
    """The first log offset the speed layer must read: the oldest event at/after T."""
    from pyiceberg.expressions import GreaterThanOrEqual

    after = (
        master.table()
        .scan(
            row_filter=GreaterThanOrEqual("event_time", iceberg_time(cutoff_ms)),
            snapshot_id=snapshot_id,
            selected_fields=("log_offset",),
        )
        .to_arrow()
    )
    if after.num_rows == 0:
        return next_offset
    import pyarrow.compute as pc

    return min(int(pc.min(after.column("log_offset")).as_py()), next_offset)


@dataclass(frozen=True)
class _Pinned:
    """The snapshot and cutoff a run computes from."""

    snapshot_id: int
    cutoff_ms: int
    next_offset: int
    total_records: int


def _pin(master: MasterDataset, request: BatchRunRequest) -> _Pinned:
    snapshot_id = master.resolve_snapshot(request.snapshot_id)
    if snapshot_id is None:
        raise PreconditionError("the master dataset has no snapshot: ingest events first")
    snapshot = master.table().snapshot_by_id(snapshot_id)
    summary = snapshot.summary.additional_properties if snapshot and snapshot.summary else {}
    if request.as_of_ms is not None:
        cutoff = floor_minute(request.as_of_ms)
    else:
        cutoff = newest_cutoff(master, snapshot_id)
    if cutoff <= 0:
        raise InvalidInputError("--as-of", f"not a usable cutoff: {cutoff}")
    return _Pinned(
        snapshot_id,
        cutoff,
        int(summary.get("saiki.log.next-offset", 0)),
        int(summary.get("total-records", 0)),
    )


def _run_pipeline(
    config: SaikiConfig, request: BatchRunRequest, pinned: _Pinned, staging: Path, token: str
) -> dict[str, int]:
    """Run the Beam pipeline into the staging folder; returns its counters."""
    scan = SnapshotScan(
        catalog_properties(config),
        f"{config.catalog.namespace}.{EVENTS_TABLE}",
        pinned.snapshot_id,
        window_lower_bound(pinned.cutoff_ms),
        pinned.cutoff_ms,
    )
    try:
        options = pipeline_options(request.runner, request.beam_args)
        with beam.Pipeline(options=options) as pipeline:
            days = pipeline | "ReadMaster" >> ReadSnapshotByDay(scan, token)
            view = days | "BatchView" >> ComputeBatchView(pinned.cutoff_ms)
            for entity in ENTITIES:
                for part, prefix in (("tiles", "day"), ("features", "part")):
                    name = f"{entity.name}_{part}"
                    _ = view[name] | f"Write_{name}" >> WriteTables(staging, name, prefix)
            _ = view[DEAD_LETTER] | WriteDeadLetters(staging)
        query = pipeline.result.metrics().query(
            beam.metrics.MetricsFilter().with_namespace("saiki")
        )
    except Exception as exc:
        raise ComponentError(f"the Beam pipeline failed: {exc}") from exc
    return {c.key.metric.name: int(c.committed) for c in query["counters"]}


def run_batch_view(
    config: SaikiConfig,
    request: BatchRunRequest,
    progress: Callable[[int, int], None] | None = None,
    before_publish: Callable[[Path], None] | None = None,
) -> ViewManifest:
    """Compute and publish one batch view; returns its manifest.

    ``before_publish`` is called with the staged folder once everything is written: the
    seam the crash tests kill a run at.
    """
    started = time.perf_counter()
    master = MasterDataset(config)
    if request.load_first:
        master.load(EventLog(config.log_dir))
    pinned = _pin(master, request)
    catalog = ViewCatalog.open(config)
    catalog.sweep_staging()
    view_id = catalog.new_view_id()
    staging = catalog.stage(view_id)
    LOCAL_PROGRESS[view_id] = 0
    stop_progress = threading.Event()
    if progress is not None:
        threading.Thread(
            target=_report,
            args=(view_id, pinned.total_records, progress, stop_progress),
            daemon=True,
        ).start()
    try:
        counters = _run_pipeline(config, request, pinned, staging, view_id)
    finally:
        stop_progress.set()
        events_read = LOCAL_PROGRESS.pop(view_id, 0)
    manifest = ViewManifest(
        view_id=view_id,
        snapshot_id=pinned.snapshot_id,
        cutoff_ms=pinned.cutoff_ms,
        spec_version=SPEC_VERSION,
        code_version=code_version(),
        created_ms=now_ms(),
        log_next_offset=pinned.next_offset,
        speed_start_offset=speed_start_offset(
            master, pinned.snapshot_id, pinned.cutoff_ms, pinned.next_offset
        ),
        events_read=counters.get("events_read", events_read),
        dead_letters=counters.get("dead_letters", 0),
        entities={e.name: _rows(staging / f"{e.name}_features") for e in ENTITIES},
        runner=request.runner,
        seconds=round(time.perf_counter() - started, 3),
    )
    if before_publish is not None:
        before_publish(staging)
    previous = catalog.current()
    catalog.publish(staging, manifest, make_current=False)
    if request.make_current:
        if request.publish_online:
            publish_online(config, manifest, previous)
        catalog.make_current(manifest.view_id)
        catalog.prune(config.schedule.keep_views)
    return manifest


def publish_online(
    config: SaikiConfig, manifest: ViewManifest, previous: ViewManifest | None
) -> int:
    """Register the view as Feast's batch source and write its rows to the online store."""
    from saiki.feature_repo.publish import publish_batch_view

    return publish_batch_view(config, manifest, previous)


def _rows(folder: Path) -> int:
    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(f).metadata.num_rows for f in folder.glob("*.parquet"))


def _report(token: str, total: int, progress: Callable[[int, int], None], stop: Any) -> None:
    while not stop.wait(0.5):
        progress(LOCAL_PROGRESS.get(token, 0), total)


def describe(manifest: ViewManifest) -> str:
    """One line about a view, for the command line."""
    return (
        f"{manifest.view_id}: cutoff {format_iso(manifest.cutoff_ms)}, snapshot "
        f"{manifest.snapshot_id}, {manifest.events_read} events, "
        + ", ".join(f"{n} {k}s" for k, n in manifest.entities.items())
        + f", {manifest.dead_letters} dead letters, spec {manifest.spec_version}, "
        f"{manifest.seconds:.1f}s on {manifest.runner}"
    )
