"""Published batch views: their on-disk layout and the pointer to the current one.

The batch layer writes a view; Feast registers it as a source; serving and the speed
layer read which view is current and its cutoff T. A view is an immutable folder::

    <data>/views/<view_id>/
        manifest.json             lineage: snapshot, cutoff T, spec and code versions
        user_features/*.parquet   collapsed aggregates as of T (the Feast batch source)
        user_tiles/*.parquet      per-minute tiles over [T - max window, T): the tails
        item_features/…, item_tiles/…
        dead_letter/*.parquet     rows the pipeline refused (should be none)

A run writes its folder under a hidden name, then renames it into place and swaps the
``CURRENT`` file by rename: a killed run publishes nothing, a finished one becomes
current in one atomic step, and readers see either the old view or the new one.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

import pyarrow as pa
import pyarrow.parquet as pq

from saiki.core.errors import NotFoundError
from saiki.core.files import fsync_path, fsync_tree

VIEWS_DIR: Final = "views"
CURRENT: Final = "CURRENT"
MANIFEST: Final = "manifest.json"
_STAGING_PREFIX: Final = ".staging-"


@dataclass(frozen=True)
class ViewManifest:
    """Lineage and shape of one published batch view."""

    view_id: str
    snapshot_id: int | None
    cutoff_ms: int
    spec_version: str
    code_version: str
    created_ms: int
    # The master snapshot holds log offsets below this; the speed layer must read from
    # ``speed_start_offset`` (the first offset of any event at or after the cutoff).
    log_next_offset: int
    speed_start_offset: int
    events_read: int
    dead_letters: int
    entities: dict[str, int] = field(default_factory=dict)
    runner: str = "DirectRunner"
    seconds: float = 0.0

    def to_json(self) -> str:
        """The manifest as JSON text."""
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ViewManifest:
        """Parse a manifest written by :meth:`to_json`."""
        data: dict[str, Any] = json.loads(text)
        return cls(**data)


class ViewCatalog:
    """The folder of published batch views under a data directory."""

    def __init__(self, data_dir: Path) -> None:
        self.root = data_dir / VIEWS_DIR

    def path(self, view_id: str) -> Path:
        """The folder of a view."""
        return self.root / view_id

    def current_id(self) -> str | None:
        """The id of the current view, or None before the first batch run."""
        try:
            return (self.root / CURRENT).read_text().strip() or None
        except FileNotFoundError:
            return None

    def current(self) -> ViewManifest | None:
        """The current view's manifest, or None before the first batch run."""
        view_id = self.current_id()
        return self.manifest(view_id) if view_id else None

    def manifest(self, view_id: str) -> ViewManifest:
        """The manifest of a published view."""
        try:
            return ViewManifest.from_json((self.path(view_id) / MANIFEST).read_text())
        except FileNotFoundError as exc:
            raise NotFoundError(f"no published batch view {view_id!r}") from exc

    def list(self) -> list[ViewManifest]:
        """Every published view, oldest first."""
        if not self.root.exists():
            return []
        found = []
        for p in self.root.iterdir():
            if p.is_dir() and not p.name.startswith("."):
                with contextlib.suppress(NotFoundError):  # pruned while listing
                    found.append(self.manifest(p.name))
        return sorted(found, key=lambda m: (m.created_ms, m.view_id))

    def new_view_id(self) -> str:
        """A fresh, sortable id: ``bv-<created ms>-<pid>``."""
        return f"bv-{time.time_ns() // 1_000_000:013d}-{os.getpid()}"

    def stage(self, view_id: str) -> Path:
        """A hidden folder to write a view into before it is published."""
        staging = self.root / f"{_STAGING_PREFIX}{view_id}"
        if staging.exists():
            shutil.rmtree(staging)
        staging.mkdir(parents=True)
        return staging

    def publish(self, staging: Path, manifest: ViewManifest, make_current: bool = True) -> Path:
        """Write the manifest, move the staged folder into place, then make it current.

        Backfills publish with ``make_current=False``: the view is listed, not served.
        """
        (staging / MANIFEST).write_text(manifest.to_json())
        fsync_tree(staging)
        final = self.path(manifest.view_id)
        os.rename(staging, final)
        fsync_path(self.root)
        if make_current:
            self.make_current(manifest.view_id)
        return final

    def make_current(self, view_id: str) -> None:
        """Swap the CURRENT pointer to a published view: the one atomic step."""
        self.manifest(view_id)  # refuses an unknown view
        pointer = self.root / f".{CURRENT}.{os.getpid()}"
        pointer.write_text(view_id + "\n")
        fsync_path(pointer)
        os.rename(pointer, self.root / CURRENT)
        fsync_path(self.root)

    def prune(self, keep: int) -> builtins.list[str]:
        """Remove published views beyond the newest ``keep`` (the current one always
        stays); returns the removed ids. Called after a handoff, so a server still on the
        previous view (``keep`` is at least two) finds it whole."""
        current = self.current_id()
        views = self.list()
        doomed = [m.view_id for m in views[: max(len(views) - keep, 0)] if m.view_id != current]
        for view_id in doomed:
            # Hidden first (one rename), so no reader lists a half-removed view.
            hidden = self.root / f"{_STAGING_PREFIX}{view_id}"
            os.rename(self.path(view_id), hidden)
            shutil.rmtree(hidden, ignore_errors=True)
        if doomed:
            fsync_path(self.root)
        return doomed

    def sweep_staging(self) -> int:
        """Remove folders of runs that died before publishing."""
        if not self.root.exists():
            return 0
        removed = 0
        for entry in self.root.iterdir():
            if entry.name.startswith(_STAGING_PREFIX):
                shutil.rmtree(entry, ignore_errors=True)
                removed += 1
        return removed

    def read(self, view_id: str, part: str) -> pa.Table:
        """One part of a view (``user_features``, ``item_tiles``, …) as one table."""
        folder = self.path(view_id) / part
        files = sorted(folder.glob("*.parquet")) if folder.exists() else []
        if not files:
            raise NotFoundError(f"batch view {view_id} has no {part}")
        return pa.concat_tables(pq.read_table(f) for f in files)
