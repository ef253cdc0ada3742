"""Ranking a user's candidates: merged features → one batched forward pass → sorted scores.

The models in use (production, any A/B variant's version, and the version staged in
shadow) form an immutable
:class:`ModelSet`. When the registry's stages or ``experiment.json`` change, a new set is
loaded beside the old one and swapped in with one assignment: requests in flight finish
on the set they started with, and none fails during the switch. A version whose artifact
fails its checksum is refused and the old set stays.

A version staged in shadow (``saiki models stage V``) never changes an answer: for its
share of requests the prediction log's writer thread scores the same candidates on the
same merged features with it, after the answer is sent, and logs its scores beside
production's (``shadow_version``, ``shadow_scores``, ``shadow_ms``); ``saiki models
compare V`` reads them.

Before any model is in production, candidates are ranked by the item's smoothed CTR
(``ctr_7d``) under the version name ``baseline``, so a fresh system serves sensibly.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import queue
import random
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson
import torch

from saiki.core.errors import InvalidInputError, PreconditionError, SaikiError
from saiki.core.prediction_files import ROTATE_MS, VectorBook, encode_values, file_name
from saiki.core.schema import MAX_ID_CHARS
from saiki.core.timeutil import now_ms
from saiki.feature_repo.spec import FEATURE_NAMES, SPEC_VERSION
from saiki.serving.experiment import FILE as EXPERIMENT_FILE
from saiki.serving.experiment import PRODUCTION_ONLY, Experiment, load_experiment
from saiki.serving.merge import FeatureMerger
from saiki.serving.model import ModelConfig, request_inputs
from saiki.serving.registry import ModelRegistry, Shadow
from saiki.serving.shadow_budget import ShadowBudget

log = logging.getLogger(__name__)
BASELINE = "baseline"
_ITEM_CTR = FEATURE_NAMES.index("ctr_7d")


@dataclass(frozen=True)
class ModelSet:
    """Everything one request needs to pick and run a model, frozen together."""

    experiment: Experiment
    production: int | None
    models: dict[int, tuple[Any, ModelConfig]]
    stamp: tuple[float, float]
    # Each loaded version's operating threshold, from its own metadata: a threshold is
    # never a setting of its own that a new model could inherit unchanged.
    thresholds: dict[int, float] = field(default_factory=dict)
    shadow: Shadow | None = None  # staged in shadow, its model among ``models``

    def model_for(self, user_id: str) -> tuple[str, int | None]:
        """(variant name, version) serving this user; None: the baseline."""
        variant = self.experiment.assign(user_id)
        version = variant.version if variant.version is not None else self.production
        return variant.name, version


@dataclass(frozen=True)
class Prediction:
    """A ranked answer."""

    request_id: str
    model_version: str
    variant: str
    items: list[tuple[str, float]]
    threshold: float = 0.0  # the serving version's operating threshold (0: none)


def validate_predict(
    user_id: str, item_ids: Sequence[str], device_id: str, request_id: str, max_candidates: int
) -> None:
    """Field rules of a Predict request; a broken one raises, naming the field."""
    if not user_id or len(user_id) > MAX_ID_CHARS:
        raise InvalidInputError("user_id", f"required: 1..{MAX_ID_CHARS} characters")
    if not item_ids:
        raise InvalidInputError("item_ids", "at least one candidate is required")
    if len(item_ids) > max_candidates:
        raise InvalidInputError(
            "item_ids", f"{len(item_ids)} candidates; at most {max_candidates} per call"
        )
    for position, item in enumerate(item_ids):
        if not item or len(item) > MAX_ID_CHARS:
            raise InvalidInputError(f"item_ids[{position}]", f"must be 1..{MAX_ID_CHARS} chars")
    if len(device_id) > MAX_ID_CHARS:
        raise InvalidInputError("device_id", f"at most {MAX_ID_CHARS} characters")
    if len(request_id) > MAX_ID_CHARS:
        raise InvalidInputError("request_id", f"at most {MAX_ID_CHARS} characters")


@dataclass(frozen=True)
class _Served:
    """One answer waiting for the log's writer thread."""

    at_ms: int
    user_id: str
    device_id: str
    prediction: Prediction
    candidates: Sequence[str]
    user_features: (
        npt.NDArray[np.float64] | None
    )  # (1, F), or None when this request is not sampled
    item_features: npt.NDArray[np.float64] | None  # (candidates, F), in the candidates' order
    model_ms: float = 0.0  # the serving model's forward pass
    # Each ranked item's row in ``item_features``, when the caller knows them.
    ranked_rows: npt.NDArray[np.intp] | None = None
    # The shadow version's name and a call that scores every candidate with it.
    shadow: tuple[str, Callable[[], npt.NDArray[np.float64]]] | None = None


