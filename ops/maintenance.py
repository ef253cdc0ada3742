"""``saiki master maintain``: keep the master dataset's metadata bounded.

First removes training sets (``<data>/training/``, one per retrain) older than
``[schedule] snapshot_retention`` that no version in production, in shadow or next in
line for a rollback names: derived data, which each registered version's lineage can
rebuild exactly, since that lineage keeps pinning its snapshot. Then gathers what pins a
snapshot (published views, training sets on disk, every registered model's lineage)
and, for each master table under the loader's lock: compacts partitions of many small
files and expires unpinned snapshots older than the retention, removing the files only
they reached (``batch/maintenance.py``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from saiki.batch.maintenance import CompactResult, ExpireResult, compact, expire_snapshots
from saiki.batch.master import MasterDataset, data_files_by_day, loader_summary
from saiki.batch.predictions import PREDICTIONS_TABLE
from saiki.batch.tables import EVENTS_TABLE, QUARANTINE_TABLE
from saiki.batch.training import read_lineage
from saiki.core.config import SaikiConfig
from saiki.core.errors import SaikiError
from saiki.core.timeutil import parse_duration
from saiki.feature_repo.views import ViewCatalog
from saiki.serving.registry import ModelRegistry


@dataclass
class MaintainResult:
    """What one run did, per table."""

    pinned: set[int] = field(default_factory=set)
    compacted: list[CompactResult] = field(default_factory=list)
    expired: list[ExpireResult] = field(default_factory=list)
    training_sets_removed: list[str] = field(default_factory=list)


def stale_training_sets(
    sets: Iterable[tuple[Path, float]], in_use: set[str], older_than_ms: int
) -> list[Path]:
    """Of ``(path, modified ms)``, those modified before ``older_than_ms`` whose file name
    is not in ``in_use`` (names, so a data directory that moved keeps its sets)."""
    return [path for path, modified in sets if modified < older_than_ms and path.name not in in_use]


def _training_sets_in_use(config: SaikiConfig) -> set[str]:
    """The file names of the training sets of the versions in production, in shadow and
    next for rollback."""
    registry = ModelRegistry.open(config)
    shadow = registry.shadow()
    live = (registry.production(), registry.previous(), shadow.version if shadow else None)
    named = set()
    for version in {v for v in live if v is not None}:
        path = registry.get(version).lineage.get("training_set")
        if isinstance(path, str):
            named.add(Path(path).name)
    return named


def remove_training_sets(config: SaikiConfig, older_than_ms: int) -> list[str]:
    """Remove the stale training sets (:func:`stale_training_sets`); their names."""
    folder = config.data_dir / "training"
    sets = []
    for path in sorted(folder.glob("set-*.parquet")):
        try:
            sets.append((path, path.stat().st_mtime * 1000))
        except FileNotFoundError:
            continue
    removed = []
    for path in stale_training_sets(sets, _training_sets_in_use(config), older_than_ms):
        path.unlink(missing_ok=True)
        removed.append(path.name)
    return removed


def pinned_snapshots(config: SaikiConfig) -> set[int]:
    """Snapshots something still names: a published view, a training set, a model."""
    return set(pin_reasons(config))


def pin_reasons(config: SaikiConfig) -> dict[int, list[str]]:
    """Each pinned snapshot with what pins it (``view …``, ``training set …``, ``model v3``)."""
    pins: dict[int, list[str]] = {}
    for view in ViewCatalog.open(config).list():
        if view.snapshot_id is not None:
            pins.setdefault(int(view.snapshot_id), []).append(f"view {view.view_id}")
    for path in sorted((config.data_dir / "training").glob("*.parquet")):
        try:
            snapshot = read_lineage(path).snapshot_id
        except (SaikiError, OSError, ValueError):
            continue  # not a training set saiki wrote: it pins nothing
        if snapshot is not None:
            pins.setdefault(int(snapshot), []).append(f"training set {path.name}")
    for version in ModelRegistry.open(config).versions():
        pinned = version.lineage.get("snapshot_id")
        if isinstance(pinned, int):
            pins.setdefault(pinned, []).append(f"model {version.name}")
    return pins


def maintain(config: SaikiConfig, now_ms: int) -> MaintainResult:
    """Compact, then expire, every master table."""
    retention = parse_duration(config.schedule.snapshot_retention, "schedule.snapshot_retention")
    master = MasterDataset(config)
    removed = remove_training_sets(config, now_ms - retention)
    result = MaintainResult(pinned=pinned_snapshots(config), training_sets_removed=removed)
    with master.loader_lock():
        for name in (EVENTS_TABLE, QUARANTINE_TABLE, PREDICTIONS_TABLE):
            table = master.table(name)
            carry = loader_summary(table)
            result.compacted.append(compact(table, name, carry=carry, write=data_files_by_day))
            result.expired.append(
                expire_snapshots(
                    master.table(name),
                    name,
                    older_than_ms=now_ms - retention,
                    pinned=result.pinned,
                )
            )
    return result


def describe(result: MaintainResult) -> list[str]:
    """One line per table and operation."""
    lines = [
        f"removed {len(result.training_sets_removed)} training set(s) no live model uses",
        f"{len(result.pinned)} snapshot(s) pinned by views, training sets and models",
    ]
    for c in result.compacted:
        lines.append(
            f"saiki.{c.table}: compacted {c.partitions} partition(s), "
            f"{c.files_before} files → {c.files_after} ({c.rows:,} rows)"
        )
    for e in result.expired:
        lines.append(
            f"saiki.{e.table}: expired {e.expired} snapshot(s), kept {e.kept} "
            f"({e.pinned_kept} pinned); removed {e.files_removed} file(s), "
            f"{e.bytes_removed / 1e6:.1f} MB"
        )
    return lines
