"""``saiki report``: one HTML page with PNG plots, under ``<data>/report/``.

* model AUC per version (fp32, int8, both baselines) and live CTR per A/B variant;
* click-through of served rankings per variant over time (from the event log);
* feature freshness and served latency histograms (recorded by ``saiki demo``);
* batch/speed consistency (``saiki consistency``);
* a shadow period (``saiki demo`` stages v2 in shadow): shadow against served scores on
  the same requests, and both scorers' log loss and calibration on the items shown.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no screen
import jinja2
import matplotlib.pyplot as plt
import numpy as np
import pyarrow as pa

from saiki.batch.consistency import ConsistencyReport
from saiki.core.config import SaikiConfig
from saiki.core.eventlog import EventLog
from saiki.core.files import atomic_write
from saiki.core.ingest import SEGMENT_ARROW_SCHEMA
from saiki.core.timeutil import floor_minute, format_iso, now_ms
from saiki.ops.consistency import consistency_report
from saiki.ops.summary import DemoSummary
from saiki.serving.monitor import read_predictions
from saiki.serving.registry import ModelRegistry

_TEMPLATES = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).resolve().parent),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
)


def _models_plot(versions: list[Any], out: Path) -> None:
    names = [v.name for v in versions]
    series = {
        "model fp32": [v.metrics["fp32"]["auc"] for v in versions],
        "model int8 (served)": [v.metrics["int8"]["auc"] for v in versions],
        "baseline: logistic regression": [v.metrics["baseline_logistic"]["auc"] for v in versions],
        "baseline: item CTR": [v.metrics["baseline_item_ctr"]["auc"] for v in versions],
    }
    fig, ax = plt.subplots(figsize=(8, 4.2))
    width = 0.8 / len(series)
    for n, (label, values) in enumerate(series.items()):
        positions = np.arange(len(names)) + n * width
        bars = ax.bar(positions, values, width, label=label)
        ax.bar_label(bars, fmt="%.3f", fontsize=7)
    ax.set_xticks(np.arange(len(names)) + 0.4 - width / 2, names)
    ax.set_ylim(0.45, 1.0)
    ax.set_ylabel("AUC on the version's held-out days")
    ax.set_title("Model quality per version")
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def _variant_events(config: SaikiConfig) -> pa.Table:
    log = EventLog(config.log_dir)
    tables = [t for _, t in log.events.read_range(0, SEGMENT_ARROW_SCHEMA)]
    if not tables:
        return SEGMENT_ARROW_SCHEMA.empty_table()
    table = pa.concat_tables(tables)
    return table.filter(pa.compute.is_valid(table.column("variant")))


def _served_models(config: SaikiConfig) -> dict[str, str]:
    """request_id → the model version that ranked it, from the servers' prediction logs."""
    return {
        str(p["request_id"]): str(p["model_version"])
        for p in read_predictions(config.data_dir / "serving", 0)
    }


