"""Batch views end to end: correctness against an independent recomputation,
reproducibility, dead letters and crash safety."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from saiki.batch.master import MasterDataset
from saiki.batch.run import BatchRunRequest, run_batch_view
from saiki.core.config import SaikiConfig
from saiki.core.timeutil import MS_PER_DAY, MS_PER_MINUTE, floor_minute
from saiki.feature_repo.spec import AGGREGATION_NAMES, FEATURE_NAMES, WINDOWS
from saiki.feature_repo.tiles import ENTITY_ID, MINUTE, PrefixSums
from saiki.feature_repo.views import ViewCatalog, ViewManifest
from tests.conftest import END_MS, make_config
from tests.oracle import master_events, window_features

ROOT = Path(__file__).resolve().parents[2]
CUTOFF = floor_minute(END_MS - MS_PER_DAY + 17 * MS_PER_MINUTE + 5)


@pytest.fixture(scope="module")
def viewed(
    ingested: SaikiConfig, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[SaikiConfig, ViewManifest, pd.DataFrame]]:
    """A copy of the ingested data dir with one batch view at CUTOFF (mid-data)."""
    root = tmp_path_factory.mktemp("viewed") / "data"
    shutil.copytree(ingested.data_dir, root)
    config = make_config(root)
    manifest = run_batch_view(config, BatchRunRequest(as_of_ms=CUTOFF))
    yield config, manifest, master_events(config)


def test_collapsed_features_equal_the_oracle_at_the_cutoff(
    viewed: tuple[SaikiConfig, ViewManifest, pd.DataFrame],
) -> None:
    config, manifest, events = viewed
    catalog = ViewCatalog(config.data_dir)
    for entity, key in (("user", "user_id"), ("item", "item_id")):
        table = catalog.read(manifest.view_id, f"{entity}_features").to_pylist()
        assert len(table) == manifest.entities[entity] > 10
        for row in table:
            expected = window_features(events, key, row[key], CUTOFF)
            assert {n: row[n] for n in FEATURE_NAMES} == pytest.approx(expected, rel=1e-12)


def test_tails_answer_any_later_query_time(
    viewed: tuple[SaikiConfig, ViewManifest, pd.DataFrame],
) -> None:
    """The batch part of every window at q > T, from the view's tiles, equals the oracle
    over events before T: whatever the speed layer adds comes after T."""
    config, manifest, events = viewed
    before = events[events["event_time"] < CUTOFF]
    catalog = ViewCatalog(config.data_dir)
    rng = np.random.default_rng(3)
    for entity, key in (("user", "user_id"), ("item", "item_id")):
        tiles = catalog.read(manifest.view_id, f"{entity}_tiles")
        ids, codes = np.unique(
            tiles.column(ENTITY_ID).to_numpy(zero_copy_only=False), return_inverse=True
        )
        values = np.column_stack([tiles.column(n).to_numpy() for n in AGGREGATION_NAMES])
        sums = PrefixSums(codes.astype(np.int64), tiles.column(MINUTE).to_numpy(), values)
        for _ in range(40):
            code = int(rng.integers(len(ids)))
            q = CUTOFF + int(rng.integers(0, 8 * MS_PER_DAY))
            expected = window_features(before, key, str(ids[code]), q)
            for window in WINDOWS:
                lower = floor_minute(q - window.ms) // MS_PER_MINUTE
                got = sums.between(
                    np.array([code]), np.array([lower]), np.array([CUTOFF // MS_PER_MINUTE])
                )[0]
                for i, name in enumerate(AGGREGATION_NAMES):
                    assert got[i] == expected[f"{name}_{window.name}"], (ids[code], q, name)


def test_the_manifest_records_lineage_and_the_speed_handoff(
    viewed: tuple[SaikiConfig, ViewManifest, pd.DataFrame],
) -> None:
    config, manifest, events = viewed
    master = MasterDataset(config)
    assert manifest.snapshot_id == master.resolve_snapshot()
    assert manifest.cutoff_ms == CUTOFF
    assert manifest.log_next_offset == len(events)
    after = events[events["event_time"] >= CUTOFF]
    assert manifest.speed_start_offset == int(after["log_offset"].min())
    window_start = floor_minute(CUTOFF - WINDOWS[-1].ms)
    in_range = events[(events["event_time"] >= window_start) & (events["event_time"] < CUTOFF)]
    assert manifest.events_read == len(in_range)
    assert ViewCatalog(config.data_dir).current_id() == manifest.view_id


@pytest.fixture(scope="module")
def beam_job_service() -> Iterator[tuple[str, str]]:
    """Beam's own portable job service and an external worker pool, on loopback: the
    PortableRunner's route that needs no downloaded job-server jar. Yields their
    addresses. The pool starts its workers as `python`: this interpreter, via PATH."""
    from saiki.ops.demo_services import free_port

    job, pool = free_port(), free_port()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    started = [
        subprocess.Popen(
            [sys.executable, "-m", module, flag, str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        for module, flag, port in (
            ("apache_beam.runners.portability.local_job_service_main", "--port", job),
            ("apache_beam.runners.worker.worker_pool_main", "--service_port", pool),
        )
    ]
    try:
        for port in (job, pool):  # both listening before any pipeline is submitted
            _wait_listening(port, started, timeout_s=120)
        yield f"localhost:{job}", f"localhost:{pool}"
    finally:
        for process in started:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(30)


def _wait_listening(port: int, processes: list[subprocess.Popen[bytes]], timeout_s: float) -> None:
    """Until something accepts connections on ``port`` (a service started just now)."""
    deadline = time.monotonic() + timeout_s
    while True:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        assert all(p.poll() is None for p in processes), "a Beam service exited at start"
        assert time.monotonic() < deadline, f"nothing listens on port {port}"
        time.sleep(0.2)


RUNNERS = {
    "in-process": (),
    # Beam's DirectRunner in worker processes, one per core.
    "multi-process": ("--direct_running_mode=multi_processing", "--direct_num_workers=2"),
    # Beam's PortableRunner: its endpoints come from the beam_job_service fixture.
    "portable": (),
}


@pytest.mark.parametrize("runner", list(RUNNERS))
def test_the_same_snapshot_and_cutoff_give_identical_views(
    viewed: tuple[SaikiConfig, ViewManifest, pd.DataFrame],
    runner: str,
    request: pytest.FixtureRequest,
) -> None:
    config, first, _ = viewed
    beam_args = RUNNERS[runner]
    name = "DirectRunner"
    if runner == "portable":
        job, pool = request.getfixturevalue("beam_job_service")
        name = "PortableRunner"
        beam_args = (
            f"--job_endpoint={job}",
            "--environment_type=EXTERNAL",
            f"--environment_config={pool}",
        )
    again = run_batch_view(
        config,
        BatchRunRequest(
            as_of_ms=CUTOFF,
            snapshot_id=first.snapshot_id,
            make_current=False,
            runner=name,
            beam_args=beam_args,
            publish_online=False,
        ),
    )
    assert again.runner == name
    catalog = ViewCatalog(config.data_dir)
    assert catalog.current_id() == first.view_id  # not made current
    for part in ("user_features", "user_tiles", "item_features", "item_tiles"):
        keys = [ENTITY_ID, MINUTE] if part.endswith("tiles") else [part.split("_")[0] + "_id"]
        order = [(k, "ascending") for k in keys]
        a = catalog.read(first.view_id, part).sort_by(order)
        b = catalog.read(again.view_id, part).sort_by(order)
        assert a.equals(b), part


KILLED_RUN = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from saiki.core.config import load_config
    from saiki.batch.run import BatchRunRequest, run_batch_view

    def pause(staging):
        Path(sys.argv[2]).write_text(str(staging))
        time.sleep(600)

    config = load_config(sys.argv[1], environ={})
    run_batch_view(config, BatchRunRequest(), before_publish=pause)
    """
)


