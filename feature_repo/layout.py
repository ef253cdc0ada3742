"""Where Feast's files live under the data directory, and the seed sources.

Kept free of any ``feast`` import, so that serving and speed can ask for paths cheaply.
Before the first batch run there is no view to point the batch sources at; an empty
Parquet file with the right schema (a *seed*) stands in, so that the stock ``feast``
CLI accepts the repo from the start.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from saiki.feature_repo.spec import ENTITY_BY_NAME, FEATURE_NAMES
from saiki.feature_repo.views import ViewCatalog

REPO_DIR = Path(__file__).resolve().parent


def feast_dir(data_dir: Path) -> Path:
    """Registry, online store and seeds: ``<data>/feast``."""
    return data_dir / "feast"


def online_store_path(data_dir: Path) -> Path:
    """The SQLite online store of the embedded mode."""
    return feast_dir(data_dir) / "online_store.db"


def registry_path(data_dir: Path) -> Path:
    """The registry file of the embedded mode."""
    return feast_dir(data_dir) / "registry.db"


def batch_source_schema(entity: str) -> pa.Schema:
    """Columns of a view's ``{entity}_features`` part (the Feast batch source)."""
    return pa.schema(
        [pa.field(ENTITY_BY_NAME[entity].key, pa.string())]
        + [pa.field(name, pa.float64()) for name in FEATURE_NAMES]
        + [
            pa.field("event_timestamp", pa.timestamp("us", tz="UTC")),
            pa.field("batch_cutoff_ms", pa.int64()),
        ]
    )


def speed_source_schema(entity: str) -> pa.Schema:
    """Columns of the (empty) offline twin of a speed push source."""
    return pa.schema(
        [
            pa.field(ENTITY_BY_NAME[entity].key, pa.string()),
            pa.field("tiles", pa.binary()),
            pa.field("tiles_from_ms", pa.int64()),
            pa.field("updated_ms", pa.int64()),
            pa.field("event_timestamp", pa.timestamp("us", tz="UTC")),
        ]
    )


def _seed(path: Path, schema: pa.Schema) -> Path:
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(schema.empty_table(), path)
    return path


def batch_source_path(
    catalog: ViewCatalog, data_dir: Path, entity: str, view_id: str | None
) -> str:
    """Where a view's ``{entity}_features`` live (default: the current view's; shared
    views: their object-storage URL), or the seed before any view exists."""
    current = view_id or catalog.current_id()
    if current is not None:
        return catalog.source_url(current, f"{entity}_features")
    seed = feast_dir(data_dir) / "seed" / f"{entity}_features.parquet"
    return str(_seed(seed, batch_source_schema(entity)))


def speed_source_path(data_dir: Path, entity: str) -> Path:
    """The offline twin of a speed push source (empty: speed rows live online only)."""
    return _seed(
        feast_dir(data_dir) / "seed" / f"{entity}_speed.parquet", speed_source_schema(entity)
    )
