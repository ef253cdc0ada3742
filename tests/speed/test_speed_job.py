"""The real PyFlink job: tiles against an independent recomputation, lateness, restarts."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path

import pandas as pd
import pytest

from saiki.core.config import SaikiConfig
from saiki.core.eventlog import EventLog
from saiki.core.ingest import Ingestor
from saiki.core.ingest_files import ingest_files
from saiki.feature_repo.online import read_status, unpack_tiles
from saiki.feature_repo.online_readers import online_reader
from saiki.feature_repo.views import ViewCatalog
from saiki.simulator import TrafficOptions, World, write_jsonl
from saiki.speed.archive import start_boundary
from saiki.speed.job import latest_checkpoint, load_lineage
from tests.conftest import END_MS, make_config, run_saiki, start_speed_job
from tests.oracle import MINUTE, late_flags, log_records

pytestmark = pytest.mark.slow
LATENESS = 300_000


def expected(config: SaikiConfig) -> tuple[dict[tuple[str, str, int], tuple[int, ...]], int]:
    """Tiles (entity, id, minute) → sums, and the late count, recomputed from the log."""
    records = log_records(config)
    cutoff = ViewCatalog(config.data_dir).current().cutoff_ms  # type: ignore[union-attr]
    after = records["event_time"] >= cutoff
    late = late_flags(records, LATENESS) & after
    kept = records[after & ~late].copy()
    kept["minute"] = kept["event_time"] // MINUTE
    kept["imp"] = (kept["event_type"] == "IMPRESSION").astype(int)
    kept["clk"] = (kept["event_type"] == "CLICK").astype(int)
    kept["dwell"] = kept["dwell_ms"].fillna(0).where(kept["event_type"] == "CLICK", 0)
    tiles = {}
    for entity, key in (("user", "user_id"), ("item", "item_id")):
        sums = kept.groupby([key, "minute"])[["imp", "clk", "dwell"]].sum()
        for (entity_id, minute), row in zip(sums.index, sums.to_numpy(), strict=True):
            tiles[(entity, entity_id, int(minute))] = tuple(int(v) for v in row)
    return tiles, int(late.sum())


def served_tiles(config: SaikiConfig) -> dict[tuple[str, str, int], tuple[int, ...]]:
    cutoff = ViewCatalog(config.data_dir).current().cutoff_ms  # type: ignore[union-attr]
    reader = online_reader(config)  # SQLite or Redis, as configured
    tiles = {}
    for entity in ("user", "item"):
        for entity_id, row in reader.read_speed(entity, None).items():
            minutes, values = unpack_tiles(row.tiles)
            for minute, value in zip(minutes.tolist(), values.tolist(), strict=True):
                if minute * MINUTE >= cutoff:
                    tiles[(entity, entity_id, minute)] = tuple(value)
    return tiles


def test_tiles_equal_an_independent_recomputation(lambda_env: SaikiConfig) -> None:
    want, _ = expected(lambda_env)
    got = served_tiles(lambda_env)
    assert len(want) > 1000
    wrong = {
        k: (want.get(k), got.get(k)) for k in set(want) | set(got) if want.get(k) != got.get(k)
    }
    assert not wrong, list(wrong.items())[:5]


def test_out_of_order_events_within_lateness_count_and_later_ones_are_left_to_batch(
    lambda_env: SaikiConfig,
) -> None:
    records = log_records(lambda_env)
    cutoff = ViewCatalog(lambda_env.data_dir).current().cutoff_ms  # type: ignore[union-attr]
    newest_before = records["event_time"].cummax().shift(1, fill_value=0)
    out_of_order = (records["event_time"] < newest_before) & (records["event_time"] >= cutoff)
    late = late_flags(records, LATENESS) & (records["event_time"] >= cutoff)
    assert (out_of_order & ~late).sum() > 50  # tiled although out of order
    _, late_count = expected(lambda_env)
    status = read_status(lambda_env.data_dir / "speed")
    assert status is not None and late_count > 10
    assert status.late_events == late_count
    assert status.events_seen == EventLog(lambda_env.log_dir).events.head()


def test_status_names_watermark_lag_and_counts(lambda_env: SaikiConfig) -> None:
    text = run_saiki(lambda_env, "speed", "status")
    head = EventLog(lambda_env.log_dir).events.head()
    assert f"read {head}/{head} events, lag 0" in text
    assert "late (left to batch)" in text and "watermark 2026-11-20T" in text
    # The fresh job archived the segments wholly before its cutoff, and then those it
    # read whole: it lists the rest.
    events = EventLog(lambda_env.log_dir).events
    segments = len(events.live_segments())
    assert f"log: {segments} segments, re-listed by the source every 200 ms" in text
    assert len(events.archived()) > 0 and len(events.segments()) > segments


def _wait(condition: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def feed_until_unchecked(
    log: EventLog, parts: list[Path], checkpoints: Path, caught_up: object
) -> int:
    """Ingest parts one at a time, each read and written, until one that no completed
    checkpoint covers yet (one is taken every 2 s): where a kill leaves a restore work to
    do. Returns how many parts were fed."""
    _wait(lambda: latest_checkpoint(checkpoints) is not None, 60, "a checkpoint")
    for fed, part in enumerate(parts, start=1):
        ingested_s = time.time()
        ingest_files(Ingestor(log), [part], chunk_bytes=20_000, workers=1)
        _wait(caught_up, 60, "the part read and written")
        newest = latest_checkpoint(checkpoints)
        assert newest is not None
        if (newest / "_metadata").stat().st_mtime < ingested_s:
            return fed
    pytest.fail("every part was checkpointed before the kill could land")


def _affinities(pid: int) -> set[int]:
    """The CPUs any thread of a process or its descendants (the JVM among them) may use."""
    import psutil

    root = psutil.Process(pid)
    processes = [root, *root.children(recursive=True)]
    assert any("java" in p.name() for p in processes), [p.name() for p in processes]
    cpus: set[int] = set()
    for process in processes:
        for thread in process.threads():
            cpus |= os.sched_getaffinity(thread.id)
    return cpus


def _ingest_traffic(log: EventLog, path: Path, seed: int, days: float, end_ms: int) -> None:
    """Simulated traffic of the test world, written to ``path`` and ingested."""
    world = World(users=150, items=80, seed=seed)
    write_jsonl(world, TrafficOptions(days=days, end_ms=end_ms), path)
    ingest_files(Ingestor(log), [path], chunk_bytes=20_000, workers=1)


def test_a_killed_job_resumes_from_its_checkpoint_with_nothing_lost_or_doubled(
    lambda_env: SaikiConfig, tmp_path: Path
) -> None:
    root = tmp_path / "data"
    shutil.copytree(lambda_env.data_dir, root, ignore=shutil.ignore_patterns("speed"))
    config = make_config(root)
    extra = tmp_path / "more.jsonl"
    write_jsonl(
        World(users=150, items=80, seed=22),
        TrafficOptions(days=0.1, end_ms=END_MS + 3_600_000, late_rate=0.05),
        extra,
    )
    lines = extra.read_text().splitlines(keepends=True)
    # The first half in eight parts, fed while the job runs; the second after the kill.
    parts = [tmp_path / f"b{n}.jsonl" for n in range(8)]
    step = len(lines) // 2 // len(parts) + 1
    for n, part in enumerate(parts):
        part.write_text("".join(lines[n * step : min((n + 1) * step, len(lines) // 2)]))
    half_c = tmp_path / "c.jsonl"
    half_c.write_text("".join(lines[len(lines) // 2 :]))
    log = EventLog(config.log_dir)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAIKI_")}
    # Held to one CPU by [speed] cpus, as a user would set it: its JVM and Python workers too.
    one_cpu = max(os.sched_getaffinity(0))
    env["SAIKI_SPEED_CPUS"] = str(one_cpu)
    job = start_speed_job(root, env)
    try:
        speed_dir = root / "speed"

        def caught_up() -> bool:
            status = read_status(speed_dir)
            return status is not None and status.events_seen == log.events.head()

        _wait(caught_up, 180, "the first catch-up")
        assert _affinities(job.pid) == {one_cpu}
        # While it runs, what it read whole and checkpointed leaves the folder it lists.
        lineage = load_lineage(speed_dir)
        assert lineage is not None

        def archived_while_running() -> bool:
            return log.events.live_segments()[0].first > lineage.first_offset

        _wait(archived_while_running, 60, "the running job's first archive")
        fed = feed_until_unchecked(log, parts, speed_dir / "checkpoints", caught_up)
        os.killpg(job.pid, signal.SIGKILL)
    finally:
        job.wait(30)
    ingest_files(Ingestor(log), [*parts[fed:], half_c], chunk_bytes=20_000, workers=1)
    # The restore below runs on a log whose segments left the folder it lists, those
    # before the job's cutoff at its fresh start and those it had read since: the latter
    # come back before it starts, and it reads none of them again.
    assert log.events.archived() and log.events.live_segments()[0].first > 0
    # Restored from the newest checkpoint, which covers every segment archived while the
    # job ran: those stay archived (the one ending at `through` may have stayed, being
    # the newest then).
    through = json.loads((root / "speed" / "archived.json").read_text())["through"]
    run_saiki(config, "speed", "run", "--until-idle")
    assert log.events.live_segments()[0].end >= through
    want, late_count = expected(config)
    got = served_tiles(config)
    wrong = {
        k: (want.get(k), got.get(k)) for k in set(want) | set(got) if want.get(k) != got.get(k)
    }
    assert not wrong, list(wrong.items())[:5]
    status = read_status(root / "speed")
    assert status is not None and status.late_events == late_count
    assert status.events_seen == log.events.head()
    assert isinstance(pd.Timestamp(status.watermark_ms, unit="ms"), pd.Timestamp)
    # A fresh job re-reads everything since the cutoff: the segments a running job
    # archived after it come back first, and the tiles still equal the recomputation.
    cutoff = ViewCatalog(root).current().cutoff_ms  # type: ignore[union-attr]
    boundary = start_boundary(config, cutoff)
    job = start_speed_job(root, env)
    try:
        # A restored job learns what it had read at its first record (its keyed state).
        _ingest_traffic(log, tmp_path / "later.jsonl", 24, 0.01, END_MS + 4 * 3_600_000)
        _wait(lambda: log.events.live_segments()[0].first > boundary, 90, "an archive")
    finally:
        os.killpg(job.pid, signal.SIGTERM)
        job.wait(60)
    (root / "speed" / "status.json").unlink()
    run_saiki(config, "speed", "run", "--until-idle", "--fresh")
    want, late_count = expected(config)
    status = read_status(root / "speed")
    assert status is not None and status.start_offset == boundary
    assert status.events_seen == log.events.head() and status.late_events == late_count
    assert served_tiles(config) == want


def test_a_fresh_start_after_a_handoff_archives_and_then_resumes_exactly(
    lambda_env: SaikiConfig, tmp_path: Path
) -> None:
    from saiki.batch.run import BatchRunRequest, run_batch_view

    root = tmp_path / "data"
    shutil.copytree(lambda_env.data_dir, root, ignore=shutil.ignore_patterns("checkpoints"))
    config = make_config(root)
    log = EventLog(config.log_dir)
    archived_before = len(log.events.archived())
    run_batch_view(config, BatchRunRequest(as_of_ms=END_MS))  # the handoff
    run_saiki(config, "speed", "run", "--until-idle", "--fresh")
    # Everything the new view holds and that lies before its cutoff left the folder.
    assert len(log.events.archived()) > archived_before
    listed = log.events.live_segments()
    assert sum(s.count for s in listed) < log.events.head() // 4  # records left to list
    want, _ = expected(config)
    assert served_tiles(config) == want
    status = read_status(root / "speed")
    assert status is not None and status.events_seen == log.events.head()
    cutoff = ViewCatalog(root).current().cutoff_ms  # type: ignore[union-attr]
    assert status.start_offset == start_boundary(config, cutoff) <= listed[0].first
    # New events after the cutoff, then a restart from the job's checkpoint: each new
    # event is read once, none of the archived ones again.
    _ingest_traffic(log, tmp_path / "after.jsonl", 23, 0.05, END_MS + 2 * 3_600_000)
    run_saiki(config, "speed", "run", "--until-idle")
    want, _ = expected(config)
    assert len(want) > 100 and served_tiles(config) == want
    status = read_status(root / "speed")
    assert status is not None and status.events_seen == log.events.head()
    # Nothing appended since: the newest checkpoint holds the whole log, so running it
    # again starts no job (one restored with nothing to read never learns what it had
    # read, from keyed state, and --until-idle waited for it for ever).
    jobs = sorted(os.listdir(root / "speed" / "checkpoints"))
    head = log.events.head()
    assert f"read {head}/{head} events, lag 0 " in run_saiki(
        config, "speed", "run", "--until-idle", timeout=120
    )
    assert sorted(os.listdir(root / "speed" / "checkpoints")) == jobs
    again = read_status(root / "speed")
    assert again is not None and again.events_seen == head == status.events_seen
    # A job started for good on that checkpoint gets no record either: it says from its
    # start what the checkpoint holds (before, "0 read" and the whole log as lag).
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAIKI_")}
    job = start_speed_job(root, env)
    try:

        def restored() -> bool:
            now = read_status(root / "speed")
            return now is not None and now.job_started_ms > again.job_started_ms

        _wait(restored, 120, "the restored job's first status")
        started = read_status(root / "speed")
        assert started is not None and started.late_events == status.late_events
        assert started.events_seen == head and started.read_through == status.read_through
    finally:
        os.killpg(job.pid, signal.SIGTERM)
        job.wait(60)