def _score(
    loaded: tuple[Any, ModelConfig],
    user_values: npt.NDArray[np.float64],
    item_values: npt.NDArray[np.float64],
    *,
    user_id: str,
    item_ids: Sequence[str],
    device_id: str,
) -> npt.NDArray[np.float64]:
    """One forward pass over the candidates: their click probabilities, in their order."""
    model, config = loaded
    count = len(item_ids)
    dense = np.hstack([np.repeat(user_values, count, axis=0), item_values])
    inputs = request_inputs(config, dense, user_id, item_ids, device_id or None)
    with torch.no_grad():  # thread-local: the log's writer thread needs its own
        scores: npt.NDArray[np.float64] = model(*inputs).numpy().astype(np.float64)
    return scores


class PredictionLog:
    """Every served ranking, as JSON lines: what it answered, with the merged feature
    values the model saw (for a share of requests), off the response path.

    ``write`` only queues the answer (a bounded queue: when it is full the answer is
    counted in ``dropped`` and never waits); a writer thread renders and appends the
    records, and notes how many were dropped since its last note as a record
    ``{"time_ms", "dropped"}`` that readers count. One file per process and hour
    (``core/prediction_files.py``): a file is closed once it is an hour old and the next
    record opens a new one. ``saiki monitor`` reads the last hour from the files; ``saiki
    master load`` appends closed files past the monitor's reach to the Iceberg table
    ``saiki.predictions`` and removes them (``batch/predictions.py``)."""

    ROTATE_MS = ROTATE_MS
    QUEUE_MAX = 10_000
    PAUSE_S = 0.05  # the writer drains at most this often (a queue of 10,000 holds 20 s)

    def __init__(
        self,
        folder: Path,
        clock: Callable[[], int] = now_ms,
        features_share: float = 1.0,
        queue_max: int = QUEUE_MAX,
    ) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self._clock = clock
        self.features_share = features_share
        self._queue: queue.Queue[_Served | None] = queue.Queue(maxsize=queue_max)
        self.dropped = 0  # answers refused by a full queue, ever
        self._noted = 0  # of which noted in the log
        self._flushed = time.monotonic()
        self._open()
        self._writer = threading.Thread(target=self._drain, name="prediction-log", daemon=True)
        self._writer.start()

    def _open(self, started_ms: int | None = None) -> None:
        self._book = VectorBook()  # the slots are the file's own
        self._started_ms = self._clock() if started_ms is None else started_ms
        self.path = self.folder / file_name(os.getpid(), self._started_ms)
        self._handle = open(self.path, "ab", buffering=1 << 16)  # noqa: SIM115 (kept open)

    def wants_features(self) -> bool:
        """Whether this request's feature values are logged (``log_features_share``)."""
        share = self.features_share
        return share >= 1.0 or (share > 0.0 and random.random() < share)

    def write(
        self,
        user_id: str,
        prediction: Prediction,
        *,
        device_id: str = "",
        candidates: Sequence[str] = (),
        user_features: npt.NDArray[np.float64] | None = None,
        item_features: npt.NDArray[np.float64] | None = None,
        model_ms: float = 0.0,
        shadow: tuple[str, Callable[[], npt.NDArray[np.float64]]] | None = None,
        at_ms: int | None = None,
        ranked_rows: npt.NDArray[np.intp] | None = None,
    ) -> None:
        """Queue one answer; never blocks (a full queue counts it in ``dropped``).
        ``shadow`` is called on the writer thread, never on the caller's; ``at_ms`` is the
        answer's time (default: now), taken before its features were read; ``ranked_rows``
        each ranked item's position among the candidates (default: looked up by id)."""
        served = _Served(
            self._clock() if at_ms is None else at_ms,
            user_id,
            device_id,
            prediction,
            candidates,
            user_features,
            item_features,
            model_ms,
            ranked_rows,
            shadow,
        )
        try:
            self._queue.put_nowait(served)
        except queue.Full:
            self.dropped += 1  # one writer of this count: the caller threads, under the GIL

    def flush(self) -> None:
        """Wait until every queued answer is written and flushed."""
        self._queue.join()

    def close(self) -> None:
        """Write what is queued, then stop the writer and close the file."""
        self._queue.put(None)
        self._writer.join()
        self._handle.close()

    def _drain(self) -> None:
        while True:
            served = self._queue.get()
            try:
                if served is None:
                    self._note_dropped(self._clock())
                    self._handle.flush()
                    return
                if served.at_ms - self._started_ms >= self.ROTATE_MS or self._book.full:
                    self._handle.close()
                    self._open(served.at_ms)
                self._note_dropped(served.at_ms)
                try:
                    self._handle.write(_render(served, self._book))
                except Exception:
                    # The book may name vectors that were never written: start it afresh
                    # (it writes every vector again before naming it).
                    self._book.forget(self._book.width)
                    raise
                if self._queue.empty() or time.monotonic() - self._flushed > 0.5:
                    self._handle.flush()
                    self._flushed = time.monotonic()
            except Exception:  # a record the log cannot take must not stop the writer
                log.exception("prediction log: a record was not written")
            finally:
                self._queue.task_done()
            if self._queue.empty():
                # Drained: rest before the next batch. Waking on every answer cost the
                # request threads a thread switch and a GIL hand-off each (and sleeping
                # between records, to hand the GIL over sooner, cost more than it gave:
                # +20.6% at 8 in flight against +11.2%, docs/benchmarks.md).
                time.sleep(self.PAUSE_S)

    def _note_dropped(self, at_ms: int) -> None:
        dropped = self.dropped
        if dropped > self._noted:
            self._handle.write(orjson.dumps({"time_ms": at_ms, "dropped": dropped - self._noted}))
            self._handle.write(b"\n")
            self._noted = dropped


