"""The scheduler's cadences, retries and status records, without starting anything."""

from __future__ import annotations

import os

import pytest

from saiki.core.config import SaikiConfig
from saiki.core.errors import ConfigError
from saiki.ops.processes import rotate
from saiki.ops.schedule import (
    RETRY_MAX_S,
    next_run,
    policy_retrain,
    retry_delay,
    trigger_for,
    validate,
)
from saiki.ops.status import job_record, read_job
from tests.conftest import make_config

DAY = 86_400.0


def test_intervals_and_cron_expressions_give_the_next_run() -> None:
    now = 1_800_000_000.0  # 2027-01-15T08:00:00Z
    # Never ran: one interval from now; overdue: now; otherwise last start + interval.
    assert next_run("load", "5m", None, now) == now + 300
    assert next_run("load", "5m", now - 3600, now) == now
    assert next_run("load", "5m", now - 60, now) == now + 240
    at_three = next_run("retrain", "0 3 * * *", None, now)
    assert at_three is not None and at_three == (now // DAY) * DAY + DAY + 3 * 3600


@pytest.mark.parametrize("cadence", ["5 minutes", "0 3 * *", "61 * * * *", "500ms", "m5"])
def test_a_bad_cadence_is_a_config_error_naming_the_key(cadence: str) -> None:
    with pytest.raises(ConfigError, match=r"schedule\.recompute"):
        trigger_for("recompute", cadence)


def test_validate_names_the_job_of_a_bad_cadence(config: SaikiConfig) -> None:
    (config.data_dir).mkdir(parents=True)
    (config.data_dir / "saiki.toml").write_text('[schedule]\nmonitor = "often"\n')
    with pytest.raises(ConfigError, match=r"schedule\.monitor"):
        validate(make_config(config.data_dir))
    (config.data_dir / "saiki.toml").write_text('[schedule]\nsnapshot_retention = "soon"\n')
    with pytest.raises(ConfigError, match=r"schedule\.snapshot_retention"):
        validate(make_config(config.data_dir))
    (config.data_dir / "saiki.toml").write_text("[schedule]\nkeep_views = 1\n")
    with pytest.raises(ConfigError, match=r"schedule\.keep_views"):
        make_config(config.data_dir)


def test_retries_back_off_and_are_capped() -> None:
    delays = [retry_delay(n) for n in range(1, 10)]
    assert delays[:3] == [30.0, 60.0, 120.0]
    assert delays == sorted(delays) and delays[-1] == RETRY_MAX_S


def test_the_retrain_policy_waits_longer_after_each_retrain_that_did_not_win() -> None:
    now, hour = 1_800_000_000.0, 3600.0
    # Never retrained: at once. Nothing recomputed since the last retrain: never.
    assert policy_retrain(None, None, 0, now) is None
    assert policy_retrain(now - 5 * hour, now - 6 * hour, 0, now) is not None
    # New data, and the last retrain was promoted: at once, however recent.
    assert policy_retrain(now - 60, now - 30, 0, now) is None
    # One version lost: wait an hour since it; two: two hours; many: at most a day.
    recompute = now - 30
    assert policy_retrain(now - 0.9 * hour, recompute, 1, now) is not None
    assert policy_retrain(now - 1.1 * hour, recompute, 1, now) is None
    assert policy_retrain(now - 1.9 * hour, recompute, 2, now) is not None
    assert policy_retrain(now - 2.1 * hour, recompute, 2, now) is None
    assert policy_retrain(now - 23 * hour, recompute, 30, now) is not None
    assert policy_retrain(now - 25 * hour, recompute, 30, now) is None


def test_a_job_record_says_running_then_ok_or_failed(config: SaikiConfig) -> None:
    data_dir = config.data_dir
    with job_record(data_dir, "load") as record:
        seen = read_job(data_dir, "load")
        assert seen is not None and seen.outcome == "running" and seen.pid == os.getpid()
        record.detail = "appended 3 events"
    done = read_job(data_dir, "load")
    assert done is not None and done.outcome == "ok" and done.runs == 1
    assert done.finished_at is not None and done.finished_at >= done.started_at
    for attempt in (1, 2):
        with pytest.raises(RuntimeError), job_record(data_dir, "load"):
            raise RuntimeError("catalog unreachable\nmore")
        failed = read_job(data_dir, "load")
        assert failed is not None and failed.outcome == "failed"
        assert failed.detail == "catalog unreachable" and failed.failures == attempt
    with job_record(data_dir, "load"):
        pass
    healed = read_job(data_dir, "load")
    assert healed is not None and healed.failures == 0 and healed.runs == 4


def test_a_log_past_its_limit_is_rotated_in_place(tmp_path: os.PathLike[str]) -> None:
    from pathlib import Path

    path = Path(tmp_path) / "server.log"
    with open(path, "ab") as writer:
        writer.write(b"x" * 100)
        writer.flush()
        assert not rotate(path, max_bytes=200)
        assert rotate(path, max_bytes=50)
        writer.write(b"after\n")  # the open handle goes on, at the start of the file
        writer.flush()
    assert path.with_name("server.log.1").read_bytes() == b"x" * 100
    assert path.read_bytes() == b"after\n"
