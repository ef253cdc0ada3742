"""Training and evaluation of the ranking model on a batch-layer training set.

The split is by time: the model trains on earlier days and is evaluated on the last day
of the set (the *held-out days*), as it would be used. On exactly those held-out rows it
is compared with two baselines: the item's smoothed CTR alone (``item_ctr_7d``) and a
logistic regression on the same 30 features. The quantised model is evaluated on the
same rows, and both forms are timed at batch 100 on one thread.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow.parquet as pq
import torch
from torch import nn

from saiki.core.errors import InvalidInputError
from saiki.core.timeutil import MS_PER_DAY
from saiki.serving.model import (
    DENSE_COLUMNS,
    ModelConfig,
    RankingModel,
    dense_inputs,
    model_inputs,
    quantise,
)

FloatArray = npt.NDArray[np.float64]


def auc(labels: FloatArray, scores: FloatArray) -> float:
    """Area under the ROC curve (Mann-Whitney, ties counted half)."""
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    # Average ranks over ties.
    boundaries = np.flatnonzero(np.diff(sorted_scores)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [len(scores)]])
    for start, end in zip(starts, ends, strict=True):
        ranks[order[start:end]] = (start + end + 1) / 2
    positives = labels == 1
    n_pos, n_neg = int(positives.sum()), int((~positives).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def log_loss(labels: FloatArray, scores: FloatArray) -> float:
    """Mean binary cross-entropy."""
    p = np.clip(scores, 1e-7, 1 - 1e-7)
    return float(-np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p)))


@dataclass(frozen=True)
class Scores:
    """How one scorer did on the held-out rows."""

    auc: float
    log_loss: float


@dataclass
class TrainingReport:
    """Everything ``saiki train`` reports and the registry stores."""

    rows_train: int
    rows_holdout: int
    holdout_from_ms: int
    positives_holdout: int
    fp32: Scores
    int8: Scores
    baseline_item_ctr: Scores
    baseline_logistic: Scores
    latency_ms_batch100: dict[str, float] = field(default_factory=dict)
    # The operating threshold that travels with the version (see operating_threshold).
    threshold: dict[str, float] = field(default_factory=dict)
    epochs: int = 0
    seconds: float = 0.0
    # Rows on each side of the boundary before the caps (rows_* are what was used).
    rows_train_available: int = 0
    rows_holdout_available: int = 0

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return asdict(self)


@dataclass
class Rows:
    """A training set as arrays."""

    dense: FloatArray
    users: list[str]
    items: list[str]
    devices: list[str | None]
    labels: FloatArray
    times: npt.NDArray[np.int64]

    def take(self, index: npt.NDArray[np.int64]) -> Rows:
        """The rows at these positions."""
        picks = index.tolist()
        return Rows(
            self.dense[index],
            [self.users[i] for i in picks],
            [self.items[i] for i in picks],
            [self.devices[i] for i in picks],
            self.labels[index],
            self.times[index],
        )

    def __len__(self) -> int:
        return len(self.labels)


def load_rows(path: Path) -> Rows:
    """Read a training set written by ``saiki batch training-set``."""
    if not path.exists():
        raise InvalidInputError("--training-set", f"no such file: {path}")
    table = pq.read_table(path)
    missing = [
        c for c in (*DENSE_COLUMNS, "clicked", "user_id", "item_id") if c not in table.column_names
    ]
    if missing:
        raise InvalidInputError("--training-set", f"{path} lacks columns {missing[:3]}")
    dense = np.column_stack([table.column(c).to_numpy() for c in DENSE_COLUMNS]).astype(np.float64)
    return Rows(
        dense,
        table.column("user_id").to_pylist(),
        table.column("item_id").to_pylist(),
        table.column("device_id").to_pylist(),
        table.column("clicked").to_numpy().astype(np.float64),
        table.column("event_time").to_numpy().astype(np.int64),
    )


def split_by_time(rows: Rows, boundary: int | None = None) -> tuple[Rows, Rows, int]:
    """Train on earlier rows, hold out rows from ``boundary`` on (default: the last day,
    or the last quarter of the span if it is shorter than two days)."""
    if len(rows) < 200:
        raise InvalidInputError("--training-set", f"only {len(rows)} rows: too few to train")
    newest = int(rows.times.max())
    span = newest - int(rows.times.min())
    if boundary is None:
        boundary = newest - MS_PER_DAY if span >= 2 * MS_PER_DAY else newest - span // 4
        boundary -= boundary % MS_PER_DAY if span >= 2 * MS_PER_DAY else 0
    order = np.argsort(rows.times, kind="stable")
    train = order[rows.times[order] < boundary]
    test = order[rows.times[order] >= boundary]
    return rows.take(train), rows.take(test), boundary


SAMPLE_SEED = 20_251_203  # one seed for every sample: the same rows for every scorer


def training_from(first_ms: int, to_ms: int, days: int) -> int:
    """Where a default training set starts: a day after the first event (the features'
    warm-up), but at most ``days`` before ``to_ms``, and at least a day before it."""
    return max(min(first_ms + MS_PER_DAY, to_ms - MS_PER_DAY), to_ms - days * MS_PER_DAY)


def cap_rows(rows: Rows, most: int | None) -> Rows:
    """At most ``most`` rows: a uniform sample with :data:`SAMPLE_SEED`, in the rows'
    order; the same rows give the same sample (the backtest relies on it)."""
    if most is None or len(rows) <= most:
        return rows
    chosen = np.random.default_rng(SAMPLE_SEED).choice(len(rows), most, replace=False)
    return rows.take(np.sort(chosen))


def _batches(count: int, size: int, rng: np.random.Generator) -> list[npt.NDArray[np.int64]]:
    order = rng.permutation(count)
    return [order[i : i + size] for i in range(0, count, size)]


def fit(train: Rows, config: ModelConfig, epochs: int = 6, seed: int = 0) -> RankingModel:
    """Train the model (Adam, binary cross-entropy), stopping early on held-back rows.

    The newest tenth of the training rows (by time) is held back; after each epoch the
    model is scored on it and the epoch with the lowest log loss is kept. Without this
    the id embeddings memorise: AUC still rises a little while log loss doubles, and the
    scores stop being click probabilities (which the monitor's expected CTR relies on).
    """
    torch.manual_seed(seed)
    model = RankingModel(config)
    order = np.argsort(train.times, kind="stable")
    held_back = order[int(len(order) * 0.9) :]
    if len(held_back) < 100 or train.labels[held_back].min() == train.labels[held_back].max():
        held_back = order[:0]  # too few to judge by: train every epoch
    fitted = train.take(order[: len(order) - len(held_back)])
    check = train.take(held_back)
    dense, users, items, devices = model_inputs(
        config, fitted.dense, fitted.users, fitted.items, fitted.devices
    )
    model.mean.copy_(dense.mean(dim=0))
    model.scale.copy_(dense.std(dim=0).clamp_min(1e-3))
    labels = torch.from_numpy(fitted.labels.astype(np.float32))
    optimiser = torch.optim.Adam(model.parameters(), lr=4e-3)
    loss_fn = nn.BCELoss()
    rng = np.random.default_rng(seed)
    best: tuple[float, dict[str, torch.Tensor]] | None = None
    for _ in range(epochs):
        model.train()
        for index in _batches(len(fitted), 512, rng):
            pick = torch.from_numpy(index)
            optimiser.zero_grad()
            predicted = model(dense[pick], users[pick], items[pick], devices[pick])
            loss = loss_fn(predicted, labels[pick])
            loss.backward()
            optimiser.step()
        model.eval()
        if not len(check):
            continue
        score = log_loss(check.labels, predict(model, config, check))
        if best is None or score < best[0]:
            best = (score, {k: v.clone() for k, v in model.state_dict().items()})
        elif score > best[0] * 1.05:
            break  # clearly past the best epoch
    if best is not None:
        model.load_state_dict(best[1])
    model.eval()
    return model


def predict(model: Any, config: ModelConfig, rows: Rows) -> FloatArray:
    """Scores of a (fp32 or quantised) model for rows."""
    inputs = model_inputs(config, rows.dense, rows.users, rows.items, rows.devices)
    with torch.no_grad():
        scores: FloatArray = model(*inputs).numpy().astype(np.float64)
    return scores


def logistic_baseline(train: Rows, test: Rows, seed: int = 0) -> FloatArray:
    """A logistic regression on the same 30 features (standardised), trained on train."""
    torch.manual_seed(seed)
    x_train = torch.from_numpy(dense_inputs(train.dense))
    x_test = torch.from_numpy(dense_inputs(test.dense))
    mean, scale = x_train.mean(dim=0), x_train.std(dim=0).clamp_min(1e-3)
    x_train, x_test = (x_train - mean) / scale, (x_test - mean) / scale
    linear = nn.Linear(x_train.shape[1], 1)
    labels = torch.from_numpy(train.labels.astype(np.float32))
    optimiser = torch.optim.LBFGS(linear.parameters(), lr=0.5, max_iter=200)
    loss_fn = nn.BCEWithLogitsLoss()

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        loss = loss_fn(linear(x_train).squeeze(1), labels)
        loss.backward()
        return loss

    optimiser.step(closure)
    with torch.no_grad():
        scores: FloatArray = torch.sigmoid(linear(x_test).squeeze(1)).numpy().astype(np.float64)
    return scores


def latency_ms(
    model: Any, config: ModelConfig, rows: Rows, batch: int = 100, repeats: int = 200
) -> float:
    """Median milliseconds of one forward pass at ``batch`` rows, one thread."""
    sample = rows.take(np.arange(min(batch, len(rows)), dtype=np.int64))
    inputs = model_inputs(config, sample.dense, sample.users, sample.items, sample.devices)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            for _ in range(20):
                model(*inputs)
            timings = []
            for _ in range(repeats):
                started = time.perf_counter()
                model(*inputs)
                timings.append(time.perf_counter() - started)
    finally:
        torch.set_num_threads(threads)
    return float(np.median(timings) * 1000)


# The precision the operating threshold is chosen for: of the items shown (scored at or
# above it), at least this share are clicked on the held-out days.
TARGET_PRECISION = 0.5


def operating_threshold(
    labels: FloatArray, scores: FloatArray, target_precision: float = TARGET_PRECISION
) -> dict[str, float]:
    """The smallest score whose items, on held-out rows, are clicked at least
    ``target_precision`` of the time (the most recall at that precision); with the
    precision and recall it achieves. No score reaching it: the highest score, so the
    threshold shows only the model's surest items."""
    order = np.argsort(-scores, kind="stable")
    ranked, hits = scores[order], np.cumsum(labels[order])
    precision = hits / np.arange(1, len(ranked) + 1)
    reaching = np.flatnonzero(precision >= target_precision)
    cut = int(reaching[-1]) if len(reaching) else 0
    positives = max(float(labels.sum()), 1.0)
    return {
        "min_score": float(ranked[cut]),
        "target_precision": target_precision,
        "precision": float(precision[cut]),
        "recall": float(hits[cut] / positives),
    }


def train_and_evaluate(
    path: Path,
    config: ModelConfig | None = None,
    epochs: int = 6,
    seed: int = 0,
    holdout_from_ms: int | None = None,
    *,
    max_train_rows: int | None = None,
    max_holdout_rows: int | None = None,
) -> tuple[RankingModel, Any, TrainingReport]:
    """Train on a training set; returns the fp32 model, its int8 form and the report.

    Beyond ``max_train_rows`` / ``max_holdout_rows`` each side is a uniform sample
    (:func:`cap_rows`); the report gives both counts.
    """
    started = time.perf_counter()
    config = config or ModelConfig()
    rows = load_rows(path)
    train_all, test_all, boundary = split_by_time(rows, holdout_from_ms)
    train, test = cap_rows(train_all, max_train_rows), cap_rows(test_all, max_holdout_rows)
    if len(test) == 0 or test.labels.min() == test.labels.max():
        raise InvalidInputError("--training-set", "the held-out days need clicks and non-clicks")
    model = fit(train, config, epochs, seed)
    quantised = quantise(model)
    item_ctr = test.dense[:, DENSE_COLUMNS.index("item_ctr_7d")]

    def scores(values: FloatArray) -> Scores:
        return Scores(auc(test.labels, values), log_loss(test.labels, values))

    served = predict(quantised, config, test)  # the threshold is for the model as served
    report = TrainingReport(
        rows_train=len(train),
        rows_holdout=len(test),
        rows_train_available=len(train_all),
        rows_holdout_available=len(test_all),
        holdout_from_ms=boundary,
        positives_holdout=int(test.labels.sum()),
        fp32=scores(predict(model, config, test)),
        int8=scores(served),
        baseline_item_ctr=scores(item_ctr),
        baseline_logistic=scores(logistic_baseline(train, test, seed)),
        latency_ms_batch100={
            "fp32": latency_ms(model, config, test),
            "int8": latency_ms(quantised, config, test),
        },
        threshold=operating_threshold(test.labels, served),
        epochs=epochs,
    )
    report.seconds = round(time.perf_counter() - started, 2)
    return model, quantised, report
