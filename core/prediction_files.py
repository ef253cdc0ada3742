"""Where served rankings are logged: the file convention the server writes by and the
master loader reads by.

Each server process appends to ``<data>/serving/predictions-<pid>-<start ms>.jsonl`` and
opens a new file once the open one is ``ROTATE_MS`` old (at its next record), so no
record is ever written to a file later than ``ROTATE_MS`` after the time in its name.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt

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
