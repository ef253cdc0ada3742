"""Publishing a batch view to Feast's online store."""

from __future__ import annotations

import pandas as pd

from saiki.core.config import SaikiConfig
from saiki.core.forgotten import Forgotten
from saiki.feature_repo.feast_repo import apply, open_store
from saiki.feature_repo.spec import ENTITIES
from saiki.feature_repo.tiles import empty_features
from saiki.feature_repo.views import ViewCatalog, ViewManifest

_NOT_FEATURES = ("event_timestamp", "batch_cutoff_ms")


def publish_batch_view(
    config: SaikiConfig, manifest: ViewManifest, previous: ViewManifest | None
) -> int:
    """Point the batch sources at a view and write its rows to the online store.

    Entities of the previous view that the new one lacks (no events in the longest
    window) are written with the features of an entity without events at the new
    cutoff, so no stale row survives.
    """
    store = open_store(config)
    apply(config, manifest.view_id)  # the batch sources now point at the new view
    catalog = ViewCatalog.open(config)
    empty = empty_features()
    written = 0
    for entity in ENTITIES:
        frame = catalog.read(manifest.view_id, f"{entity.name}_features").to_pandas()
        if previous is not None:
            old = catalog.read(previous.view_id, f"{entity.name}_features").column(entity.key)
            gone = sorted(set(old.to_pylist()) - set(frame[entity.key]))
            if gone and entity.name == "user" and (forgotten := Forgotten.of(config.data_dir)):
                # `saiki forget` removed their rows: no row, not even an empty one.
                gone = [user for user in gone if forgotten.at(user) is None]
            if gone:
                zeros = pd.DataFrame({entity.key: gone})
                for column in frame.columns:
                    if column != entity.key and column not in _NOT_FEATURES:
                        zeros[column] = empty[column]
                zeros["event_timestamp"] = (
                    frame["event_timestamp"].iloc[0]
                    if len(frame)
                    else (pd.Timestamp(manifest.cutoff_ms, unit="ms", tz="UTC"))
                )
                zeros["batch_cutoff_ms"] = manifest.cutoff_ms
                frame = pd.concat([frame, zeros], ignore_index=True)
        if len(frame):
            store.write_to_online_store(f"{entity.name}_batch", frame)
            written += len(frame)
    return written
