"""The drift signal of ``saiki monitor``: the population stability index."""

from __future__ import annotations

import numpy as np

from saiki.serving.monitor import PSI_LIMIT, MonitorReport, psi


def test_psi_is_near_zero_for_the_same_distribution_and_large_for_a_shifted_one() -> None:
    rng = np.random.default_rng(0)
    reference = rng.lognormal(1.0, 0.5, 20_000)
    assert psi(reference, rng.lognormal(1.0, 0.5, 5_000)) < 0.02
    assert psi(reference, rng.lognormal(1.6, 0.5, 5_000)) > PSI_LIMIT


def test_psi_of_a_constant_training_feature_measures_the_share_off_that_value() -> None:
    reference = np.zeros(1_000)
    assert psi(reference, np.zeros(500)) < 1e-6
    assert psi(reference, np.r_[np.zeros(250), np.ones(250)]) > PSI_LIMIT


def test_a_retrain_is_due_on_drift_or_on_a_live_ctr_well_below_expectation() -> None:
    calm = MonitorReport(
        (0, 1),
        1,
        psi={"user_clicks_1d": 0.05},
        impressions=1_000,
        clicks=200,
        expected_clicks=210.0,
    )
    assert not calm.retrain_due
    drifted = MonitorReport(
        (0, 1), 1, psi={"user_clicks_1d": 0.4}, impressions=1_000, clicks=200, expected_clicks=210.0
    )
    assert drifted.retrain_due and drifted.drifted == ["user_clicks_1d"]
    worse = MonitorReport((0, 1), 1, psi={}, impressions=1_000, clicks=100, expected_clicks=210.0)
    assert worse.retrain_due
    too_few = MonitorReport((0, 1), 1, psi={}, impressions=50, clicks=1, expected_clicks=20.0)
    assert not too_few.retrain_due
