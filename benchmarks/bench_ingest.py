"""Ingest benchmark: 10M simulated events through the event log into Iceberg.

Side by side in one run: the event log append (validate, de-duplicate, fsync'd
segments), the master load (log → Iceberg, exactly once), and the physical floor: a
plain ``pyarrow.parquet.write_table`` of the same rows.
    python -m benchmarks.bench_ingest
"""

from __future__ import annotations

import time

import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.common import conditions, fresh_dir, traffic_file
from saiki.batch.master import MasterDataset
from saiki.batch.tables import events_to_iceberg
from saiki.core.config import load_config
from saiki.core.eventlog import EventLog
from saiki.core.ingest import SEGMENT_ARROW_SCHEMA, Ingestor
from saiki.core.ingest_files import ingest_files


def main() -> None:
    path = traffic_file()
    data = fresh_dir("ingest")
    config = load_config(data, environ={})
    log = EventLog(config.log_dir)
    with open(path, "rb") as handle:
        lines = sum(1 for _ in handle)

    started = time.perf_counter()
    result = ingest_files(Ingestor(log), [path])
    append_s = time.perf_counter() - started

    master = MasterDataset(config)
    started = time.perf_counter()
    master.load(log)
    load_s = time.perf_counter() - started

    rows = pa.concat_tables(t for _, t in log.events.read_range(0, SEGMENT_ARROW_SCHEMA))
    rows = events_to_iceberg(rows)
    started = time.perf_counter()
    pq.write_table(rows, data / "floor.parquet", compression="zstd")
    floor_s = time.perf_counter() - started

    n = result.accepted
    print(f"# ingest benchmark — {conditions()}")
    print(
        f"input: {lines:,} lines ({path.stat().st_size / 2**30:.2f} GiB): {n:,} accepted, "
        f"{result.duplicates:,} duplicates, {result.quarantined:,} quarantined"
    )

    def row(label: str, seconds: float, count: int) -> None:
        print(f"{label:<44}{seconds:>9.1f}{count / seconds:>12,.0f}")

    print(f"{'step':<44}{'seconds':>9}{'events/s':>12}")
    row("event log append (validate, dedupe, fsync)", append_s, lines)
    row("master load (log -> Iceberg, exactly once)", load_s, n)
    row("floor: pyarrow.parquet.write_table", floor_s, n)
    total = append_s + load_s
    row("end to end (append + load)", total, lines)
    print(
        f"master load / floor = {load_s / floor_s:.2f}x (target <= 3x); "
        f"end to end {lines / total:,.0f} events/s (target >= 200,000)"
    )


if __name__ == "__main__":
    main()
