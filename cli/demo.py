"""``saiki demo``: the whole loop (再帰化) on one machine, every real component running.

1. simulate days of history in which users' tastes change some hours before "now";
2. ingest them: event log → Iceberg master dataset, exactly once;
3. batch run (Beam) → batch view published to Feast;
4. train model v1 on the data before the change (yesterday's model), promote it;
5. start the speed layer (Flink) and the gRPC server;
6. live: a simulated population asks for rankings, reacts by its (changed) tastes, and
   the reactions flow back through ``Ingest``; a live line shows events/s, freshness
   and Predict's p99; ``saiki monitor`` then checks drift and live CTR;
7. the batch layer recomputes; v2 trains on everything up to the live phase, is
   backtested against v1 on the live phase's impressions, promoted only if it wins,
   and the server hot-reloads it;
8. an A/B split serves v1 and v2 side by side;
9. consistency, exactly-once check of every served event, the report; everything stops.
"""

from __future__ import annotations

import argparse
import json
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cli import data_commands, model_commands
from cli.demo_services import DemoServices, free_port
from cli.progress import print_table
from core.config import SaikiConfig, load_config
from core.errors import PreconditionError
from core.timeutil import floor_minute, format_iso, now_ms

SUMMARY_FILE = "summary.json"


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


def add_parsers(subparsers: Any) -> None:
    """Register ``saiki demo``."""
    demo = subparsers.add_parser("demo", help="run the whole loop on the embedded defaults")
    demo.add_argument("--quick", action="store_true", help="a smaller world (about 2 minutes)")
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument(
        "--reset", action="store_true", help="delete the data directory's state first"
    )
    demo.set_defaults(handler=run_demo)


def _stage(title: str) -> None:
    print(f"\n== {title}", flush=True)


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def _prepare(data_dir: Path, reset: bool) -> None:
    if data_dir.exists() and any(data_dir.iterdir()):
        if not reset:
            raise PreconditionError(
                f"{data_dir} already holds state: pass --reset to start the demo over "
                "(it deletes that directory), or use another --data-dir"
            )
        shutil.rmtree(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)


def run_demo(args: argparse.Namespace) -> int:
    """Run every stage in order, printing a short summary of each."""
    started = time.perf_counter()
    data_dir = Path(args.data_dir).resolve()
    _prepare(data_dir, args.reset)
    config = load_config(data_dir)
    plan = DemoPlan.choose(args.quick)
    services = DemoServices(config)
    try:
        summary = _run_stages(config, plan, args.seed, services)
    finally:
        services.stop()
    _stage("9. the report")
    from cli.report import write_report

    report = write_report(config)
    _final(summary, report, time.perf_counter() - started)
    return 0


def _run_stages(
    config: SaikiConfig, plan: DemoPlan, seed: int, services: DemoServices
) -> dict[str, Any]:
    shift_at = _history(config, plan, seed)
    return _live(config, plan, seed, services, shift_at)


def _history(config: SaikiConfig, plan: DemoPlan, seed: int) -> int:
    """Stages 1–4; returns the time users' tastes change."""
    data_dir = config.data_dir
    end = floor_minute(now_ms())
    shift_at = end - int(plan.shift_hours * 3_600_000)
    history = data_dir / "demo" / "history.jsonl"
    history.parent.mkdir(parents=True, exist_ok=True)
    common = {"data_dir": str(data_dir)}

    _stage(
        f"1. simulate {plan.days:g} days of history: {plan.users} users, {plan.items} "
        f"items; users' tastes change at {format_iso(shift_at)}"
    )
    data_commands.run_simulate(
        argparse.Namespace(
            users=plan.users,
            items=plan.items,
            days=plan.days,
            seed=seed,
            out=history,
            malformed_rate=0.005,
            late_rate=0.02,
            duplicate_rate=0.002,
            end=format_iso(end),
            shift_at=format_iso(shift_at),
        )
    )
    _stage("2. ingest: validate → event log → Iceberg master dataset (exactly once)")
    data_commands.run_ingest(
        argparse.Namespace(**common, files=[history], workers=None, no_load=False)
    )
    _stage("3. batch layer (Beam): recompute every feature, publish the view to Feast")
    _batch_run(config)
    _stage(f"4. train model v1 on the days before {format_iso(shift_at)} (yesterday's model)")
    model_commands.run_train(_train_args(common, to=format_iso(shift_at)))
    return shift_at


