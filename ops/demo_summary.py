"""The end of ``saiki demo``: the closing checks and the summary a newcomer reads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from saiki.batch.consistency import ConsistencyReport
from saiki.batch.master import MasterDataset
from saiki.core.config import SaikiConfig
from saiki.core.errors import PreconditionError
from saiki.core.eventlog import EventLog
from saiki.core.timeutil import floor_minute, now_ms
from saiki.ops.consistency import consistency_report, log_consistency_report
from saiki.ops.console import print_table
from saiki.ops.summary import DemoSummary
from saiki.serving.registry import ModelRegistry


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile, NaN when there are no values."""
    return float(np.percentile(values, q)) if values else float("nan")


def closing_checks(
    config: SaikiConfig,
    registry: ModelRegistry,
    phases: tuple[Any, Any],
    *,
    promoted: bool,
    v2: int,
    events_acked: int,
    monitored: dict[str, dict[str, Any]],
    shadow: dict[str, Any],
    live_from: int,
) -> tuple[DemoSummary, ConsistencyReport]:
    """Every served event in the master dataset exactly once, consistency (batch/speed,
    and from the prediction log over the live phases), the figures."""
    first, second = phases
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
    from_log = log_consistency_report(config, live_from, now_ms(), 200)
    versions = registry.versions()
    summary = DemoSummary(
        versions=[
            {
                "version": v.version,
                "stage": registry.stage_of(v.version),
                "auc_fp32": v.metrics["fp32"]["auc"],
                "auc_int8": v.metrics["int8"]["auc"],
                "backtest_of_production": v.metrics.get("production_backtest"),
            }
            for v in versions
        ],
        v2=v2,
        v2_promoted=promoted,
        live_v1={
            "impressions": sum(first.impressions.values()),
            "clicks": sum(first.clicks.values()),
            "ctr": first.total_ctr(),
        },
        ab={
            v: {
                "model": second.model_of.get(v),
                "impressions": second.impressions[v],
                "clicks": second.clicks.get(v, 0),
                "ctr": second.ctr(v),
            }
            for v in sorted(second.impressions)
        },
        events_sent=events_acked,
        served_events_in_master=served.num_rows,
        served_events_distinct=distinct,
        predict_ms=first.predict_ms + second.predict_ms,
        freshness_ms=first.freshness_ms + second.freshness_ms,
        request_errors=first.errors + second.errors,
        consistency={
            "compared": consistency.compared,
            "mismatched": sum(consistency.mismatches.values()),
        },
        monitor=monitored,
        shadow=shadow,
        log_consistency={
            "answers": from_log.answers,
            "checked": from_log.checked,
            "compared": from_log.compared,
            "in_flight": from_log.in_flight,
            "mismatched": sum(from_log.mismatches.values()),
        },
    )
    return summary, consistency


def print_summary(summary: DemoSummary, report: Path, seconds: float) -> None:
    """The demo's closing table, as the README shows it."""
    print("\n== summary", flush=True)
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
            for v in summary.versions
        ],
    )
    v2 = summary.v2
    print(
        f"winner: v{v2} (promoted, hot-reloaded)"
        if summary.v2_promoted
        else f"winner: v1 (v{v2} did not beat it on the same held-out impressions)"
    )
    live = summary.live_v1
    print(
        f"live CTR with v1 after the change: {live['ctr']:.3f} over {live['impressions']} "
        "impressions"
    )
    print_table(
        ("A/B variant", "model", "impressions", "clicks", "CTR"),
        [
            (name, arm["model"], arm["impressions"], arm["clicks"], f"{arm['ctr']:.3f}")
            for name, arm in summary.ab.items()
        ],
    )
    predict, fresh = summary.predict_ms, summary.freshness_ms
    print(
        f"Predict (50 candidates, client side): p50 {percentile(predict, 50):.1f} ms, "
        f"p99 {percentile(predict, 99):.1f} ms over {len(predict)} calls, "
        f"{summary.request_errors} failed"
    )
    print(
        f"freshness (Ingest ack → feature served): p50 {percentile(fresh, 50):.0f} ms, "
        f"p95 {percentile(fresh, 95):.0f} ms over {len(fresh)} probes"
    )
    print(
        f"served events in the master dataset: {summary.served_events_in_master} of "
        f"{summary.events_sent} sent ({summary.served_events_distinct} distinct)"
    )
    if summary.shadow:
        print(_shadow_line(summary.shadow))
    check = summary.consistency
    print(f"batch/speed consistency: {check['mismatched']} of {check['compared']} values off")
    logged = summary.log_consistency
    if logged:
        print(
            f"served features against the prediction log's recomputation: "
            f"{logged['mismatched']} of {logged['compared']} values off "
            f"({logged['in_flight']} with an event in flight) over {logged['checked']} of "
            f"{logged['answers']} logged answers"
        )
    print(f"report: {report}")
    print(f"demo finished in {seconds:.0f}s; every process stopped; data in {report.parent.parent}")


def _shadow_line(shadow: dict[str, Any]) -> str:
    """One line on the shadow period: agreement, log loss on shown items, verdict."""
    line = (
        f"shadow {shadow['shadow']} beside {shadow['served']} on {shadow['requests']} requests: "
        f"score correlation {shadow['correlation']:.3f}, top-{shadow['top_k']} overlap "
        f"{shadow['top_k_overlap']:.0%}"
    )
    served, candidate = shadow.get("served_side"), shadow.get("shadow_side")
    if served and candidate:
        line += (
            f"; log loss on {shadow['labelled']} shown items {served['log_loss']:.4f} → "
            f"{candidate['log_loss']:.4f}"
        )
    verdict = "passed" if shadow["passed"] else "not passed: " + "; ".join(shadow["reasons"])
    return f"{line}; {verdict}"
