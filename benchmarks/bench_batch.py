"""Batch benchmark: full recompute of the batch views over 10M events.

Side by side in one run on the same pinned snapshot: the Beam pipeline on the embedded
runner (read Iceberg, tile, combine, collapse, write the view) and the floor, the same
aggregation done directly in pyarrow in one process (read the same snapshot range,
group by entity and minute, collapse the windows). Run benchmarks.bench_ingest first (it
builds the data set), or this script ingests it.
    python -m benchmarks.bench_batch
"""

from __future__ import annotations

import time

from benchmarks.common import DATA, conditions, traffic_file
from saiki.batch.master import MasterDataset
from saiki.batch.pipeline import (
    SnapshotScan,
    SumWindowsFn,
    normalise_types,
    window_lower_bound,
    window_parts,
)
from saiki.batch.run import BatchRunRequest, catalog_properties, newest_cutoff, run_batch_view
from saiki.core.config import load_config
from saiki.core.eventlog import EventLog
from saiki.core.ingest import Ingestor
from saiki.core.ingest_files import ingest_files
from saiki.feature_repo.spec import ENTITIES
from saiki.feature_repo.tiles import tiles


def main() -> None:
    data = DATA / "ingest"
    config = load_config(data, environ={})
    master = MasterDataset(config)
    if master.resolve_snapshot() is None:
        log = EventLog(config.log_dir)
        ingest_files(Ingestor(log), [traffic_file()])
        master.load(log)
    snapshot = master.resolve_snapshot()
    assert snapshot is not None
    cutoff = newest_cutoff(master, snapshot)

    started = time.perf_counter()
    manifest = run_batch_view(
        config,
        BatchRunRequest(
            snapshot_id=snapshot, as_of_ms=cutoff, load_first=False, make_current=False
        ),
    )
    beam_s = time.perf_counter() - started

    started = time.perf_counter()
    scan = SnapshotScan(
        catalog_properties(config), "saiki.events", snapshot, window_lower_bound(cutoff), cutoff
    )
    table = (
        master.table()
        .scan(row_filter=scan.row_filter(), snapshot_id=snapshot, selected_fields=scan.columns)
        .to_arrow()
    )
    events = normalise_types(table)
    read_s = time.perf_counter() - started
    for entity in ENTITIES:
        tiled = tiles(
            events.column(entity.key),
            events.column("event_time"),
            events.column("event_type"),
            events.column("dwell_ms"),
        )
        SumWindowsFn(cutoff, entity).extract_output([window_parts(tiled, cutoff)])
    floor_s = time.perf_counter() - started

    n = manifest.events_read
    print(f"# batch benchmark — {conditions()}")
    print(
        f"snapshot {snapshot}, cutoff {cutoff}, {n:,} events in the 7-day range; "
        f"{manifest.entities}"
    )
    print(f"{'step':<52}{'seconds':>9}{'events/s':>12}")
    print(
        f"{'Beam pipeline, DirectRunner (FnApiRunner, in-process)':<52}{beam_s:>9.1f}"
        f"{n / beam_s:>12,.0f}"
    )
    print(
        f"{'floor: pyarrow in one process (of which read: ' + f'{read_s:.1f}s)':<52}"
        f"{floor_s:>9.1f}{n / floor_s:>12,.0f}"
    )
    print(
        f"Beam / floor = {beam_s / floor_s:.1f}x (target <= 5x); "
        f"{n / beam_s:,.0f} events/s (target >= 100,000)"
    )


if __name__ == "__main__":
    main()