def _ctr_plot(events: pa.Table, models: dict[str, str], out: Path) -> dict[str, tuple[int, int]]:
    """CTR over time per (variant, model) on one time axis; returns totals per series."""
    names = [
        f"{variant} ({models.get(str(request), '?')})"
        for variant, request in zip(
            events.column("variant").to_pylist(),
            events.column("request_id").to_pylist(),
            strict=True,
        )
    ]
    times = np.array(events.column("event_time").to_pylist() or [0], dtype=np.int64)
    origin = int(times.min())
    # About 40 points over the whole span, never finer than 5 s.
    step = max(5_000, int(times.max() - origin) // 40)
    cells: dict[str, dict[int, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0]))
    totals: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for name, time, kind in zip(
        names, times.tolist(), events.column("event_type").to_pylist(), strict=False
    ):
        index = 0 if kind == "IMPRESSION" else 1
        cells[name][(time - origin) // step][index] += 1
        totals[name][index] += 1
    fig, ax = plt.subplots(figsize=(8, 4.2))
    for name, buckets in sorted(cells.items()):
        # A bucket with few impressions (the ragged end of a phase) says nothing.
        keys = [k for k in sorted(buckets) if buckets[k][0] >= 30]
        ax.plot(
            [k * step / 1000 for k in keys],
            [buckets[k][1] / buckets[k][0] for k in keys],
            marker="o",
            markersize=3,
            label=f"{name}: CTR {totals[name][1] / max(totals[name][0], 1):.3f}",
        )
    ax.set_xlabel(f"seconds since the first served ranking ({step / 1000:.0f} s buckets)")
    ax.set_ylabel("clicks per impression")
    ax.set_title("Click-through of served rankings, per A/B variant (model)")
    if cells:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return {v: (t[0], t[1]) for v, t in totals.items()}


def _histogram(values: list[float], title: str, xlabel: str, out: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 3.6))
    if values:
        ax.hist(values, bins=40, color="#3b7dd8")
        for q, style in ((50, "--"), (99, ":")):
            mark = float(np.percentile(values, q))
            ax.axvline(mark, color="black", linestyle=style, label=f"p{q} {mark:.1f}")
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no samples (run saiki demo)", ha="center", transform=ax.transAxes)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def _shadow_plot(shadow: dict[str, Any], out: Path) -> None:
    points = np.array(shadow["points"], dtype=np.float64).reshape(-1, 2)
    fig, ax = plt.subplots(figsize=(5.2, 5))
    ax.scatter(points[:, 0], points[:, 1], s=4, alpha=0.35, color="#3b7dd8")
    top = float(points.max()) * 1.05 if len(points) else 1.0
    ax.plot([0, top], [0, top], color="black", linewidth=0.8, linestyle="--", label="equal")
    ax.set_xlim(0, top)
    ax.set_ylim(0, top)
    ax.set_xlabel(f"served score ({shadow['served']})")
    ax.set_ylabel(f"shadow score ({shadow['shadow']})")
    ax.set_title(
        f"Shadow {shadow['shadow']} against {shadow['served']}, same requests "
        f"(r = {shadow['correlation']:.3f})",
        fontsize=10,
    )
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def write_report(
    config: SaikiConfig,
    summary: DemoSummary | None = None,
    consistency: ConsistencyReport | None = None,
) -> Path:
    """Write report/index.html and its PNGs; returns the HTML path.

    ``summary`` gives the latency and freshness plots (default: the last demo's, if any);
    ``consistency`` a check already run (default: one is run now).
    """
    folder = config.data_dir / "report"
    folder.mkdir(parents=True, exist_ok=True)
    registry = ModelRegistry.open(config)
    versions = registry.versions()
    if versions:
        _models_plot(versions, folder / "models.png")
    totals = _ctr_plot(_variant_events(config), _served_models(config), folder / "ctr.png")
    summary = summary or DemoSummary.load(config.data_dir)
    _histogram(
        summary.freshness_ms if summary else [],
        "Feature freshness: Ingest ack → tile readable",
        "milliseconds",
        folder / "freshness.png",
    )
    _histogram(
        summary.predict_ms if summary else [],
        "Served latency of Predict (client side)",
        "milliseconds",
        folder / "latency.png",
    )
    shadow = summary.shadow if summary else {}
    if shadow.get("points"):
        _shadow_plot(shadow, folder / "shadow.png")
    if consistency is None:
        consistency = consistency_report(config, 100, floor_minute(now_ms()))
    models = [
        {
            "name": v.name,
            "stage": registry.stage_of(v.version),
            "fp32": v.metrics["fp32"]["auc"],
            "int8": v.metrics["int8"]["auc"],
            "logistic": v.metrics["baseline_logistic"]["auc"],
            "item_ctr": v.metrics["baseline_item_ctr"]["auc"],
            "backtest": v.metrics.get("production_backtest", {}).get("auc", ""),
        }
        for v in versions
    ]
    page = _TEMPLATES.get_template("report.html.j2").render(
        data_dir=str(config.data_dir),
        written=format_iso(now_ms()),
        models=models,
        variants=[(v, i, c) for v, (i, c) in sorted(totals.items())],
        consistency=consistency,
        consistency_at=format_iso(consistency.query_ms),
        mismatched=sum(consistency.mismatches.values()),
        mismatches=sorted(consistency.mismatches.items()),
        shadow=shadow,
        log_consistency=summary.log_consistency if summary else {},
    )
    path = folder / "index.html"
    atomic_write(path, page)
    return path