def test_a_run_killed_before_publishing_leaves_the_previous_view_current(
    viewed: tuple[SaikiConfig, ViewManifest, pd.DataFrame], tmp_path: Path
) -> None:
    config, _, _ = viewed
    catalog = ViewCatalog(config.data_dir)
    current = catalog.current_id()
    marker = tmp_path / "staged"
    run = subprocess.Popen(
        [sys.executable, "-c", KILLED_RUN, str(config.data_dir), str(marker)],
        cwd=ROOT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 180
        while not marker.exists():
            assert run.poll() is None, "the run died before its publish point"
            assert time.monotonic() < deadline
            time.sleep(0.05)
        staged = Path(marker.read_text())
        assert any(staged.rglob("*.parquet"))  # the work was done, only publishing was left
        os.killpg(run.pid, signal.SIGKILL)
    finally:
        run.wait(30)
    assert catalog.current_id() == current
    assert all(m.view_id != staged.name for m in catalog.list())
    assert catalog.sweep_staging() == 1 and not staged.exists()


def test_rows_that_should_not_exist_go_to_dead_letters(
    viewed: tuple[SaikiConfig, ViewManifest, pd.DataFrame], tmp_path: Path
) -> None:
    root = tmp_path / "data"
    shutil.copytree(viewed[0].data_dir, root)
    config = make_config(root)
    table = MasterDataset(config).table()
    when = pd.Timestamp(CUTOFF - 5 * MS_PER_MINUTE, unit="ms", tz="UTC")
    bad = pa.Table.from_pylist(
        [
            {
                "event_id": "odd",
                "event_time": when,
                "user_id": "u1",
                "item_id": "i1",
                "event_type": "PURCHASE",
                "log_offset": 10**9,
                "ingest_time": when,
            },
        ],
        schema=table.schema().as_arrow(),
    )
    table.append(bad)  # bypasses saiki's validation on purpose
    manifest = run_batch_view(config, BatchRunRequest(as_of_ms=CUTOFF, load_first=False))
    assert manifest.dead_letters == 1
    refused = ViewCatalog(config.data_dir).read(manifest.view_id, "dead_letter")
    assert refused.column("event_type").to_pylist() == ["PURCHASE"]


def test_views_and_backfill_on_the_command_line(
    viewed: tuple[SaikiConfig, ViewManifest, pd.DataFrame],
    capsys: pytest.CaptureFixture[str],
) -> None:
    from saiki.cli.main import main
    from saiki.core.timeutil import format_iso

    config, first, _ = viewed
    before = {m.view_id for m in ViewCatalog(config.data_dir).list()}
    start = CUTOFF - 2 * MS_PER_DAY
    argv = ["--data-dir", str(config.data_dir), "batch", "backfill"]
    assert main([*argv, "--from", format_iso(start), "--to", format_iso(CUTOFF - MS_PER_DAY)]) == 0
    assert "backfilled 2 view(s)" in capsys.readouterr().out
    catalog = ViewCatalog(config.data_dir)
    added = [m for m in catalog.list() if m.view_id not in before]
    assert sorted(m.cutoff_ms for m in added) == [start, CUTOFF - MS_PER_DAY]
    assert catalog.current_id() == first.view_id  # a backfill never changes what is served
    assert main(["--data-dir", str(config.data_dir), "batch", "views"]) == 0
    listed = capsys.readouterr().out
    assert f"* {first.view_id}" in listed
    assert all(m.view_id in listed for m in added)
