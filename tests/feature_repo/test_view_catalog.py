"""The view catalog, in a data directory and shared by machines ([views] location and
metadata): publish, the current pointer, listing, reading and pruning behave the same;
shared views reach a second machine whole, and a run killed between copying a view out
and listing it publishes nothing."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from saiki.core.config import SaikiConfig, load_config
from saiki.core.errors import ConfigError, NotFoundError
from saiki.feature_repo.views import MANIFEST, ViewCatalog, ViewManifest
from saiki.ops.service_status import service_status


def config_for(data_dir: Path, shared: Path | None) -> SaikiConfig:
    if shared is None:
        return load_config(data_dir, environ={})
    shared.mkdir(parents=True, exist_ok=True)
    return load_config(
        data_dir,
        environ={},
        views={"location": str(shared / "views"), "metadata": f"sqlite:///{shared}/meta.db"},
    )


def publish(catalog: ViewCatalog, n: int, make_current: bool = True) -> ViewManifest:
    """A view whose user_features hold n rows (view n, cutoff n minutes)."""
    view_id = f"bv-{n:013d}-1"
    staging = catalog.stage(view_id)
    (staging / "user_features").mkdir()
    table = pa.table(
        {"user_id": [f"u{i}" for i in range(n)], "clicks_1h": [float(i) for i in range(n)]}
    )
    pq.write_table(table, staging / "user_features" / "part-0.parquet")
    manifest = ViewManifest(
        view_id=view_id,
        snapshot_id=n,
        cutoff_ms=n * 60_000,
        spec_version="spec",
        code_version="code",
        created_ms=n,
        log_next_offset=n,
        speed_start_offset=n,
        events_read=n,
        dead_letters=0,
        entities={"user": n},
    )
    catalog.publish(staging, manifest, make_current=make_current)
    return manifest


@pytest.fixture(params=["data dir", "shared"])
def machines(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[ViewCatalog, ViewCatalog]:
    """The catalog as the batch machine and as a serving machine see it."""
    shared = tmp_path / "shared" if request.param == "shared" else None
    batch = ViewCatalog.open(config_for(tmp_path / "batch", shared))
    serving_dir = tmp_path / ("serving" if shared else "batch")
    return batch, ViewCatalog.open(config_for(serving_dir, shared))


def test_a_published_view_is_current_listed_and_read_whole_by_every_machine(
    machines: tuple[ViewCatalog, ViewCatalog],
) -> None:
    batch, serving = machines
    assert serving.current_id() is None
    first = publish(batch, 3)
    backfill = publish(batch, 4, make_current=False)
    assert serving.current_id() == first.view_id
    assert serving.current() == first
    assert [m.view_id for m in serving.list()] == [first.view_id, backfill.view_id]
    assert serving.read(backfill.view_id, "user_features").column("user_id").to_pylist() == [
        "u0",
        "u1",
        "u2",
        "u3",
    ]
    assert (serving.path(first.view_id) / MANIFEST).exists()
    batch.make_current(backfill.view_id)
    assert serving.current_id() == backfill.view_id
    with pytest.raises(NotFoundError):
        batch.make_current("bv-nope")
    with pytest.raises(NotFoundError):
        serving.manifest("bv-nope")


def test_prune_keeps_the_newest_and_the_current_everywhere(
    machines: tuple[ViewCatalog, ViewCatalog],
) -> None:
    batch, serving = machines
    views = [publish(batch, n) for n in (1, 2, 3)]
    serving.read(views[0].view_id, "user_features")  # this machine holds a copy of it
    assert batch.prune(keep=2) == [views[0].view_id]
    assert [m.view_id for m in serving.list()] == [views[1].view_id, views[2].view_id]
    with pytest.raises(NotFoundError):
        serving.manifest(views[0].view_id)
    serving.read(views[2].view_id, "user_features")  # a fetch drops copies of pruned views
    assert not (serving.root / views[0].view_id).exists()
    if batch.shared is not None:  # gone from object storage too
        assert batch.shared.folder.files(views[0].view_id) == []


def test_shared_views_live_at_their_location_and_feast_points_there(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    catalog = ViewCatalog.open(config_for(tmp_path / "a", shared))
    view = publish(catalog, 2)
    assert catalog.shared is not None
    assert catalog.shared.folder.files(view.view_id) == [MANIFEST, "user_features/part-0.parquet"]
    assert catalog.source_url(view.view_id, "user_features") == (
        f"{shared / 'views'}/{view.view_id}/user_features"
    )
    report = service_status(config_for(tmp_path / "a", shared))
    assert any(f"{view.view_id}" in line and str(shared / "views") in line for line in report.lines)


def test_a_run_killed_between_copying_out_and_listing_publishes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared = tmp_path / "shared"
    batch = ViewCatalog.open(config_for(tmp_path / "batch", shared))
    serving = ViewCatalog.open(config_for(tmp_path / "serving", shared))
    first = publish(batch, 1)
    assert batch.shared is not None

    def killed() -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(batch.shared.document, "locked", killed)
    with pytest.raises(KeyboardInterrupt):
        publish(batch, 2)
    assert serving.current_id() == first.view_id
    assert [m.view_id for m in serving.list()] == [first.view_id]
    with pytest.raises(NotFoundError):
        serving.path("bv-0000000000002-1")


def test_a_location_without_metadata_is_refused(tmp_path: Path) -> None:
    config = load_config(tmp_path, environ={}, views={"location": "s3://bucket/views"})
    with pytest.raises(ConfigError, match=r"\[views\] metadata"):
        ViewCatalog.open(config)
    config = load_config(tmp_path, environ={}, views={"metadata": "sqlite:///x.db"})
    with pytest.raises(ConfigError, match=r"\[views\] location"):
        ViewCatalog.open(config)
