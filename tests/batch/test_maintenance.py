"""Master dataset upkeep: expiry keeps what is pinned and removes only unreachable files;
compaction keeps every row and the loader's exactly-once offset."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import pyarrow as pa
import pytest

from saiki.batch.maintenance import compact, expire_snapshots
from saiki.batch.master import MasterDataset, data_files_by_day
from saiki.batch.tables import EVENTS_TABLE, NEXT_OFFSET
from saiki.batch.training import TrainingSetLineage, write_training_set
from saiki.core.config import SaikiConfig
from saiki.core.eventlog import EventLog
from saiki.core.ingest import Ingestor
from saiki.core.timeutil import now_ms
from saiki.ops.maintenance import maintain, pinned_snapshots, stale_training_sets
from saiki.simulator import TrafficSummary, World
from tests.batch.test_master import log_ids, stock_read
from tests.conftest import make_config

LOADS = 8


@pytest.fixture
def loaded(tmp_path: Path, traffic: tuple[Path, TrafficSummary, World]) -> SaikiConfig:
    """The traffic ingested and loaded in eight parts: eight snapshots, many small files."""
    config = make_config(tmp_path / "data")
    log = EventLog(config.log_dir)
    ingestor = Ingestor(log)
    master = MasterDataset(config)
    lines = traffic[0].read_bytes().splitlines()
    size = len(lines) // LOADS + 1
    for start in range(0, len(lines), size):
        ingestor.ingest_lines(lines[start : start + size], "test")
        master.load(log)
    return config


def ids_at(master: MasterDataset, snapshot: int) -> list[str]:
    return sorted(master.read(snapshot, ("event_id",)).column("event_id").to_pylist())


def parquet_files(config: SaikiConfig) -> set[str]:
    return {str(p) for p in config.data_dir.rglob("*.parquet") if "/events/" in str(p)}


def test_expiry_keeps_the_current_and_pinned_snapshots_whole_and_removes_the_rest(
    loaded: SaikiConfig,
) -> None:
    master = MasterDataset(loaded)
    snapshots = [s.snapshot_id for s in master.snapshots()]
    assert len(snapshots) == LOADS
    pinned, current = snapshots[2], snapshots[-1]
    before = {s: ids_at(master, s) for s in (pinned, current)}
    metadata_before = len(list(loaded.data_dir.rglob("events/metadata/*.metadata.json")))
    result = expire_snapshots(
        master.table(EVENTS_TABLE),
        EVENTS_TABLE,
        older_than_ms=now_ms() + 1,
        pinned={pinned},
        keep_metadata=3,
    )
    assert (result.expired, result.kept, result.pinned_kept) == (LOADS - 2, 2, 1)
    assert [s.snapshot_id for s in master.snapshots()] == [pinned, current]
    assert {s: ids_at(master, s) for s in (pinned, current)} == before  # files intact
    assert result.files_removed >= LOADS - 2  # at least the expired manifest lists
    metadata = list(loaded.data_dir.rglob("events/metadata/*.metadata.json"))
    assert metadata_before > 4 and len(metadata) == 4  # the current one and three before
    seen = stock_read(loaded)  # a stock reader opens the table after the rewrite
    assert seen["snapshots"] == 2 and sorted(seen["ids"]) == sorted(log_ids(loaded))  # type: ignore[arg-type]
    again = expire_snapshots(
        master.table(EVENTS_TABLE), EVENTS_TABLE, older_than_ms=now_ms() + 1, pinned={pinned}
    )
    assert again.expired == 0 and again.files_removed == 0
    # Retention: snapshots younger than the cutoff stay, pinned or not.
    young = expire_snapshots(
        master.table(EVENTS_TABLE), EVENTS_TABLE, older_than_ms=0, pinned=set()
    )
    assert young.expired == 0


def test_compaction_keeps_every_row_and_the_exactly_once_offset(
    loaded: SaikiConfig, traffic: tuple[Path, TrafficSummary, World]
) -> None:
    master = MasterDataset(loaded)
    table = master.table(EVENTS_TABLE)
    offset = master.committed_offset(table)
    old = master.snapshots()[-1].snapshot_id
    files_before = len(list(table.scan().plan_files()))
    result = compact(
        table,
        EVENTS_TABLE,
        carry={NEXT_OFFSET: str(offset)},
        write=data_files_by_day,
        min_files=3,
    )
    assert result.partitions >= 1 and result.files_after < result.files_before
    table = master.table(EVENTS_TABLE)
    assert len(list(table.scan().plan_files())) == files_before - (
        result.files_before - result.files_after
    )
    assert master.committed_offset(table) == offset
    assert ids_at(master, master.snapshots()[-1].snapshot_id) == sorted(log_ids(loaded))
    assert ids_at(master, old) == sorted(log_ids(loaded))  # the old snapshot reads its files
    # The loader resumes exactly where it was: nothing is loaded twice.
    assert [r.rows for r in master.load(EventLog(loaded.log_dir))] == [0, 0]
    # Once the old snapshots expire, their files go, and nothing the table uses does.
    expire_snapshots(table, EVENTS_TABLE, older_than_ms=now_ms() + 1, pinned=set())
    table = master.table(EVENTS_TABLE)
    used = {task.file.file_path for task in table.scan().plan_files()}
    assert {p.removeprefix("file://") for p in used} == parquet_files(loaded)
    assert ids_at(master, master.snapshots()[-1].snapshot_id) == sorted(log_ids(loaded))


def test_maintain_pins_what_training_sets_name_and_runs_on_both_tables(
    loaded: SaikiConfig,
) -> None:
    master = MasterDataset(loaded)
    snapshots = [s.snapshot_id for s in master.snapshots()]
    lineage = TrainingSetLineage(snapshots[1], 0, 1, "spec", "code", 0, 0, 0)
    write_training_set(
        pa.table({"x": [1]}), lineage, loaded.data_dir / "training" / "set-1.parquet"
    )
    (loaded.data_dir / "training" / "notes.parquet").write_bytes(b"not parquet")
    assert pinned_snapshots(loaded) == {snapshots[1]}
    # Younger than the retention below (none): kept, so it pins its snapshot.
    later = time.time() + 3_600
    os.utime(loaded.data_dir / "training" / "set-1.parquet", (later, later))
    config = dataclasses.replace(
        loaded, schedule=dataclasses.replace(loaded.schedule, snapshot_retention="0s")
    )
    result = maintain(config, now_ms() + 1)
    assert [e.table for e in result.expired] == ["events", "events_quarantine", "predictions"]
    kept = [s.snapshot_id for s in master.snapshots()]
    assert snapshots[1] in kept and snapshots[0] not in kept
    assert ids_at(master, snapshots[1]) and ids_at(master, kept[-1]) == sorted(log_ids(loaded))


def test_old_training_sets_no_live_model_names_are_removed_and_unpin_their_snapshot(
    loaded: SaikiConfig,
) -> None:
    master = MasterDataset(loaded)
    snapshots = [s.snapshot_id for s in master.snapshots()]
    folder = loaded.data_dir / "training"
    for name, snapshot in (("set-1.parquet", snapshots[1]), ("set-2.parquet", snapshots[2])):
        lineage = TrainingSetLineage(snapshot, 0, 1, "spec", "code", 0, 0, 0)
        write_training_set(pa.table({"x": [1]}), lineage, folder / name)
    day_ago = time.time() - 86_400
    os.utime(folder / "set-1.parquet", (day_ago, day_ago))  # old, and no model names it
    config = dataclasses.replace(
        loaded, schedule=dataclasses.replace(loaded.schedule, snapshot_retention="1h")
    )
    result = maintain(config, now_ms())
    assert result.training_sets_removed == ["set-1.parquet"]
    assert sorted(p.name for p in folder.iterdir()) == ["set-2.parquet"]
    assert result.pinned == {snapshots[2]}  # set-1's snapshot is no longer pinned


def test_a_live_models_training_set_stays_whatever_its_age() -> None:
    sets = [(Path("/d/training/set-1.parquet"), 1_000.0), (Path("/d/training/set-2.parquet"), 5.0)]
    assert stale_training_sets(sets, {"set-2.parquet"}, older_than_ms=2_000) == [sets[0][0]]
    assert stale_training_sets(sets, set(), older_than_ms=500) == [sets[1][0]]
    assert stale_training_sets(sets, {"set-1.parquet", "set-2.parquet"}, 10**12) == []
