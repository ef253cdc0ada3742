"""``saiki demo``: the whole loop (再帰化) on one machine, every real component running.

1. simulate days of history in which users' tastes change some hours before "now";
2. ingest them: event log → Iceberg master dataset, exactly once;
3. batch run (Beam) → batch view published to Feast;
4. train model v1 on the data before the change (yesterday's model), promote it;
5. start the speed layer (Flink) and the gRPC server;
6. live: a simulated population asks for rankings, reacts by its (changed) tastes, and
   the reactions flow back through ``Ingest``; a live line shows events/s, freshness
   and Predict's p99; ``saiki monitor`` then checks drift and live CTR;
7. the batch layer recomputes; v2 trains on everything up to the live phase and is
   backtested against v1 on the live phase's impressions; if it wins it is staged in
   shadow: for half a live phase v1 answers and v2 scores the same requests beside it,
   ``saiki models compare`` judges both on the items users were shown, and v2 is
   promoted (the server hot-reloads it) only if it passes;
8. an A/B split serves v1 and v2 side by side;
9. consistency (batch/speed, and the served feature values from the prediction log),
   exactly-once check of every served event, the report; everything stops.
"""

from __future__ import annotations

import dataclasses
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from saiki.core.config import SaikiConfig
from saiki.core.errors import PreconditionError
from saiki.core.timeutil import floor_minute, format_iso, now_ms
from saiki.ops.data import SimulateRequest, describe_ingest, ingest, simulate
from saiki.ops.demo_services import DemoServices, free_port
from saiki.ops.demo_summary import closing_checks, percentile, print_summary
from saiki.ops.models import (
    TrainRequest,
    print_training_report,
    promote,
    set_experiment,
    train_and_register,
)
from saiki.ops.monitoring import monitor_now
from saiki.ops.report import write_report
from saiki.ops.shadow import compare, end_stage, print_comparison, verdict
from saiki.ops.summary import DemoSummary
from saiki.serving.experiment import Experiment, Variant


@dataclass(frozen=True)
class DemoPlan:
    """How big the world is and how long each live phase lasts."""

    users: int
    items: int
    days: float
    shift_hours: float
    live_seconds: float
    visits_per_second: float

    @classmethod
    def choose(cls, quick: bool) -> DemoPlan:
        """About 2 minutes with ``--quick``, about 10 without."""
        if quick:
            return cls(
                users=400, items=200, days=3, shift_hours=12, live_seconds=20, visits_per_second=15
            )
        return cls(
            users=2000, items=800, days=5, shift_hours=24, live_seconds=90, visits_per_second=20
        )


def _stage(title: str) -> None:
    print(f"\n== {title}", flush=True)


def prepare_data_dir(data_dir: Path, reset: bool) -> None:
    """Refuse a data dir that holds state unless ``reset`` (which then empties it)."""
    if data_dir.exists() and any(data_dir.iterdir()):
        if not reset:
            raise PreconditionError(
                f"{data_dir} already holds state: pass --reset to start the demo over "
                "(it deletes that directory), or use another --data-dir"
            )
        shutil.rmtree(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)


def run_demo(config: SaikiConfig, plan: DemoPlan, seed: int) -> DemoSummary:
    """Run every stage in order, printing a short summary of each; stops every process
    it started, also on error or Ctrl-C."""
    started = time.perf_counter()
    services = DemoServices(config)
    try:
        shift_at = _history(config, plan, seed)
        summary, consistency = _live(config, plan, seed, services, shift_at)
    finally:
        services.stop()
    summary.save(config.data_dir)
    _stage("9. the report")
    report = write_report(config, summary, consistency)
    print_summary(summary, report, time.perf_counter() - started)
    return summary


