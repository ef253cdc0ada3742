"""The speed layer on a Flink session cluster, with Redis as the online store: submitted
by `saiki speed run`, alive after its client is killed, restarted by Flink from its
checkpoint after its TaskManager is killed under traffic — and its tiles still equal the
independent recomputation (nothing lost, nothing doubled)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from saiki.core.config import SaikiConfig
from saiki.core.eventlog import EventLog
from saiki.core.ingest import Ingestor
from saiki.core.ingest_files import ingest_files
from saiki.feature_repo.online import read_status
from saiki.simulator import TrafficOptions, World, write_jsonl
from saiki.speed.cluster import FlinkRest
from tests.cluster.conftest import FlinkCluster
from tests.conftest import END_MS, ROOT, online_store_config, run_saiki, start_speed_job
from tests.speed.test_speed_job import _wait, expected, feed_until_unchecked, served_tiles

pytestmark = [pytest.mark.slow, pytest.mark.cluster]


def _parts(tmp_path: Path, count: int) -> list[Path]:
    """An hour of traffic after the environment's, late events included, in parts."""
    extra = tmp_path / "more.jsonl"
    write_jsonl(
        World(users=150, items=80, seed=23),
        TrafficOptions(days=0.1, end_ms=END_MS + 3_600_000, late_rate=0.05),
        extra,
    )
    lines = extra.read_text().splitlines(keepends=True)
    step = len(lines) // count + 1
    parts = []
    for n in range(count):
        part = tmp_path / f"part{n}.jsonl"
        part.write_text("".join(lines[n * step : (n + 1) * step]))
        parts.append(part)
    return parts


def test_the_cluster_job_outlives_its_client_and_a_killed_taskmanager_exactly(
    lambda_env: SaikiConfig,
    flink_cluster: FlinkCluster,
    redis_server: str,
    tmp_path: Path,
) -> None:
    root = tmp_path / "data"
    shutil.copytree(lambda_env.data_dir, root, ignore=shutil.ignore_patterns("speed"))
    config = online_store_config(
        root, "redis", redis_server, f'[speed]\njobmanager = "{flink_cluster.address}"\n'
    )
    rest = FlinkRest.for_config(config)
    log = EventLog(config.log_dir)
    parts = _parts(tmp_path, 10)
    speed_dir = root / "speed"

    def caught_up() -> bool:
        status = read_status(speed_dir)
        return (
            status is not None
            and status.events_seen == log.events.head()
            and status.pending_rows == 0
        )

    # The client's environment does not reach the cluster's Python: no PYTHONPATH.
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAIKI_")}
    env.pop("PYTHONPATH", None)
    client = start_speed_job(root, env)
    try:
        _wait(lambda: rest.live_job() is not None, 120, "the job on the cluster")
        _wait(caught_up, 180, "the first catch-up")
    finally:
        os.killpg(client.pid, signal.SIGKILL)
        client.wait(30)
    job = rest.live_job()
    assert job is not None and job["state"] == "RUNNING"  # the client is gone, the job not
    job_id = job["jid"]
    fed = feed_until_unchecked(log, parts[:6], speed_dir / "checkpoints", caught_up)
    flink_cluster.kill_taskmanagers()
    # Traffic goes on while no TaskManager runs; one comes back, as a restarted machine.
    ingest_files(Ingestor(log), [parts[fed]], chunk_bytes=20_000, workers=1)
    _wait(lambda: rest.overview()["taskmanagers"] == 0, 60, "the loss noticed")
    flink_cluster.daemon("taskmanager")
    ingest_files(Ingestor(log), parts[fed + 1 :], chunk_bytes=20_000, workers=1)
    _wait(caught_up, 240, "the restarted job caught up")

    want, late_count = expected(config)
    deadline = time.monotonic() + 30
    while (got := served_tiles(config)) != want and time.monotonic() < deadline:
        time.sleep(1)  # a tile's last write can trail the status by a flush
    wrong = {
        k: (want.get(k), got.get(k)) for k in set(want) | set(got) if want.get(k) != got.get(k)
    }
    assert not wrong, list(wrong.items())[:5]
    status = read_status(speed_dir)
    assert status is not None and status.late_events == late_count

    # Flink restarted the same job (no client did); status names it and the failure.
    assert rest.live_job()["jid"] == job_id  # type: ignore[index]
    text = run_saiki(config, "speed", "status")
    assert f"Flink job {job_id} at {flink_cluster.address}: RUNNING" in text
    assert "1 failure(s)" in text or "failure(s), newest" in text
    shown = subprocess.run(  # exits 1 (no server runs here): its text is what counts
        [sys.executable, "-m", "saiki.cli.main", "--data-dir", str(root), "status"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    ).stdout
    assert f"Flink job {job_id} at {flink_cluster.address}: RUNNING" in shown
    run_saiki(config, "speed", "stop")
    _wait(lambda: rest.live_job() is None, 60, "the job cancelled")
    assert rest.jobs()[0]["state"] == "CANCELED"