def _render(served: _Served, book: VectorBook) -> bytes:
    """One answer as a JSON line: every ranked item with its score and, if sampled, the
    user's feature values (``core/prediction_files.encode_values``; names:
    ``feature_spec``'s, ``feature_width`` of them) and the slot of each ranked item's
    vector, preceded by a line of the vectors the file does not hold yet (``book``)."""
    prediction = served.prediction
    ids, scores = zip(*prediction.items, strict=True) if prediction.items else ((), ())
    record: dict[str, Any] = {
        "time_ms": served.at_ms,
        "request_id": prediction.request_id,
        "user_id": served.user_id,
        "device_id": served.device_id,
        "variant": prediction.variant,
        "model_version": prediction.model_version,
        "items": ids,
        "scores": scores,
        "candidates": len(served.candidates) or len(prediction.items),
        "model_ms": round(served.model_ms, 4),
    }
    rows: Sequence[int] | npt.NDArray[np.intp] = []
    if served.ranked_rows is not None:
        rows = served.ranked_rows
    elif served.item_features is not None or served.shadow is not None:
        position = {item: n for n, item in enumerate(served.candidates)}
        rows = [position[i] for i in ids]  # the ranked order
    if served.shadow is not None:
        name, score = served.shadow
        began = time.perf_counter()
        shadow_scores = score()
        record["shadow_ms"] = round((time.perf_counter() - began) * 1000, 4)
        record["shadow_version"] = name
        record["shadow_scores"] = shadow_scores.take(rows).tolist()  # aligned with ``items``
    vectors = b""
    if served.user_features is not None and served.item_features is not None:
        width = served.user_features.shape[1]
        record["feature_spec"] = SPEC_VERSION
        record["feature_width"] = width
        record["user_features"] = encode_values(served.user_features[0])
        slots, vectors = book.refer(ids, served.item_features.take(rows, axis=0), served.at_ms)
        record["item_slots"] = slots
    return vectors + orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)