def _history(config: SaikiConfig, plan: DemoPlan, seed: int) -> int:
    """Stages 1–4; returns the time users' tastes change."""
    data_dir = config.data_dir
    end = floor_minute(now_ms())
    shift_at = end - int(plan.shift_hours * 3_600_000)
    history = data_dir / "demo" / "history.jsonl"
    history.parent.mkdir(parents=True, exist_ok=True)

    _stage(
        f"1. simulate {plan.days:g} days of history: {plan.users} users, {plan.items} "
        f"items; users' tastes change at {format_iso(shift_at)}"
    )
    written = simulate(
        SimulateRequest(
            users=plan.users,
            items=plan.items,
            days=plan.days,
            seed=seed,
            out=history,
            end_ms=end,
            malformed_rate=0.005,
            late_rate=0.02,
            duplicate_rate=0.002,
            shift_at_ms=shift_at,
        )
    )
    print(f"wrote {written['lines']} lines to {history} in {written['seconds']}s", flush=True)
    _stage("2. ingest: validate → event log → Iceberg master dataset (exactly once)")
    for line in describe_ingest(ingest(config, [history])):
        print(line, flush=True)
    _stage("3. batch layer (Beam): recompute every feature, publish the view to Feast")
    _batch_run(config)
    _stage(f"4. train model v1 on the days before {format_iso(shift_at)} (yesterday's model)")
    print_training_report(train_and_register(config, _train_request(to_ms=shift_at)))
    return shift_at


def _live(
    config: SaikiConfig, plan: DemoPlan, seed: int, services: DemoServices, shift_at: int
) -> tuple[DemoSummary, Any]:
    """Stages 5–8 and the closing checks."""
    _stage("5. start the speed layer (Flink) and the gRPC server")
    begin = time.monotonic()
    speed = services.start("speed layer", "speed", "run", "--fresh")
    port = free_port()
    services.start_server(port)
    print(f"server up on 127.0.0.1:{port} in {time.monotonic() - begin:.0f}s", flush=True)
    services.wait_speed_caught_up(speed)
    print(f"speed layer caught up with the log {time.monotonic() - begin:.0f}s after start")

    import torch

    # From here on Flink and the server share the cores: one torch thread trains v2
    # faster than two contending with them (with two, v2 once took 320 s instead of ~60).
    torch.set_num_threads(1)
    from saiki.serving.registry import ModelRegistry
    from saiki.simulator import World
    from saiki.simulator.live import LivePopulation

    registry = ModelRegistry.open(config)
    world = World(users=plan.users, items=plan.items, seed=seed, shift_at_ms=shift_at)
    population = LivePopulation(world, f"127.0.0.1:{port}", seed=seed + 1)
    try:
        live_from = now_ms()
        _stage(
            f"6. live: {plan.visits_per_second:g} visits/s for {plan.live_seconds:g}s, "
            "v1 in production, reactions flow back through Ingest"
        )
        first = _live_phase(population, plan, services)
        monitored = {"v1": _monitor(config, "v1 after the change")}
        shadow: dict[str, Any] = {}

        _stage("7. batch layer recomputes; v2 trains and is backtested against v1")
        _batch_run(config)
        # Everything up to now, the live phase included; judged on the live phase alone.
        # A winner is staged in shadow first ([models] require_shadow), then released.
        released = dataclasses.replace(
            config,
            models=dataclasses.replace(
                config.models, require_shadow=True, shadow_minutes=0, shadow_min_labelled=200
            ),
        )
        outcome = train_and_register(
            released, _train_request(to_ms=now_ms(), holdout_from_ms=live_from)
        )
        print_training_report(outcome)
        v2, promoted = outcome.entry.version, outcome.promoted
        if outcome.staged:
            shadow = _shadow_phase(released, population, plan, services, v2)
            promoted = shadow["passed"]
        if promoted:
            _wait_until(population, lambda stats: f"v{v2}" in stats.model_of.values())
            print(f"the server hot-reloaded v{v2}")

        _stage(f"8. A/B: v1 against v{v2}, half the users each, {plan.live_seconds:g}s")
        set_experiment(
            config,
            Experiment("v1-vs-v2", (Variant("control", 1, 0.5), Variant("treatment", v2, 0.5))),
        )
        _wait_until(population, lambda stats: "production" not in stats.model_of)
        population.reset()
        second = _live_phase(population, plan, services)
        set_experiment(config, None)
        if promoted:
            monitored[f"v{v2}"] = _monitor(config, f"v{v2} after retraining")
    finally:
        population.close(drain_s=5)
    return closing_checks(
        config,
        registry,
        (first, second),
        promoted=promoted,
        v2=v2,
        events_acked=population.events_acked,
        monitored=monitored,
        shadow=shadow,
        live_from=live_from,
    )


