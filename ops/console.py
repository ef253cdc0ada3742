"""Progress bars and tables for the console (stderr bars, stdout results)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from tqdm import tqdm


@contextmanager
def progress_bar(total: int | None, unit: str, description: str) -> Iterator[Callable[[int], None]]:
    """A tqdm bar on stderr; yields the function that advances it."""
    bar = tqdm(
        total=total,
        unit=unit,
        unit_scale=True,
        desc=description,
        file=sys.stderr,
        dynamic_ncols=True,
        disable=None,  # off when stderr is not a terminal (CI logs stay readable)
    )

    def advance(count: int) -> None:
        bar.update(count)

    try:
        yield advance
    finally:
        bar.close()


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Print rows as an aligned plain-text table."""
    text = [[str(cell) for cell in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in text:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for row in text:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
