"""A retrain's cost is bounded: a training set spans at most ``[models] training_days``,
and beyond ``max_train_rows`` / ``max_holdout_rows`` each side is a uniform sample that
production's backtest shares row for row."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from saiki.core.config import SaikiConfig
from saiki.core.timeutil import MS_PER_DAY
from saiki.ops.models import backtest
from saiki.serving.model import ModelConfig
from saiki.serving.registry import ModelRegistry
from saiki.serving.training import (
    cap_rows,
    load_rows,
    split_by_time,
    train_and_evaluate,
    training_from,
)


def test_a_training_set_starts_after_the_warm_up_and_at_most_days_back() -> None:
    first, day = 1_000 * MS_PER_DAY, MS_PER_DAY
    assert training_from(first, first + 3 * day, 7) == first + day  # young: the warm-up
    assert training_from(first, first + 30 * day, 7) == first + 23 * day  # old: the window
    assert training_from(first, first + day // 2, 7) == first - day // 2  # a day at least


@pytest.mark.slow
def test_capped_rows_are_a_stable_sample_in_time_order(trained: tuple[SaikiConfig, Path]) -> None:
    _, test, _ = split_by_time(load_rows(trained[1]))
    assert cap_rows(test, len(test)) is test and cap_rows(test, None) is test
    once, again = cap_rows(test, 500), cap_rows(test, 500)
    assert len(once) == 500
    assert np.array_equal(once.times, again.times) and once.users == again.users
    assert np.all(np.diff(once.times) >= 0)  # still in time order
    assert set(once.users) <= set(test.users)


@pytest.mark.slow
def test_production_is_backtested_on_exactly_the_sampled_held_out_rows(
    trained: tuple[SaikiConfig, Path], tmp_path: Path
) -> None:
    training_set = trained[1]
    model, quantised, report = train_and_evaluate(
        training_set, epochs=1, max_train_rows=2_000, max_holdout_rows=1_500
    )
    assert (report.rows_train, report.rows_holdout) == (2_000, 1_500)
    assert report.rows_train_available > 2_000 and report.rows_holdout_available > 1_500
    registry = ModelRegistry(tmp_path)
    entry = registry.register(model, quantised, ModelConfig(), {}, report.as_dict())
    # The same version scored by the backtest on the same sample: the same figures. A
    # backtest on other rows (uncapped, or another sample) would differ.
    same = backtest(registry, entry.version, training_set, max_holdout_rows=1_500)
    assert same["auc"] == pytest.approx(report.fp32.auc, abs=1e-12)
    assert same["log_loss"] == pytest.approx(report.fp32.log_loss, abs=1e-9)
    whole = backtest(registry, entry.version, training_set)
    assert whole["log_loss"] != pytest.approx(report.fp32.log_loss, abs=1e-9)