def _shadow_phase(
    config: SaikiConfig, population: Any, plan: DemoPlan, services: DemoServices, version: int
) -> dict[str, Any]:
    """v1 answers while ``version`` scores the same requests in shadow; then the
    comparison, and the promotion if the shadow period passed. Returns the summary."""
    seconds = plan.live_seconds / 2
    _stage(
        f"7b. shadow: v{version} scores every request beside v1 for {seconds:g}s "
        "(answers unchanged), then `saiki models compare`"
    )
    population.reset()
    _live_phase(population, dataclasses.replace(plan, live_seconds=seconds), services)
    report = compare(config, version)
    judged = verdict(config, report)
    print_comparison(report, judged)
    if judged.passed:
        # Judged just now: no second comparison inside promote's gate.
        promote(config, version, reason="won its backtest and its shadow period", force=True)
        print(f"promoted v{version} to production")
    else:
        end_stage(config)
        print(f"v{version} stays a candidate; v1 keeps production")
    return report.summary(judged)


def _train_request(to_ms: int, holdout_from_ms: int | None = None) -> TrainRequest:
    return TrainRequest(to_ms=to_ms, holdout_from_ms=holdout_from_ms, promote_if_better=True)


def _batch_run(config: SaikiConfig) -> None:
    from saiki.batch.run import BatchRunRequest, describe, run_batch_view

    manifest = run_batch_view(config, BatchRunRequest())
    print(f"published {describe(manifest)}", flush=True)


def _live_phase(population: Any, plan: DemoPlan, services: DemoServices) -> Any:
    stop = threading.Event()
    driver = threading.Thread(
        target=population.run, args=(plan.live_seconds, plan.visits_per_second, stop)
    )
    begin = time.monotonic()
    driver.start()
    sent = 0
    try:
        while driver.is_alive():
            driver.join(3.0)
            for child in services.children:
                child.check()
            stats = population.snapshot()
            elapsed = time.monotonic() - begin
            variants = ", ".join(
                f"{v} ({stats.model_of.get(v, '?')}) CTR {stats.ctr(v):.3f}"
                for v in sorted(stats.impressions)
            )
            print(
                f"  {elapsed:5.0f}s  {stats.events_sent - sent:5d} events "
                f"({stats.events_sent / max(elapsed, 1e-9):6.1f}/s)  freshness p50 "
                f"{percentile(stats.freshness_ms, 50):6.0f} ms p95 "
                f"{percentile(stats.freshness_ms, 95):6.0f} ms  Predict p99 "
                f"{percentile(stats.predict_ms, 99):5.1f} ms  {variants}",
                flush=True,
            )
            sent = stats.events_sent
    finally:
        stop.set()
        driver.join()
    time.sleep(1.0)  # the last probes land
    return population.snapshot()


def _wait_until(population: Any, done: Any, timeout_s: float = 30) -> None:
    """Visit until one visit's answer satisfies ``done(stats)`` (servers re-read the
    registry and the experiment every half second)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        population.reset()  # judge by this visit's answer alone
        population.visit()
        if done(population.snapshot()):
            return
        time.sleep(0.1)
    raise PreconditionError(f"the server did not switch models within {timeout_s:.0f}s")


def _monitor(config: SaikiConfig, label: str) -> dict[str, Any]:
    found = monitor_now(config, 600_000)
    drifted = ", ".join(found.drifted[:4]) or "none"
    verdict = "RETRAIN DUE" if found.retrain_due else "no retrain due"
    print(
        f"monitor ({label}): live CTR {found.live_ctr:.3f} against {found.expected_ctr:.3f} "
        f"expected from the model's own scores (ratio {found.ctr_ratio:.2f}); drifted "
        f"features: {drifted} → {verdict}",
        flush=True,
    )
    return {
        "production": found.production,
        "live_ctr": found.live_ctr,
        "expected_ctr": found.expected_ctr,
        "drifted": found.drifted,
        "retrain_due": found.retrain_due,
    }
