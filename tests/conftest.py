"""Fixtures shared by every test tier.

Expensive things (a simulated traffic file, an ingested data directory, servers, the
JVM) are session-scoped and started once; tests that change state get their own data
directory from ``config``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from core.config import SaikiConfig, load_config
from simulator import TrafficOptions, TrafficSummary, World, write_jsonl

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
    from batch.master import MasterDataset
    from core.eventlog import EventLog
    from core.ingest import Ingestor, ingest_files

    config = make_config(tmp_path_factory.mktemp("ingested") / "data")
    log = EventLog(config.log_dir)
    ingest_files(Ingestor(log), [traffic[0]], workers=1)
    MasterDataset(config).load(log)
    yield config
