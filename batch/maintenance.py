"""Upkeep of the master dataset's tables: snapshot expiry, file removal, compaction.

The loader commits a snapshot every few minutes; each adds a manifest list, a manifest,
a data file per day touched and a metadata file that lists every snapshot so far, so
without upkeep the table's metadata grows with uptime, and each new metadata file with
it. Three operations keep it bounded, all under the loader's lock:

* :func:`expire_snapshots` removes the snapshots that are older than the retention, not
  the current one and not *pinned* (a published view, a training set or a registered
  model names it: the caller says which), then deletes the files only they reached:
  their manifest lists, manifests no kept snapshot lists, data files no kept manifest
  holds, and metadata files the table no longer logs. A pinned snapshot stays readable
  exactly as it was (its files are never touched).
* :func:`compact` rewrites each day partition holding many small files as one file, in a
  snapshot that replaces them (``overwrite``) and carries the loader's log offset, so
  the exactly-once load resumes unchanged. Older snapshots still read the old files
  until they expire.

pyiceberg 0.8.1 defines the ``remove-snapshots`` table update but cannot apply it to a
table whose catalog commits locally (``SqlCatalog``): :func:`_register_remove_snapshots`
teaches it, following the Iceberg spec (snapshots, their log entries and any branch or
tag on them go; a kept snapshot whose parent went has no parent).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlparse

import pyarrow as pa
from pyiceberg.table import Table, TableProperties
from pyiceberg.table.update import (
    AssertRefSnapshotId,
    AssertTableUUID,
    RemoveSnapshotsUpdate,
    _apply_table_update,
    _TableMetadataUpdateContext,
)

from saiki.core.errors import PreconditionError

# A partition is compacted when it holds at least this many files below the target size.
COMPACT_MIN_FILES: Final = 8
COMPACT_SMALL_BYTES: Final = 64 << 20
# Earlier metadata files a table keeps (pyiceberg's default is 100, each listing every
# snapshot the table then had).
KEEP_METADATA_FILES: Final = 10


@dataclass
class ExpireResult:
    """What one expiry did to one table."""

    table: str
    expired: int = 0
    kept: int = 0
    pinned_kept: int = 0
    files_removed: int = 0
    bytes_removed: int = 0


@dataclass
class CompactResult:
    """What one compaction did to one table."""

    table: str
    partitions: int = 0
    files_before: int = 0
    files_after: int = 0
    rows: int = 0


def expire_snapshots(
    table: Table,
    name: str,
    *,
    older_than_ms: int,
    pinned: Iterable[int],
    keep_metadata: int = KEEP_METADATA_FILES,
) -> ExpireResult:
    """Remove unpinned snapshots older than ``older_than_ms`` (never the current one) and
    the files only they reached; the table keeps ``keep_metadata`` earlier metadata files
    (its ``write.metadata.previous-versions-max``), older ones are deleted."""
    _register_remove_snapshots()
    result = ExpireResult(name)
    current = table.current_snapshot()
    if current is None:
        return result
    pins = set(pinned)
    snapshots = table.snapshots()
    expired = [
        s
        for s in snapshots
        if s.snapshot_id != current.snapshot_id
        and s.snapshot_id not in pins
        and s.timestamp_ms < older_than_ms
    ]
    result.kept = len(snapshots) - len(expired)
    result.pinned_kept = sum(1 for s in snapshots if s.snapshot_id in pins)
    if not expired:
        return result
    before = table.metadata
    old_metadata = {entry.metadata_file for entry in before.metadata_log}
    old_metadata.add(table.metadata_location)
    transaction = table.transaction()
    if before.properties.get(TableProperties.METADATA_PREVIOUS_VERSIONS_MAX) != str(keep_metadata):
        transaction.set_properties(
            {TableProperties.METADATA_PREVIOUS_VERSIONS_MAX: str(keep_metadata)}
        )
    transaction._apply(
        (RemoveSnapshotsUpdate(snapshot_ids=[s.snapshot_id for s in expired]),),
        (
            AssertTableUUID(uuid=before.table_uuid),
            AssertRefSnapshotId(ref="main", snapshot_id=current.snapshot_id),
        ),
    )
    table = transaction.commit_transaction()
    result.expired = len(expired)
    # Only after the commit: what a kept snapshot reaches is never removed.
    kept_files = _reachable(table, table.snapshots(), live_only=True)
    gone = _reachable(table, expired, live_only=False) - kept_files
    still_logged = {entry.metadata_file for entry in table.metadata.metadata_log}
    gone |= old_metadata - still_logged - {table.metadata_location}
    gone |= _unlogged_metadata(table, still_logged)
    for location in sorted(gone):
        size = _delete(table, location)
        if size is not None:
            result.files_removed += 1
            result.bytes_removed += size
    return result


def compact(
    table: Table,
    name: str,
    *,
    carry: dict[str, str],
    write: Callable[[Table, pa.Table], Iterable[Any]],
    min_files: int = COMPACT_MIN_FILES,
    small_bytes: int = COMPACT_SMALL_BYTES,
) -> CompactResult:
    """Rewrite each partition with at least ``min_files`` files under ``small_bytes`` as
    one file per target size, in one ``overwrite`` snapshot whose summary carries
    ``carry`` (the loader's offset). Rows are checked before the commit."""
    result = CompactResult(name)
    current = table.current_snapshot()
    if current is None:
        return result
    groups: dict[Any, list[Any]] = {}
    for task in table.scan(snapshot_id=current.snapshot_id).plan_files():
        data_file = task.file
        if data_file.file_size_in_bytes < small_bytes:
            groups.setdefault(str(data_file.partition), []).append(data_file)
    groups = {k: v for k, v in groups.items() if len(v) >= min_files}
    if not groups:
        return result
    transaction = table.transaction()
    with transaction.update_snapshot(snapshot_properties=carry).overwrite() as rewrite:
        for files in groups.values():
            rows = pa.concat_tables(_read_data_file(table, f) for f in files)
            expected = sum(int(f.record_count) for f in files)
            if rows.num_rows != expected:
                raise PreconditionError(
                    f"compaction of {name} read {rows.num_rows} rows from files that hold "
                    f"{expected}; nothing was committed"
                )
            new_files = list(write(table, rows))
            if sum(int(f.record_count) for f in new_files) != expected:
                raise PreconditionError(f"compaction of {name} wrote a different row count")
            for old in files:
                rewrite.delete_data_file(old)
            for new in new_files:
                rewrite.append_data_file(new)
            result.partitions += 1
            result.files_before += len(files)
            result.files_after += len(new_files)
            result.rows += expected
    transaction.commit_transaction()
    return result


def _read_data_file(table: Table, data_file: Any) -> pa.Table:
    import pyarrow.parquet as pq

    with table.io.new_input(data_file.file_path).open() as handle:
        return pq.read_table(handle)


def _reachable(table: Table, snapshots: Iterable[Any], live_only: bool) -> set[str]:
    """Every manifest list, manifest and data file these snapshots reach; with
    ``live_only``, not the data files their manifests mark deleted (a compaction's)."""
    found: set[str] = set()
    seen_manifests: set[str] = set()
    for snapshot in snapshots:
        found.add(snapshot.manifest_list)
        for manifest in snapshot.manifests(table.io):
            found.add(manifest.manifest_path)
            if manifest.manifest_path in seen_manifests:
                continue
            seen_manifests.add(manifest.manifest_path)
            for entry in manifest.fetch_manifest_entry(table.io, discard_deleted=live_only):
                found.add(entry.data_file.file_path)
    return found


def _unlogged_metadata(table: Table, logged: set[str]) -> set[str]:
    """Metadata files of a local warehouse that the table neither uses nor logs any more
    (pyiceberg trims its metadata log to 100 entries without deleting the files)."""
    folder = _local_path(table.metadata_location)
    if folder is None:
        return set()
    prefix = table.metadata_location[: -len(folder.name)]
    keep = {_local_path(m) for m in logged} | {folder}
    return {
        prefix + entry.name
        for entry in os.scandir(folder.parent)
        if entry.name.endswith(".metadata.json") and Path(entry.path) not in keep
    }


def _local_path(location: str) -> Path | None:
    parsed = urlparse(location)
    if parsed.scheme in ("", "file"):
        return Path(parsed.path)
    return None


def _delete(table: Table, location: str) -> int | None:
    """Delete one file; its size, or None when it was already gone."""
    try:
        size = len(table.io.new_input(location))
        table.io.delete(location)
    except FileNotFoundError:
        return None
    return size


def _register_remove_snapshots() -> None:
    """Teach pyiceberg 0.8.1 to apply ``remove-snapshots`` (newer releases do it)."""
    if RemoveSnapshotsUpdate in _apply_table_update.registry:
        return

    def remove(
        update: RemoveSnapshotsUpdate, base: Any, context: _TableMetadataUpdateContext
    ) -> Any:
        removed = set(update.snapshot_ids)
        known = {s.snapshot_id for s in base.snapshots}
        if missing := removed - known:
            raise ValueError(f"cannot remove unknown snapshots {sorted(missing)}")
        if base.current_snapshot_id in removed:
            raise ValueError("cannot remove the current snapshot")
        snapshots = [
            s.model_copy(update={"parent_snapshot_id": None})
            if s.parent_snapshot_id in removed
            else s
            for s in base.snapshots
            if s.snapshot_id not in removed
        ]
        refs = {n: r for n, r in base.refs.items() if r.snapshot_id not in removed}
        log = [e for e in base.snapshot_log if e.snapshot_id not in removed]
        context.add_update(update)
        return base.model_copy(update={"snapshots": snapshots, "refs": refs, "snapshot_log": log})

    _apply_table_update.register(RemoveSnapshotsUpdate)(remove)
