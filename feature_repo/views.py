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

Shared by machines (``[views] location = "s3://bucket/prefix"``, ``[views] metadata =
"postgresql+psycopg2://..."``): a run still writes and renames its folder locally, then
copies it to ``<location>/<view_id>/`` (``manifest.json`` last) and only then records
the manifest, and which view is current, in one SQL document under its row lock
(object storage has neither rename nor lock). Every machine reads the list and the
pointer from there and keeps a copy of each view it reads in its own ``<data>/views``,
fetched whole into a hidden folder and renamed into place on first use; copies of
pruned views go when the next one is fetched.
"""

from __future__ import annotations

import builtins
import contextlib
import functools
import json
import os
import shutil
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import pyarrow as pa
import pyarrow.parquet as pq

from saiki.core.documents import SqlDocument
from saiki.core.errors import ConfigError, NotFoundError
from saiki.core.files import fsync_path, fsync_tree
from saiki.core.objectstore import ObjectFolder, open_folder

if TYPE_CHECKING:
    from saiki.core.config import SaikiConfig

VIEWS_DIR: Final = "views"
CURRENT: Final = "CURRENT"
MANIFEST: Final = "manifest.json"
_STAGING_PREFIX: Final = ".staging-"
_FETCH_PREFIX: Final = ".fetch-"
VIEWS_TABLE: Final = "saiki_view_catalog"


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


class SharedViews:
    """Views in a folder every machine reaches; their manifests and the current pointer
    in one SQL document (``{"current": id, "views": {id: manifest}}``)."""

    def __init__(self, folder: ObjectFolder, metadata: str) -> None:
        self.folder = folder
        self.document = SqlDocument(
            metadata, VIEWS_TABLE, folder.url, {"current": None, "views": {}}
        )

    def read(self) -> dict[str, Any]:
        return self.document.read()


class ViewCatalog:
    """The published batch views: a folder under the data directory, or shared by
    machines (:class:`SharedViews`, see the module's text)."""

    def __init__(self, data_dir: Path, shared: SharedViews | None = None) -> None:
        self.root = data_dir / VIEWS_DIR
        self.shared = shared

    @classmethod
    def open(cls, config: SaikiConfig) -> ViewCatalog:
        """The catalog ``[views]`` names: the data directory's, or a shared one."""
        location, metadata = config.views.location, config.views.metadata
        if not location:
            if metadata:
                raise ConfigError("[views] metadata is used only with [views] location")
            return cls(config.data_dir)
        if not metadata:
            raise ConfigError(
                "[views] location needs [views] metadata (a SQL URL, e.g. "
                "postgresql+psycopg2://...): shared views need a transactional store for "
                "their manifests and the current pointer"
            )
        properties = tuple(sorted(config.catalog.properties.items()))
        return cls(config.data_dir, _shared_views(location, metadata, properties))

    def path(self, view_id: str) -> Path:
        """The folder of a view (shared views: this machine's copy, fetched on first use)."""
        local = self.root / view_id
        if self.shared is not None and not local.exists():
            self._fetch(self.shared, view_id)
        return local

    def source_url(self, view_id: str, part: str) -> str:
        """Where a part of a view lives for readers on any machine (Feast's batch source)."""
        if self.shared is not None:
            return f"{self.shared.folder.url.rstrip('/')}/{view_id}/{part}"
        return str(self.root / view_id / part)

    def current_id(self) -> str | None:
        """The id of the current view, or None before the first batch run."""
        if self.shared is not None:
            current = self.shared.read()["current"]
            return str(current) if current else None
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
        if self.shared is not None:
            entry = self.shared.read()["views"].get(view_id)
            if entry is None:
                raise NotFoundError(f"no published batch view {view_id!r}")
            return ViewManifest(**entry)
        try:
            return ViewManifest.from_json((self.path(view_id) / MANIFEST).read_text())
        except FileNotFoundError as exc:
            raise NotFoundError(f"no published batch view {view_id!r}") from exc

    def list(self) -> list[ViewManifest]:
        """Every published view, oldest first."""
        if self.shared is not None:
            listed = [ViewManifest(**e) for e in self.shared.read()["views"].values()]
            return sorted(listed, key=lambda m: (m.created_ms, m.view_id))
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
        Shared views are copied out (manifest last) before they are listed: a run killed
        on the way lists nothing.
        """
        (staging / MANIFEST).write_text(manifest.to_json())
        fsync_tree(staging)
        final = self.root / manifest.view_id
        os.rename(staging, final)
        fsync_path(self.root)
        if self.shared is not None:
            self.shared.folder.upload_tree(final, manifest.view_id, last=MANIFEST)
            with self.shared.document.locked():
                catalog = self.shared.read()
                catalog["views"][manifest.view_id] = asdict(manifest)
                if make_current:
                    catalog["current"] = manifest.view_id
                self.shared.document.write(catalog)
        elif make_current:
            self.make_current(manifest.view_id)
        return final

    def make_current(self, view_id: str) -> None:
        """Swap the CURRENT pointer to a published view: the one atomic step."""
        if self.shared is not None:
            with self.shared.document.locked():
                catalog = self.shared.read()
                if view_id not in catalog["views"]:
                    raise NotFoundError(f"no published batch view {view_id!r}")
                catalog["current"] = view_id
                self.shared.document.write(catalog)
            return
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
        if self.shared is not None:
            return self._prune_shared(self.shared, keep)
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

    def _prune_shared(self, shared: SharedViews, keep: int) -> builtins.list[str]:
        with shared.document.locked():
            catalog = shared.read()
            views = sorted(catalog["views"].values(), key=lambda m: (m["created_ms"], m["view_id"]))
            doomed = [
                m["view_id"]
                for m in views[: max(len(views) - keep, 0)]
                if m["view_id"] != catalog["current"]
            ]
            for view_id in doomed:
                del catalog["views"][view_id]
            shared.document.write(catalog)
        for view_id in doomed:  # unlisted first, then removed: no reader finds half of one
            shared.folder.delete_folder(view_id)
        self._drop_copies(set(catalog["views"]))
        return doomed

    def _fetch(self, shared: SharedViews, view_id: str) -> None:
        """Copy a listed view out of the shared folder into ``<data>/views``, whole."""
        listed = shared.read()["views"]
        if view_id not in listed:
            raise NotFoundError(f"no published batch view {view_id!r}")
        self.root.mkdir(parents=True, exist_ok=True)
        fetch = self.root / f"{_FETCH_PREFIX}{view_id}-{os.getpid()}-{threading.get_ident()}"
        shutil.rmtree(fetch, ignore_errors=True)
        try:
            names = shared.folder.download_tree(fetch, view_id)
            if MANIFEST not in names:
                raise NotFoundError(f"batch view {view_id} is listed but not whole at its location")
            try:
                os.rename(fetch, self.root / view_id)
            except OSError:
                if not (self.root / view_id).exists():
                    raise  # anything but another process having fetched it first
        finally:
            shutil.rmtree(fetch, ignore_errors=True)
        self._drop_copies(set(listed))

    def _drop_copies(self, listed: set[str]) -> None:
        """Remove this machine's copies of views no longer listed (pruned elsewhere)."""
        for entry in self.root.iterdir() if self.root.exists() else ():
            if entry.is_dir() and not entry.name.startswith(".") and entry.name not in listed:
                hidden = self.root / f"{_STAGING_PREFIX}{entry.name}"
                with contextlib.suppress(OSError):
                    os.rename(entry, hidden)
                    shutil.rmtree(hidden, ignore_errors=True)

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


@functools.lru_cache(maxsize=8)
def _shared_views(
    location: str, metadata: str, properties: tuple[tuple[str, str], ...]
) -> SharedViews:
    """One connection pool per shared catalog and process."""
    return SharedViews(open_folder(location, dict(properties)), metadata)