class Predictor:
    """Predict's logic, independent of gRPC."""

    def __init__(
        self,
        registry: ModelRegistry,
        merger: FeatureMerger,
        *,
        precision: str = "int8",
        prediction_log: PredictionLog | None = None,
        reload_interval_ms: int = 500,
        clock: Callable[[], int] = now_ms,
        shadow_budget: ShadowBudget | None = None,
    ) -> None:
        torch.set_num_threads(1)  # one core per process: scale out with processes
        self._registry = registry
        self._merger = merger
        self._precision = precision
        self._log = prediction_log
        self._shadow_budget = shadow_budget
        self._reload_ms = reload_interval_ms
        self._clock = clock
        self._checked = clock()
        self._loading = threading.Lock()
        self.last_error: str | None = None
        self.models = ModelSet(PRODUCTION_ONLY, None, {}, (0, 0))
        # A model that cannot be loaded at start leaves the server up, not serving
        # predictions (see ``ready``): exiting would make a supervisor restart it in a loop.
        self._reload()

    def _stamp(self) -> tuple[float, float]:
        try:
            experiment = os.stat(self._registry.root / EXPERIMENT_FILE).st_mtime
        except FileNotFoundError:
            experiment = 0.0
        return self._registry.stamp(), experiment

    def _build(self, current: ModelSet) -> ModelSet:
        stamp = self._stamp()
        experiment = load_experiment(self._registry.root)
        production = self._registry.production()
        wanted = {production} | {v.version for v in experiment.variants}
        models, thresholds = {}, {}
        for version in sorted(v for v in wanted if v is not None):
            models[version] = current.models.get(version) or self._registry.load(
                version, self._precision
            )
            chosen = self._registry.get(version).metrics.get("threshold", {})
            thresholds[version] = float(chosen.get("min_score", 0.0))
        shadow = self._registry.shadow()
        if shadow is not None and shadow.version not in models:
            try:
                models[shadow.version] = current.models.get(shadow.version) or self._registry.load(
                    shadow.version, self._precision
                )
            except (SaikiError, OSError, ValueError) as exc:  # never stops serving
                log.error("shadow model v%s not loaded, not shadowing: %s", shadow.version, exc)
                shadow = None
        return ModelSet(experiment, production, models, stamp, thresholds, shadow)

    def refresh(self, wait: bool = False) -> None:
        """Pick up promotions and experiments (in the background unless ``wait``)."""
        if self._stamp() == self.models.stamp:
            return
        if wait:
            self._reload()
        elif self._loading.acquire(blocking=False):
            threading.Thread(target=self._reload, args=(True,), daemon=True).start()

    @property
    def ready(self) -> bool:
        """True when every model the models in use name is loaded (or none is named yet:
        the item-CTR baseline ranks, as the answers say). A reload that failed keeps the
        models before it, so it leaves this true; ``last_error`` says what failed."""
        models = self.models
        named = {models.production} | {v.version for v in models.experiment.variants}
        return all(v in models.models for v in named if v is not None)

    def _reload(self, release: bool = False) -> None:
        try:
            self.models = self._build(self.models)
            self.last_error = None
        except (SaikiError, OSError, ValueError, KeyError, TypeError) as exc:
            # Keep serving what we have; say why once per change of the files.
            self.last_error = f"{type(exc).__name__}: {exc}"
            production = self.models.production
            if not self.models.models:  # nothing loaded yet: the version that failed is owed
                with contextlib.suppress(SaikiError, OSError, ValueError):
                    production = self._registry.production()
            self.models = ModelSet(
                self.models.experiment,
                production,
                self.models.models,
                self._stamp(),
                self.models.thresholds,
                self.models.shadow,
            )
            log.error("model reload refused, still serving the models loaded before: %s", exc)
        finally:
            if release:
                self._loading.release()

    def _score_shadow(
        self, charge: float, loaded: tuple[Any, ModelConfig], *args: Any, **kwargs: Any
    ) -> npt.NDArray[np.float64]:
        """The shadow's scores (on the log's writer thread), its time charged to the budget."""
        began = time.perf_counter()
        try:
            return _score(loaded, *args, **kwargs)
        finally:
            if self._shadow_budget is not None:
                self._shadow_budget.settle(charge, time.perf_counter() - began)

    def predict(
        self,
        user_id: str,
        item_ids: Sequence[str],
        device_id: str = "",
        request_id: str = "",
        apply_threshold: bool = False,
    ) -> Prediction:
        """Rank candidates by predicted click probability, highest first; with
        ``apply_threshold``, only those at or above the serving version's threshold."""
        now = self._clock()
        if now - self._checked >= self._reload_ms:
            self._checked = now
            self.refresh()
        models = self.models
        variant, version = models.model_for(user_id)
        if version is not None and version not in models.models:
            raise PreconditionError(f"model v{version} is not loaded: {self.last_error}")
        user = self._merger.features("user", [user_id])
        items = self._merger.features("item", list(item_ids))
        loaded = models.models.get(version) if version is not None else None
        began = time.perf_counter()
        if loaded is None:
            scores = items.values[:, _ITEM_CTR]
            name = BASELINE
        else:
            scores = _score(
                loaded,
                user.values,
                items.values,
                user_id=user_id,
                item_ids=item_ids,
                device_id=device_id,
            )
            name = f"v{version}"
        model_ms = (time.perf_counter() - began) * 1000
        order = np.argsort(-scores, kind="stable")
        threshold = models.thresholds.get(version, 0.0) if version is not None else 0.0
        if apply_threshold:
            order = order[scores[order] >= threshold]
        ranked = [(item_ids[i], float(scores[i])) for i in order.tolist()]
        result = Prediction(request_id or uuid.uuid4().hex, name, variant, ranked, threshold)
        if self._log is not None:
            sampled = self._log.wants_features()
            shadow = models.shadow
            shadowed = None
            if shadow is not None and (shadow.share >= 1.0 or random.random() < shadow.share):
                charge = 0.0 if self._shadow_budget is None else self._shadow_budget.admit()
                if charge is not None:
                    shadowed = (
                        shadow.name,
                        functools.partial(
                            self._score_shadow,
                            charge,
                            models.models[shadow.version],
                            user.values,
                            items.values,
                            user_id=user_id,
                            item_ids=item_ids,
                            device_id=device_id,
                        ),
                    )
            self._log.write(
                user_id,
                result,
                device_id=device_id,
                candidates=item_ids,
                user_features=user.values if sampled else None,
                item_features=items.values if sampled else None,
                model_ms=model_ms,
                shadow=shadowed,
                at_ms=now,  # before the features were read: what they are consistent with
                ranked_rows=order,
            )
        return result
