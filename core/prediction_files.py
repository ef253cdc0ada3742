"""Where served rankings are logged: the file convention the server writes by and the
master loader reads by.

Each server process appends to ``<data>/serving/predictions-<pid>-<start ms>.jsonl`` and
opens a new file once the open one is ``ROTATE_MS`` old (at its next record), so no
record is ever written to a file later than ``ROTATE_MS`` after the time in its name.

Three kinds of line: an answer (``request_id``, ``items``, ``scores``, …, and for a
sampled share the user's feature values and each ranked item's); a note of answers not
logged (``dropped``); and item vectors (``vectors``, ``vector_slots``). An item's feature
vector is written once per file and again only when it changes: a vector line puts
vectors in numbered slots, and an answer names, for each ranked item, the slot holding
the vector it was served with (``item_slots``). A reader keeps the slots as it reads the
file in order (:func:`read_records`), so it must read a file from its first line.
Vector lines hold no user data: removing an answer line (``saiki forget``) never breaks
a later one.
"""

from __future__ import annotations

import base64
import itertools
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import orjson

ROTATE_MS: Final = 3_600_000
PATTERN: Final = "predictions-*-*.jsonl"


def file_name(pid: int, started_ms: int) -> str:
    """The name of the file a process opens at ``started_ms``."""
    return f"predictions-{pid}-{started_ms}.jsonl"


def started_ms(path: Path) -> int | None:
    """The start time in a log file's name; None for a name not of the convention."""
    tail = path.stem.rsplit("-", 1)[-1]
    return int(tail) if path.name.startswith("predictions-") and tail.isdigit() else None


def closed_before(folder: Path, cutoff_ms: int) -> list[Path]:
    """The files no process can write to any more whose last record is before
    ``cutoff_ms`` (started at least ``ROTATE_MS`` before it), oldest first."""
    found = []
    for path in folder.glob(PATTERN):
        start = started_ms(path)
        if start is not None and start + ROTATE_MS <= cutoff_ms:
            found.append((start, path))
    return [path for _, path in sorted(found)]


def encode_values(values: npt.NDArray[np.float64]) -> str:
    """Feature values as the log keeps them: float64 little-endian bytes in base64 (exact,
    and a tenth of the time of writing 3,000 floats as JSON numbers)."""
    return base64.b64encode(np.ascontiguousarray(values, dtype="<f8").tobytes()).decode("ascii")


def decode_values(text: str, width: int) -> list[list[float]]:
    """The rows of ``width`` values that :func:`encode_values` wrote."""
    flat = np.frombuffer(base64.b64decode(text), dtype="<f8")
    rows: list[list[float]] = flat.reshape(-1, width).tolist()
    return rows


class VectorBook:
    """The writer's side of the item vectors: the slot of each item logged in the open file
    and the vector that slot holds. ``refer`` answers the slots of one answer's ranked items
    and, when some are new or changed, the vector line that must be written before it.
    Bounded: ``full`` once ``capacity`` items hold a slot (the writer then opens a new
    file). Vectors are compared bit for bit, so a NaN or a -0.0 is logged as it was served."""

    CAPACITY: Final = 50_000

    def __init__(self, capacity: int | None = None) -> None:
        self.capacity = capacity or self.CAPACITY
        self.written = 0  # vectors written to the file
        self.referred = 0  # vectors named by an answer
        self.forget(0)

    def forget(self, width: int) -> None:
        """Start afresh (vectors of ``width`` values): every vector is written again before
        an answer names it, so a reader holding older slots is never misled."""
        self.width = width
        self._slots: dict[str, int] = {}
        self._bits = np.zeros((min(self.capacity, 1024), width), dtype=np.uint64)

    @property
    def full(self) -> bool:
        return len(self._slots) >= self.capacity

    def refer(
        self, ids: Sequence[str], rows: npt.NDArray[np.float64], at_ms: int
    ) -> tuple[list[int], bytes]:
        """The slot of each id's row (``rows`` in the ids' order), and the vector line to
        write first (empty when every row is already in its slot)."""
        rows = np.ascontiguousarray(rows, dtype="<f8")
        if rows.shape[1] != self.width:
            self.forget(rows.shape[1])
        bits = rows.view(np.uint64)
        slots = self._slots
        named = list(map(slots.get, ids, itertools.repeat(-1)))
        self.referred += len(named)
        if -1 not in named and self._bits.take(named, axis=0).tobytes() == bits.tobytes():
            return named, b""  # the common case: every vector already in its slot
        known = np.array(named, dtype=np.int64)
        need = known < 0
        held = np.flatnonzero(~need)
        if held.size:
            need[held] = (self._bits[known[held]] != bits[held]).any(axis=1)
        fresh = np.flatnonzero(need)
        for n in fresh.tolist():
            if known[n] < 0:
                slot = slots.setdefault(ids[n], len(slots))  # an id twice: one slot
                known[n] = slot
        top = int(known.max()) + 1
        if top > len(self._bits):
            grown = np.zeros((max(top, 2 * len(self._bits)), self.width), dtype=np.uint64)
            grown[: len(self._bits)] = self._bits
            self._bits = grown
        self._bits[known[fresh]] = bits[fresh]
        self.written += len(fresh)
        line = orjson.dumps(
            {
                "time_ms": at_ms,
                "feature_width": self.width,
                "vector_slots": known[fresh].tolist(),
                "vectors": encode_values(rows[fresh]),
            },
            option=orjson.OPT_APPEND_NEWLINE,
        )
        return known.tolist(), line


def read_records(path: Path) -> Iterator[tuple[int, dict[str, Any] | None]]:
    """Each line of a log file with its number: an answer with its feature values decoded
    (``user_features`` a list, ``item_features`` a list per ranked item, both absent when
    the answer was not sampled), or a ``dropped`` note; None for a torn last line (a
    server killed while writing it). Vector lines are applied, not yielded."""
    vectors: dict[int, list[float]] = {}
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.endswith(b"\n"):
                yield number, None
                continue
            record: dict[str, Any] = orjson.loads(line)
            if "vectors" in record:
                rows = decode_values(record["vectors"], int(record["feature_width"]))
                vectors.update(zip(record["vector_slots"], rows, strict=True))
                continue
            width = int(record.get("feature_width", 0))
            if isinstance(user := record.get("user_features"), str):
                record["user_features"] = decode_values(user, width)[0]
            if "item_slots" in record:
                record["item_features"] = [vectors[s] for s in record.pop("item_slots")]
            elif isinstance(items := record.get("item_features"), str):  # written before slots
                record["item_features"] = decode_values(items, width)
            yield number, record
