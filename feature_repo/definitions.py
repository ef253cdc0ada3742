"""saiki's Feast objects, generated from the one feature spec (feature_repo/spec.py).

``feast apply`` reads this file (the other modules are in .feastignore). Nothing here is
written by hand per feature: the batch views' fields are the spec's FEATURE_NAMES, so the
two cannot drift (tests/feature_repo/test_feast_repo.py proves it against the registry).

* entities ``user`` (user_id) and ``item`` (item_id)
* ``user_batch`` / ``item_batch``: batch feature views over the current published batch
  view (collapsed windows at its cutoff T, tagged with ``batch_cutoff_ms``)
* ``user_speed_push`` / ``item_speed_push``: push sources the speed layer writes through,
  and ``user_speed`` / ``item_speed``: each entity's per-minute tiles after the cutoff,
  packed (see feature_repo/online.py)
* the ``ranking`` feature service: everything the model is served
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Any

from feast import Entity, FeatureService, FeatureView, Field, FileSource, PushSource, ValueType
from feast.types import Bytes, Float64, Int64

from saiki.core.config import SaikiConfig, load_config
from saiki.feature_repo.layout import batch_source_path, speed_source_path
from saiki.feature_repo.spec import ENTITIES, FEATURE_NAMES
from saiki.feature_repo.views import ViewCatalog

SPEED_FIELDS = (
    Field(name="tiles", dtype=Bytes),
    Field(name="tiles_from_ms", dtype=Int64),
    Field(name="updated_ms", dtype=Int64),
)


def build(config: SaikiConfig, view_id: str | None = None) -> dict[str, Any]:
    """Every Feast object of the repo for a configuration, by name; the batch sources
    point at ``view_id`` (default: the current view)."""
    data_dir = config.data_dir
    catalog = ViewCatalog.open(config)
    # Views on object storage: Feast's file offline store reaches them at the catalog's
    # S3 endpoint (saiki itself never reads them through Feast).
    endpoint = config.catalog.properties.get("s3.endpoint") if catalog.shared else None
    objects: dict[str, Any] = {}
    for spec in ENTITIES:
        entity = Entity(
            name=spec.name,
            join_keys=[spec.key],
            value_type=ValueType.STRING,
            description=f"keyed by {spec.key} of the event",
        )
        batch_source = FileSource(
            name=f"{spec.name}_batch_view",
            path=batch_source_path(catalog, data_dir, spec.name, view_id),
            timestamp_field="event_timestamp",
            s3_endpoint_override=endpoint or None,
            description="the current published batch view of saiki's batch layer",
        )
        batch_view = FeatureView(
            name=f"{spec.name}_batch",
            entities=[entity],
            ttl=timedelta(0),  # no expiry: serving checks cutoffs itself
            schema=[Field(name=name, dtype=Float64) for name in FEATURE_NAMES]
            + [Field(name="batch_cutoff_ms", dtype=Int64)],
            source=batch_source,
            online=True,
            tags={"layer": "batch", "window_semantics": "floor_minute(q - W) <= t < q"},
        )
        push = PushSource(
            name=f"{spec.name}_speed_push",
            batch_source=FileSource(
                name=f"{spec.name}_speed_log",
                path=str(speed_source_path(data_dir, spec.name)),
                timestamp_field="event_timestamp",
            ),
        )
        speed_view = FeatureView(
            name=f"{spec.name}_speed",
            entities=[entity],
            ttl=timedelta(0),
            schema=list(SPEED_FIELDS),
            source=push,
            online=True,
            tags={"layer": "speed", "packing": "int64 rows of (minute, *aggregations)"},
        )
        objects.update(
            {
                spec.name: entity,
                batch_view.name: batch_view,
                push.name: push,
                speed_view.name: speed_view,
            }
        )
    objects["ranking"] = FeatureService(
        name="ranking",
        features=[objects[f"{e.name}_{layer}"] for layer in ("batch", "speed") for e in ENTITIES],
        description="what the ranking model is served: batch windows plus speed tiles",
    )
    return objects


# `feast apply` collects module-level objects: bind each under its name.
globals().update(
    build(
        load_config(
            os.environ.get("SAIKI_DATA_DIR") or Path(__file__).resolve().parent.parent / ".saiki"
        )
    )
)
