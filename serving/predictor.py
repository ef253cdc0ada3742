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
import random
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from saiki.core.errors import InvalidInputError, PreconditionError, SaikiError
from saiki.core.schema import MAX_ID_CHARS
from saiki.core.timeutil import now_ms
from saiki.feature_repo.spec import FEATURE_NAMES
from saiki.serving.experiment import FILE as EXPERIMENT_FILE
from saiki.serving.experiment import PRODUCTION_ONLY, Experiment, load_experiment
from saiki.serving.merge import FeatureMerger
from saiki.serving.model import ModelConfig, request_inputs
from saiki.serving.prediction_log import Prediction, PredictionLog
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
