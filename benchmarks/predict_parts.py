"""Where a Predict call's time goes: the merge, the forward pass, the serialisation.

Measured in this process on a prepared data dir (bench_live's), the cache off, for 100 and
1,000 candidates and both precisions; medians of 180 calls after 20 of warm-up. Each
call's merge feeds both precisions, in alternating order, so their end-to-end times differ
only by what the model and the answer's serialisation take; the paired difference is
printed with them.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from saiki.core.config import load_config

USERS = [f"u{n}" for n in range(2_000)]
ITEMS = [f"i{n}" for n in range(800)]


def breakdown(data: Path) -> list[str]:
    """Predict's parts in this process, quiet: merge, forward pass, serialisation."""
    import torch

    from saiki.feature_repo.online_readers import online_reader
    from saiki.feature_repo.views import ViewCatalog
    from saiki.serving.merge import FeatureMerger
    from saiki.serving.model import model_inputs, request_inputs
    from saiki.serving.registry import ModelRegistry
    from saiki.v1 import prediction_pb2

    torch.set_num_threads(1)
    config = load_config(data, environ={})
    registry = ModelRegistry(data)
    version = registry.production()
    assert version is not None
    lines = []
    rng = np.random.default_rng(14)
    models = {p: registry.load(version, p) for p in ("int8", "fp32")}
    merger = FeatureMerger(ViewCatalog.open(config), online_reader(config), cache=False)
    for count in (100, 1_000):
        candidates = [str(i) for i in rng.choice(ITEMS * 2, count, replace=False)]
        candidates = [c if n < len(ITEMS) else f"{c}-cold" for n, c in enumerate(candidates)]
        parts: dict[str, dict[str, list[float]]] = {
            p: {"merge": [], "forward": [], "serialise": [], "total": []} for p in models
        }
        for n in range(200):
            user = USERS[n % len(USERS)]
            t0 = time.perf_counter()
            features_user = merger.features("user", [user])
            features_items = merger.features("item", candidates)
            merge = time.perf_counter() - t0
            # Both precisions on the same merged rows, in alternating order: a drift of the
            # machine weighs on both alike, and the merge is the same for both.
            for precision in ("int8", "fp32") if n % 2 else ("fp32", "int8"):
                model, model_config = models[precision]
                t1 = time.perf_counter()
                dense = np.hstack(
                    [np.repeat(features_user.values, count, axis=0), features_items.values]
                )
                inputs = request_inputs(model_config, dense, user, candidates, None)
                with torch.no_grad():
                    scores = model(*inputs).numpy()
                t2 = time.perf_counter()
                order = np.argsort(-scores, kind="stable")
                prediction_pb2.PredictResponse(
                    items=[
                        prediction_pb2.ScoredItem(item_id=candidates[i], score=float(scores[i]))
                        for i in order.tolist()
                    ]
                ).SerializeToString()
                t3 = time.perf_counter()
                if n >= 20:
                    for name, seconds in zip(
                        parts[precision],
                        (merge, t2 - t1, t3 - t2, merge + t3 - t1),
                        strict=True,
                    ):
                        parts[precision][name].append(seconds * 1000)
        for precision, measured in parts.items():
            medians = {k: float(np.median(v)) for k, v in measured.items()}
            lines.append(
                f"{count:>6} candidates {precision}: merge {medians['merge']:.2f} ms, forward "
                f"{medians['forward']:.2f} ms, serialise {medians['serialise']:.2f} ms, "
                f"total {medians['total']:.2f} ms (medians of 180, cache off)"
            )
        per_row, once = [], []
        dense = np.zeros((count, features_items.values.shape[1] * 2))
        for _ in range(200):  # the request's user and device bucketed per candidate, or once
            t0 = time.perf_counter()
            model_inputs(model_config, dense, ["u7"] * count, candidates, ["ios"] * count)
            t1 = time.perf_counter()
            request_inputs(model_config, dense, "u7", candidates, "ios")
            per_row.append(t1 - t0)
            once.append(time.perf_counter() - t1)
        lines.append(
            f"{count:>6} candidates: the model's inputs {np.median(per_row) * 1000:.3f} ms with "
            f"ids bucketed per candidate, {np.median(once) * 1000:.3f} ms with the user's and "
            "device's once (as Predict does)"
        )
        saved = np.array(parts["fp32"]["total"]) - np.array(parts["int8"]["total"])
        lines.append(
            f"{count:>6} candidates: int8 saves {float(np.median(saved)):+.2f} ms a call end "
            f"to end against fp32 (median of 180 paired calls; faster in "
            f"{float((saved > 0).mean()):.0%} of them)"
        )
    return lines
