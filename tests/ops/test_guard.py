"""The guard of ``saiki monitor --guard``: a promotion that clearly earns less than the
version it replaced is rolled back in the registry; servers then reload the old one."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from saiki.core.config import SaikiConfig
from saiki.ops.monitoring import guard
from saiki.ops.scheduled_jobs import ScheduledJobs
from saiki.ops.status import JobRecord, write_job
from saiki.serving.monitor import Baselines, MonitorReport
from saiki.serving.registry import ModelRegistry
from tests.conftest import make_config

HOUR = 3_600_000


def _two_versions(
    trained: tuple[SaikiConfig, Path], root: Path, promote: bool = True
) -> SaikiConfig:
    """A registry holding the trained v1 and a v2 (its copy), v2 promoted over v1 unless
    ``promote`` is false."""
    source = ModelRegistry(trained[0].data_dir)
    config = make_config(root)
    target = ModelRegistry(root)
    shutil.copytree(source.root, target.root)
    second = target.root / "v0002"
    shutil.copytree(target.root / "v0001", second)
    meta = json.loads((second / "meta.json").read_text())
    (second / "meta.json").write_text(json.dumps({**meta, "version": 2}))
    if promote:
        target.promote(2)
    return config


def _live(version: int, clicks: int, start: int) -> MonitorReport:
    return MonitorReport(
        (start, start + HOUR), version, impressions=2_000, clicks=clicks, expected_clicks=800.0
    )


def test_the_guard_rolls_a_clear_regression_back_and_leaves_a_fair_promotion(
    trained: tuple[SaikiConfig, Path], tmp_path: Path
) -> None:
    config = _two_versions(trained, tmp_path / "data")
    registry = ModelRegistry(config.data_dir)
    assert (registry.production(), registry.previous()) == (2, 1)
    baselines = Baselines(config.data_dir)
    baselines.observe(_live(1, 400, 10 * HOUR))  # v1 earned a CTR of 0.20 before
    fair = baselines.observe(_live(2, 380, 12 * HOUR))
    assert guard(config, fair) is None and registry.production() == 2
    bad = baselines.observe(_live(2, 240, 13 * HOUR))  # 0.12 < 0.8 x 0.20
    done = guard(config, bad)
    assert done is not None and "rolled back to v1" in done
    assert registry.production() == 1
    assert guard(config, bad) is None  # v2 is no longer in production: nothing to do


class _Policy(ScheduledJobs):
    """The scheduler's policy half alone: what it says, and the retrains it would start."""

    def __init__(self, config: SaikiConfig) -> None:
        self.config, self.stopping, self._scheduler = config, threading.Event(), None
        self.said: list[str] = []
        self.started: list[str] = []
        self.say = self.said.append

    def _later(self, spec: Any, trigger: str, delay: float) -> None:
        self.started.append(f"{spec.name} ({trigger})")


def test_the_retrain_policy_waits_after_a_retrain_that_did_not_win(
    trained: tuple[SaikiConfig, Path], tmp_path: Path
) -> None:
    """v2 was trained 20 minutes ago and lost to v1; a recompute ran since. Monitor's
    "retrain due" waits an hour after the loser; had v2 won, it retrains at once."""
    now = time.time()

    def policy(config: SaikiConfig) -> _Policy:
        write_job(config.data_dir, JobRecord("retrain", "ok", now - 1200, now - 1100))
        write_job(config.data_dir, JobRecord("recompute", "ok", now - 300, now - 250))
        scheduler = _Policy(config)
        scheduler._retrain_if_new_data()
        return scheduler

    lost = policy(_two_versions(trained, tmp_path / "lost", promote=False))
    assert lost.started == []
    assert "1 version(s) trained since production" in lost.said[0]
    won = policy(_two_versions(trained, tmp_path / "won"))
    assert won.started == ["retrain (policy)"] and won.said == []


def test_the_scheduler_reads_the_registry_without_torch() -> None:
    """``saiki up`` reads the registry for its policy; torch would add ~230 MB to it
    (the soak's ``up`` went 27 -> 257 MB when it did)."""
    code = (
        "import sys, saiki.ops.service, saiki.serving.registry; "
        "print(sorted({'torch', 'numpy'} & set(sys.modules)))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_a_registry_that_cannot_be_read_holds_the_retrain_and_says_why(
    trained: tuple[SaikiConfig, Path], tmp_path: Path
) -> None:
    """A version's metadata torn (a disk error, a hand edit): the policy says what failed
    and starts nothing, instead of the scheduler's thread dying on the exception."""
    config = _two_versions(trained, tmp_path / "data", promote=False)
    (ModelRegistry(config.data_dir).root / "v0002" / "meta.json").write_text('{"vers')
    scheduler = _Policy(config)
    scheduler._retrain_if_new_data()
    assert scheduler.started == []
    assert len(scheduler.said) == 1
    assert "model registry could not be read (JSONDecodeError" in scheduler.said[0]