def _live(
    config: SaikiConfig, plan: DemoPlan, seed: int, services: DemoServices, shift_at: int
) -> dict[str, Any]:
    """Stages 5–8 and the closing checks."""
    common = {"data_dir": str(config.data_dir)}
    _stage("5. start the speed layer (Flink) and the gRPC server")
    begin = time.monotonic()
    speed = services.start("speed layer", "speed", "run", "--fresh")
    port = free_port()
    services.start_server(port)
    print(f"server up on 127.0.0.1:{port} in {time.monotonic() - begin:.0f}s", flush=True)
    services.wait_speed_caught_up(speed)
    print(f"speed layer caught up with the log {time.monotonic() - begin:.0f}s after start")

    from serving.registry import ModelRegistry
    from simulator import World
    from simulator.live import LivePopulation

    registry = ModelRegistry(config.data_dir)
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

        _stage("7. batch layer recomputes; v2 trains and is backtested against v1")
        _batch_run(config)
        # Everything up to now, the live phase included; judged on the live phase alone.
        train = _train_args(common, to=format_iso(now_ms()), holdout_from=format_iso(live_from))
        model_commands.run_train(train)
        v2 = int(train.registered)
        promoted = registry.production() == v2
        if promoted:
            _wait_until(population, lambda stats: f"v{v2}" in stats.model_of.values())
            print(f"the server hot-reloaded v{v2}")

        _stage(f"8. A/B: v1 against v{v2}, half the users each, {plan.live_seconds:g}s")
        model_commands.run_experiment(
            argparse.Namespace(
                **common, end=False, name="v1-vs-v2", split=f"control=1:0.5,treatment={v2}:0.5"
            )
        )
        _wait_until(population, lambda stats: "production" not in stats.model_of)
        population.reset()
        second = _live_phase(population, plan, services)
        model_commands.run_experiment(argparse.Namespace(**common, end=True, name="", split=None))
        if promoted:
            monitored[f"v{v2}"] = _monitor(config, f"v{v2} after retraining")
    finally:
        population.close(drain_s=5)
    summary = _closing_checks(
        config,
        registry,
        (first, second),
        promoted=promoted,
        v2=v2,
        events_acked=population.events_acked,
    )
    summary["monitor"] = monitored
    (config.data_dir / "demo" / SUMMARY_FILE).write_text(json.dumps(summary))
    return summary


def _train_args(
    common: dict[str, str], to: str | None, holdout_from: str | None = None
) -> argparse.Namespace:
    return argparse.Namespace(
        **common,
        training_set=None,
        from_=None,
        to=to,
        holdout_from=holdout_from,
        epochs=6,
        seed=0,
        promote_if_better=True,
    )


def _batch_run(config: SaikiConfig) -> None:
    from batch.run import BatchRunRequest, describe, run_batch_view

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
                f"{_pct(stats.freshness_ms, 50):6.0f} ms p95 {_pct(stats.freshness_ms, 95):6.0f}"
                f" ms  Predict p99 {_pct(stats.predict_ms, 99):5.1f} ms  {variants}",
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
    from cli.ops_commands import merger_for
    from core.eventlog import EventLog
    from serving.monitor import monitor

    found = monitor(
        config.data_dir, merger_for(config), EventLog(config.log_dir), now_ms(), 600_000
    )
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


