"""The simulator: deterministic, dirty on request, and carrying a learnable signal."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson

from saiki.simulator import TrafficOptions, TrafficSummary, World, write_jsonl
from saiki.simulator.traffic import simulate_day
from tests.conftest import END_MS


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    options = TrafficOptions(days=1, end_ms=END_MS, malformed_rate=0.02, late_rate=0.05)
    a = write_jsonl(World(50, 20, seed=3), options, tmp_path / "a.jsonl")
    b = write_jsonl(World(50, 20, seed=3), options, tmp_path / "b.jsonl")
    c = write_jsonl(World(50, 20, seed=4), options, tmp_path / "c.jsonl")
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    assert (tmp_path / "a.jsonl").read_bytes() != (tmp_path / "c.jsonl").read_bytes()
    assert a.as_dict() == b.as_dict() and c.lines > 0


def test_late_events_arrive_out_of_order(traffic: tuple[Path, TrafficSummary, World]) -> None:
    path, summary, _ = traffic
    times = []
    for line in path.read_bytes().splitlines():
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        when = record.get("event_time")
        if isinstance(when, int) and str(record.get("event_id", "")).startswith("e"):
            times.append(when)
    times_arr = np.array(times)
    running_max = np.maximum.accumulate(times_arr)
    behind = running_max - times_arr
    assert summary.late > 0
    assert (behind > 10 * 60_000).sum() > 0  # some arrive more than 10 minutes late
    assert np.median(behind) < 5_000  # but most are nearly in order


def test_clicks_follow_hidden_tastes_not_just_popularity() -> None:
    world = World(users=400, items=200, seed=5)
    events = simulate_day(world, TrafficOptions(days=1, end_ms=END_MS), 0)
    impressions = ~events.click
    users, items = events.user[impressions], events.item[impressions]
    affinity = np.einsum(
        "ij,ij->i", world.params["tastes"][users], world.params["item_traits"][items]
    )
    probability = world.click_probability(
        users, items, events.device[impressions], events.time[impressions]
    )
    # A click model that knows tastes separates clicks far better than item popularity.
    high = probability[affinity > np.quantile(affinity, 0.8)].mean()
    low = probability[affinity < np.quantile(affinity, 0.2)].mean()
    assert high > 2.5 * low
    ctr = events.click.sum() / impressions.sum()
    assert 0.05 < ctr < 0.35


def test_a_taste_shift_changes_who_clicks_what() -> None:
    shift = END_MS - 12 * 3_600_000
    world = World(users=300, items=100, seed=9, shift_at_ms=shift)
    users = np.arange(300).repeat(100)
    items = np.tile(np.arange(100), 300)
    devices = np.zeros_like(users)
    before = world.click_probability(users, items, devices, np.full(len(users), shift - 1))
    after = world.click_probability(users, items, devices, np.full(len(users), shift))
    assert np.corrcoef(before, after)[0, 1] < 0.9
