"""The Iceberg master dataset: exactly-once loading, quarantine, time travel, stock readers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from saiki.batch.master import MasterDataset
from saiki.core.config import SaikiConfig
from saiki.core.eventlog import EventLog
from saiki.core.ingest import SEGMENT_ARROW_SCHEMA, Ingestor
from saiki.core.ingest_files import ingest_files
from saiki.simulator import TrafficOptions, TrafficSummary, World, write_jsonl
from tests.conftest import END_MS, make_config

ROOT = Path(__file__).resolve().parents[2]

# Reads saiki.events with nothing but the stock pyiceberg package and the data dir's
# .pyiceberg.yaml: proof that the master dataset is a real Iceberg table.
STOCK_READER = textwrap.dedent(
    """
    import json, sys
    from pyiceberg.catalog import load_catalog
    table = load_catalog("saiki").load_table("saiki.events")
    rows = table.scan(selected_fields=("event_id", "log_offset")).to_arrow()
    snapshot = table.current_snapshot()
    print(json.dumps({
        "ids": rows.column("event_id").to_pylist(),
        "offsets": sorted(rows.column("log_offset").to_pylist()),
        "snapshots": len(table.snapshots()),
        "partitions": [str(f) for f in table.spec().fields],
        "next": snapshot.summary.additional_properties.get("saiki.log.next-offset")
            if snapshot else None,
    }))
    """
)


def stock_env(config: SaikiConfig) -> dict[str, str]:
    """The environment of a stock tool: no PYTHON* settings, the data dir's catalog file."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PYICEBERG_HOME"] = str(config.data_dir)
    return env


def stock_read(config: SaikiConfig) -> dict[str, object]:
    env = stock_env(config)
    out = subprocess.run(
        [sys.executable, "-I", "-c", STOCK_READER],  # -I: no saiki code on sys.path
        capture_output=True,
        text=True,
        env=env,
        cwd="/",
        check=True,
        timeout=120,
    )
    result: dict[str, object] = json.loads(out.stdout)
    return result


def log_ids(config: SaikiConfig) -> list[str]:
    log = EventLog(config.log_dir)
    tables = [t for _, t in log.events.read_range(0, SEGMENT_ARROW_SCHEMA)]
    return pa.concat_tables(tables).column("event_id").to_pylist()


def test_a_stock_reader_sees_exactly_the_accepted_events(
    ingested: SaikiConfig, traffic: tuple[Path, TrafficSummary, World]
) -> None:
    seen = stock_read(ingested)
    ids = seen["ids"]
    assert isinstance(ids, list)
    assert len(ids) == len(set(ids)) == traffic[1].valid_events
    assert set(ids) == set(log_ids(ingested))
    assert seen["offsets"] == list(range(len(ids)))
    assert seen["next"] == str(len(ids))
    assert seen["partitions"] and "day" in str(seen["partitions"][0])  # type: ignore[index]


def test_quarantine_table_keeps_payload_reason_and_ingest_time(
    ingested: SaikiConfig, traffic: tuple[Path, TrafficSummary, World]
) -> None:
    table = MasterDataset(ingested).table("events_quarantine").scan().to_arrow()
    assert table.num_rows == sum(traffic[1].malformed.values())
    assert pc.all(pc.greater(pc.utf8_length(table.column("reason")), 0)).as_py()
    assert pc.all(pc.greater(pc.utf8_length(table.column("raw_payload")), 0)).as_py()
    assert table.column("ingest_time").null_count == 0


def test_counts_per_day_and_type_match_the_log(ingested: SaikiConfig) -> None:
    master = MasterDataset(ingested)
    counts = master.counts(master.resolve_snapshot())
    log = EventLog(ingested.log_dir)
    events = pa.concat_tables(t for _, t in log.events.read_range(0, SEGMENT_ARROW_SCHEMA))
    day = pc.strftime(
        pc.cast(pc.multiply(events.column("event_time"), 1000), pa.timestamp("us", "UTC")),
        format="%Y-%m-%d",
    )
    expected = (
        pa.table({"day": day, "event_type": events.column("event_type")})
        .group_by(["day", "event_type"])
        .aggregate([("event_type", "count")])
    )
    want = {(r["day"], r["event_type"]): r["event_type_count"] for r in expected.to_pylist()}
    got = {(r["day"], r["event_type"]): r["events"] for r in counts.to_pylist()}
    assert got == want


