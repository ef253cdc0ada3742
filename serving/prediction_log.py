"""The prediction log's writer: every served ranking as JSON lines, off the response path.

``Predictor`` queues each answer (``PredictionLog.write``: a bounded queue that never
blocks, drops counted); one writer thread per server process renders the records, runs a
staged shadow's forward pass on the same features, and appends them to the process's
hourly file (the format: ``core/prediction_files.py``; docs/predictions.md).
"""

from __future__ import annotations

import logging
import os
import queue
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from saiki.core.prediction_files import ROTATE_MS, VectorBook, encode_values, file_name
from saiki.core.timeutil import now_ms
from saiki.feature_repo.spec import SPEC_VERSION

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prediction:
    """A ranked answer."""

    request_id: str
    model_version: str
    variant: str
    items: list[tuple[str, float]]
    threshold: float = 0.0  # the serving version's operating threshold (0: none)


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
