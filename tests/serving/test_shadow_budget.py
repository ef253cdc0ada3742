"""A shadow's forward passes stay within their share of a core, whatever the load."""

from __future__ import annotations

import pytest

from saiki.serving.shadow_budget import ShadowBudget


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def drive(budget: ShadowBudget, clock: Clock, per_s: int, seconds: int, took_s: float) -> float:
    """``per_s`` requests a second, each scored in ``took_s`` when admitted: the forward
    time spent."""
    spent = 0.0
    for _ in range(per_s * seconds):
        clock.now += 1.0 / per_s
        charge = budget.admit()
        if charge is not None:
            budget.settle(charge, took_s)
            spent += took_s
    return spent


def test_light_traffic_is_all_shadowed() -> None:
    clock = Clock()
    budget = ShadowBudget(0.1, clock=clock)
    # 50 requests/s of 1 ms: 5% of a core, under the 10% budget
    assert drive(budget, clock, 50, 20, 0.001) == pytest.approx(50 * 20 * 0.001)
    assert budget.skipped == 0 and budget.admitted == 1_000


def test_heavy_traffic_is_sampled_down_to_the_budget_and_the_rest_counted() -> None:
    clock = Clock()
    skips = []
    budget = ShadowBudget(0.1, clock=clock, on_skip=lambda: skips.append(1))
    # 1,000 requests/s of 1 ms would take a whole core; the budget is a tenth of one
    spent = drive(budget, clock, 1_000, 20, 0.001)
    assert 0.1 * 20 - 0.01 <= spent <= 0.1 * 20 + ShadowBudget.BURST_S * 0.1 + 0.002
    assert budget.admitted + budget.skipped == 20_000
    assert budget.skipped == len(skips) > 17_000


def test_a_burst_admitted_before_any_pass_is_scored_cannot_overdraw_the_budget() -> None:
    clock = Clock()
    budget = ShadowBudget(0.1, clock=clock)
    for _ in range(100):  # learn the mean: 2 ms a pass
        clock.now += 1.0
        charge = budget.admit()
        assert charge is not None
        budget.settle(charge, 0.002)
    # 1,000 requests at one instant, their passes still queued: each reserves the mean
    admitted = [c for c in (budget.admit() for _ in range(1_000)) if c is not None]
    assert len(admitted) <= ShadowBudget.BURST_S * 0.1 / 0.0019 + 1  # what 0.1 s holds
