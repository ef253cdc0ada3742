"""``saiki report``: one HTML page with PNG plots, under ``<data>/report/``.

* model AUC per version (fp32, int8, both baselines) and live CTR per A/B variant;
* click-through of served rankings per variant over time (from the event log);
* feature freshness and served latency histograms (recorded by ``saiki demo``);
* batch/speed consistency (``saiki consistency``).
"""

from __future__ import annotations

import html
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no screen
import matplotlib.pyplot as plt
import numpy as np
import pyarrow as pa

from saiki.core.config import SaikiConfig
from saiki.core.eventlog import EventLog
from saiki.core.ingest import SEGMENT_ARROW_SCHEMA
from saiki.core.timeutil import floor_minute, format_iso, now_ms


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
    from saiki.serving.monitor import read_predictions

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


def write_report(config: SaikiConfig) -> Path:
    """Write report/index.html and its PNGs; returns the HTML path."""
    from saiki.cli.ops_commands import consistency_report
    from saiki.serving.registry import ModelRegistry

    folder = config.data_dir / "report"
    folder.mkdir(parents=True, exist_ok=True)
    registry = ModelRegistry(config.data_dir)
    versions = registry.versions()
    if versions:
        _models_plot(versions, folder / "models.png")
    totals = _ctr_plot(_variant_events(config), _served_models(config), folder / "ctr.png")
    from saiki.cli.demo import SUMMARY_FILE

    summary_path = config.data_dir / "demo" / SUMMARY_FILE
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    _histogram(
        summary.get("freshness_ms", []),
        "Feature freshness: Ingest ack → tile readable",
        "milliseconds",
        folder / "freshness.png",
    )
    _histogram(
        summary.get("predict_ms", []),
        "Served latency of Predict (client side)",
        "milliseconds",
        folder / "latency.png",
    )
    consistency = consistency_report(config, 100, floor_minute(now_ms()))
    rows = "".join(
        f"<tr><td>{v.name}</td><td>{registry.stage_of(v.version)}</td>"
        f"<td>{v.metrics['fp32']['auc']:.4f}</td><td>{v.metrics['int8']['auc']:.4f}</td>"
        f"<td>{v.metrics['baseline_logistic']['auc']:.4f}</td>"
        f"<td>{v.metrics['baseline_item_ctr']['auc']:.4f}</td>"
        f"<td>{html.escape(str(v.metrics.get('production_backtest', {}).get('auc', '')))}</td>"
        f"</tr>"
        for v in versions
    )
    variants = "".join(
        f"<tr><td>{html.escape(v)}</td><td>{i}</td><td>{c}</td><td>{c / max(i, 1):.4f}</td></tr>"
        for v, (i, c) in sorted(totals.items())
    )
    mismatches = (
        "".join(
            f"<tr><td>{html.escape(name)}</td><td>{count}</td></tr>"
            for name, count in sorted(consistency.mismatches.items())
        )
        or "<tr><td colspan=2>no mismatch</td></tr>"
    )
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>saiki report</title>
<style>body{{font-family:sans-serif;max-width:980px;margin:2em auto}}table{{border-collapse:
collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}</style></head><body>
<h1>saiki 再帰 — report</h1><p>data: {html.escape(str(config.data_dir))};
written {format_iso(now_ms())}</p>
<h2>Models</h2><table><tr><th>version</th><th>stage</th><th>AUC fp32</th><th>AUC int8</th>
<th>logistic</th><th>item CTR</th><th>production backtest</th></tr>{rows}</table>
<img src="models.png" alt="AUC per version">
<h2>A/B variants, live</h2><table><tr><th>variant</th><th>impressions</th><th>clicks</th>
<th>CTR</th></tr>{variants}</table><img src="ctr.png" alt="CTR per variant over time">
<h2>Freshness and latency</h2><img src="freshness.png" alt="freshness">
<img src="latency.png" alt="latency">
<h2>Batch/speed consistency at {format_iso(consistency.query_ms)}</h2>
<p>{consistency.compared} values compared over {consistency.sampled};
{sum(consistency.mismatches.values())} mismatched (events the speed layer left to the next
batch run).</p><table><tr><th>feature</th><th>mismatches</th></tr>{mismatches}</table>
</body></html>"""
    path = folder / "index.html"
    path.write_text(page)
    return path
