"""feature_repo/ is a real Feast repo: the stock CLI accepts it, and it matches the spec."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from saiki.core.config import SaikiConfig
from saiki.feature_repo.feast_repo import apply, is_applied, open_store
from saiki.feature_repo.layout import REPO_DIR
from saiki.feature_repo.spec import ENTITIES, FEATURE_NAMES
from saiki.feature_repo.views import ViewCatalog
from tests.conftest import make_config

pytestmark = pytest.mark.slow
FEAST = str(Path(sys.executable).parent / "feast")


def feast_cli(data_dir: Path, *argv: str, environ: dict[str, str] | None = None) -> str:
    """The stock ``feast`` CLI in the repo folder, for this data dir (and ``environ``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAIKI_")}
    env["SAIKI_DATA_DIR"] = str(data_dir)
    env.update(environ or {})
    done = subprocess.run(
        [FEAST, *argv],
        cwd=REPO_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_the_stock_feast_cli_applies_lists_and_materialises(
    lambda_env: SaikiConfig, tmp_path: Path
) -> None:
    root = tmp_path / "data"
    shutil.copytree(lambda_env.data_dir, root, ignore=shutil.ignore_patterns("feast"))
    config = make_config(root)
    feast_cli(root, "apply")
    assert not is_applied(config), "saiki has not applied this registry"
    apply(config)
    assert is_applied(config)
    feast_cli(root, "apply")
    assert not is_applied(config), "someone applied since saiki did: check for real"
    listed = feast_cli(root, "feature-views", "list")
    for name in ("user_batch", "item_batch", "user_speed", "item_speed"):
        assert name in listed
    manifest = ViewCatalog(root).current()
    assert manifest is not None
    feast_cli(
        root, "materialize", "2026-11-01T00:00:00", "2026-12-01T00:00:00", "--views", "user_batch"
    )
    store = open_store(make_config(root))
    row = store.get_online_features(
        features=["user_batch:clicks_7d", "user_batch:batch_cutoff_ms"],
        entity_rows=[{"user_id": "u1"}],
    ).to_dict()
    assert row["batch_cutoff_ms"] == [manifest.cutoff_ms]


def test_the_registered_views_are_the_spec(lambda_env: SaikiConfig) -> None:
    store = open_store(lambda_env)
    for entity in ENTITIES:
        batch = store.get_feature_view(f"{entity.name}_batch")
        names = [f.name for f in batch.features]
        assert names == [*FEATURE_NAMES, "batch_cutoff_ms"]
        assert batch.entities == [entity.name]
        speed = store.get_feature_view(f"{entity.name}_speed")
        assert [f.name for f in speed.features] == ["tiles", "tiles_from_ms", "updated_ms"]
    service = store.get_feature_service("ranking")
    assert {p.name for p in service.feature_view_projections} == {
        f"{e.name}_{layer}" for e in ENTITIES for layer in ("batch", "speed")
    }
    view = ViewCatalog(lambda_env.data_dir).current()
    assert view is not None
    assert store.get_feature_view("user_batch").batch_source.path.endswith(
        f"{view.view_id}/user_features"
    )


def test_feast_imports_only_the_definitions() -> None:
    """``feast apply`` imports every module of the repo that .feastignore does not name,
    under another module name than saiki's: only definitions.py may be left to it."""
    ignored = (REPO_DIR / ".feastignore").read_text().split()
    modules = {p.name for p in REPO_DIR.glob("*.py")}
    assert modules - set(ignored) == {"definitions.py"}