def test_rerunning_the_loader_adds_nothing(ingested: SaikiConfig) -> None:
    master = MasterDataset(ingested)
    before = len(master.snapshots())
    results = master.load(EventLog(ingested.log_dir))
    assert [r.rows for r in results] == [0, 0]
    assert len(master.snapshots()) == before


def test_time_travel_reads_each_snapshot_as_it_was(tmp_path: Path) -> None:
    config = make_config(tmp_path / "data")
    log = EventLog(config.log_dir)
    master = MasterDataset(config)
    paths = []
    for seed in (1, 2):
        path = tmp_path / f"{seed}.jsonl"
        write_jsonl(World(30, 10, seed=seed), TrafficOptions(days=0.5, end_ms=END_MS), path)
        paths.append(path)
    ingest_files(Ingestor(log), [paths[0]], workers=1)
    master.load(log)
    first = master.snapshots()[-1]
    time.sleep(0.01)
    ingest_files(Ingestor(log), [paths[1]], workers=1)
    master.load(log)
    second = master.snapshots()[-1]
    assert second.total_records > first.total_records
    at_first = master.resolve_snapshot(as_of_ms=second.timestamp_ms - 1)
    assert at_first == first.snapshot_id
    assert master.read(at_first, ("event_id",)).num_rows == first.total_records
    assert master.read(second.snapshot_id, ("event_id",)).num_rows == second.total_records


KILLED_LOADER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from saiki.core.config import load_config
    from saiki.core.eventlog import EventLog
    from saiki.batch.master import MasterDataset

    def pause(table, offset):
        # Data files and manifests are written; the catalog commit has not happened.
        Path(sys.argv[2]).write_text(f"{table} {offset}")
        time.sleep(600)

    config = load_config(sys.argv[1], environ={})
    MasterDataset(config, before_commit=pause).load(EventLog(config.log_dir))
    """
)


def test_a_loader_killed_between_writing_and_committing_loses_and_repeats_nothing(
    tmp_path: Path, traffic: tuple[Path, TrafficSummary, World]
) -> None:
    config = make_config(tmp_path / "data")
    log = EventLog(config.log_dir)
    ingest_files(Ingestor(log), [traffic[0]], workers=1)
    marker = tmp_path / "paused"
    loader = subprocess.Popen(
        [sys.executable, "-c", KILLED_LOADER, str(config.data_dir), str(marker)],
        cwd=ROOT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert loader.poll() is None, "the loader died before its commit point"
            assert time.monotonic() < deadline
            time.sleep(0.05)
        written = list((config.data_dir / "warehouse").rglob("*.parquet"))
        assert written, "data files should be on disk before the commit"
        os.killpg(loader.pid, signal.SIGKILL)
    finally:
        loader.wait(30)
    master = MasterDataset(config)
    assert master.snapshots() == []  # the killed load never happened
    master.load(log)
    seen = stock_read(config)
    ids = seen["ids"]
    assert isinstance(ids, list)
    assert len(ids) == len(set(ids)) == traffic[1].valid_events
    assert seen["snapshots"] == 1


def test_the_stock_pyiceberg_cli_describes_the_table(ingested: SaikiConfig) -> None:
    env = stock_env(ingested)
    cli = Path(sys.executable).parent / "pyiceberg"
    out = subprocess.run(
        [str(cli), "--catalog", "saiki", "describe", "saiki.events"],
        capture_output=True,
        text=True,
        env=env,
        cwd="/",
        check=True,
        timeout=120,
    ).stdout
    assert "day(2)" in out  # partitioned by day of event_time (field 2)
    for column in ("event_id: required string", "event_time: required timestamptz"):
        assert column in out