def _closing_checks(
    config: SaikiConfig,
    registry: Any,
    phases: tuple[Any, Any],
    *,
    promoted: bool,
    v2: int,
    events_acked: int,
) -> dict[str, Any]:
    first, second = phases
    from batch.master import MasterDataset
    from cli.ops_commands import consistency_report
    from core.eventlog import EventLog

    master = MasterDataset(config)
    master.load(EventLog(config.log_dir))
    snapshot = master.resolve_snapshot()
    if snapshot is None:
        raise PreconditionError("the master dataset is empty after the demo's ingest")
    # Live events carry the variant that served them; simulated history does not.
    served = master.read(snapshot, ("event_id", "variant"))
    served = served.filter(served.column("variant").is_valid())
    distinct = len(set(served.column("event_id").to_pylist()))
    consistency = consistency_report(config, 100, floor_minute(now_ms()))
    versions = registry.versions()
    summary = {
        "versions": [
            {
                "version": v.version,
                "stage": registry.stage_of(v.version),
                "auc_fp32": v.metrics["fp32"]["auc"],
                "auc_int8": v.metrics["int8"]["auc"],
                "backtest_of_production": v.metrics.get("production_backtest"),
            }
            for v in versions
        ],
        "v2": v2,
        "v2_promoted": promoted,
        "live_v1": {
            "impressions": sum(first.impressions.values()),
            "clicks": sum(first.clicks.values()),
            "ctr": first.total_ctr(),
        },
        "ab": {
            v: {
                "model": second.model_of.get(v),
                "impressions": second.impressions[v],
                "clicks": second.clicks.get(v, 0),
                "ctr": second.ctr(v),
            }
            for v in sorted(second.impressions)
        },
        "events_sent": events_acked,
        "served_events_in_master": served.num_rows,
        "served_events_distinct": distinct,
        "predict_ms": first.predict_ms + second.predict_ms,
        "freshness_ms": first.freshness_ms + second.freshness_ms,
        "request_errors": first.errors + second.errors,
        "consistency": {
            "compared": consistency.compared,
            "mismatched": sum(consistency.mismatches.values()),
        },
    }
    return summary


def _final(summary: dict[str, Any], report: Path, seconds: float) -> None:
    _stage("summary")
    print_table(
        ("model", "stage", "AUC fp32", "AUC int8 (served)", "production's AUC, same rows"),
        [
            (
                f"v{v['version']}",
                v["stage"],
                f"{v['auc_fp32']:.4f}",
                f"{v['auc_int8']:.4f}",
                f"{v['backtest_of_production']['auc']:.4f}" if v["backtest_of_production"] else "-",
            )
            for v in summary["versions"]
        ],
    )
    v2 = summary["v2"]
    print(
        f"winner: v{v2} (promoted, hot-reloaded)"
        if summary["v2_promoted"]
        else f"winner: v1 (v{v2} did not beat it on the same held-out impressions)"
    )
    live = summary["live_v1"]
    print(
        f"live CTR with v1 after the change: {live['ctr']:.3f} over {live['impressions']} "
        "impressions"
    )
    print_table(
        ("A/B variant", "model", "impressions", "clicks", "CTR"),
        [
            (name, arm["model"], arm["impressions"], arm["clicks"], f"{arm['ctr']:.3f}")
            for name, arm in summary["ab"].items()
        ],
    )
    predict, fresh = summary["predict_ms"], summary["freshness_ms"]
    print(
        f"Predict (50 candidates, client side): p50 {_pct(predict, 50):.1f} ms, "
        f"p99 {_pct(predict, 99):.1f} ms over {len(predict)} calls, "
        f"{summary['request_errors']} failed"
    )
    print(
        f"freshness (Ingest ack → feature served): p50 {_pct(fresh, 50):.0f} ms, "
        f"p95 {_pct(fresh, 95):.0f} ms over {len(fresh)} probes"
    )
    print(
        f"served events in the master dataset: {summary['served_events_in_master']} of "
        f"{summary['events_sent']} sent ({summary['served_events_distinct']} distinct)"
    )
    check = summary["consistency"]
    print(f"batch/speed consistency: {check['mismatched']} of {check['compared']} values off")
    print(f"report: {report}")
    print(f"demo finished in {seconds:.0f}s; every process stopped; data in {report.parent.parent}")
