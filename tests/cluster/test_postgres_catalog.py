"""The master dataset in cluster mode: its Iceberg catalog on PostgreSQL or on an Iceberg
REST catalog (SeaweedFS), its warehouse on a local path or on S3 object storage
(SeaweedFS): exactly-once loads, time travel, the stock pyiceberg CLI, a Beam batch run
reading the warehouse through the same properties, and two loaders racing on PostgreSQL
without a shared lock."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from saiki.batch.master import MasterDataset
from saiki.core.config import SaikiConfig, load_config
from saiki.core.errors import ComponentError
from saiki.core.eventlog import EventLog
from saiki.core.ingest import SEGMENT_ARROW_SCHEMA, Ingestor
from saiki.core.ingest_files import ingest_files
from saiki.simulator import TrafficSummary, World
from tests.cluster.conftest import ObjectStore
from tests.conftest import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.cluster]


def _config(root: Path, postgres: str, warehouse: Path) -> SaikiConfig:
    return load_config(
        root,
        environ={"SAIKI_CATALOG_URI": postgres, "SAIKI_CATALOG_WAREHOUSE": warehouse.as_uri()},
    )


def _log_ids(config: SaikiConfig) -> list[str]:
    log = EventLog(config.log_dir)
    return [
        event_id
        for _, table in log.events.read_range(0, SEGMENT_ARROW_SCHEMA)
        for event_id in table.column("event_id").to_pylist()
    ]


@pytest.fixture(params=["postgres+local", "postgres+s3", "rest+s3"])
def cluster_catalog(
    request: pytest.FixtureRequest, postgres: str, object_store: ObjectStore, tmp_path: Path
) -> dict[str, str]:
    """The catalog settings of one combination, as environment (one namespace each: the
    servers are shared by the session)."""
    kind = str(request.param)
    namespace = {"SAIKI_CATALOG_NAMESPACE": kind.replace("+", "_")}
    if kind == "postgres+local":
        return {**_environ(postgres, tmp_path / "warehouse"), **namespace}
    properties = {"SAIKI_CATALOG_PROPERTIES": json.dumps(object_store.properties)}
    if kind == "postgres+s3":
        return {
            "SAIKI_CATALOG_URI": postgres,
            "SAIKI_CATALOG_WAREHOUSE": f"s3://{object_store.lake}/{tmp_path.name}",
            **properties,
            **namespace,
        }
    return {
        "SAIKI_CATALOG_TYPE": "rest",
        "SAIKI_CATALOG_URI": object_store.rest_uri,
        "SAIKI_CATALOG_WAREHOUSE": f"s3://{object_store.table_bucket}",
        **properties,
        **namespace,
    }


def test_loads_are_exactly_once_and_time_travel_in_cluster_mode(
    cluster_catalog: dict[str, str],
    traffic: tuple[Path, TrafficSummary, World],
    tmp_path: Path,
) -> None:
    config = load_config(tmp_path / "data", environ=cluster_catalog)
    lines = traffic[0].read_text().splitlines(keepends=True)
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    first.write_text("".join(lines[: len(lines) // 2]))
    second.write_text("".join(lines[len(lines) // 2 :]))
    log = EventLog(config.log_dir)
    master = MasterDataset(config)
    ingest_files(Ingestor(log), [first], workers=1)
    master.load(log)
    early = master.resolve_snapshot()
    ingest_files(Ingestor(log), [second], workers=1)
    master.load(log)
    assert master.load(log)[0].rows == 0  # nothing left: a rerun adds nothing
    late = master.resolve_snapshot()
    assert early is not None and late is not None and early != late
    everything = master.read(late, ("event_id",)).column("event_id").to_pylist()
    assert sorted(everything) == sorted(_log_ids(config)) == sorted(set(everything))
    before = master.read(early, ("event_id",)).column("event_id").to_pylist()
    assert 0 < len(before) < len(everything) and set(before) < set(everything)
    env = {**os.environ, "PYICEBERG_HOME": str(config.data_dir)}
    described = subprocess.run(
        [
            str(Path(sys.executable).parent / "pyiceberg"),
            *("--catalog", "saiki", "describe", f"{config.catalog.namespace}.events"),
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    stock = (config.data_dir / ".pyiceberg.yaml").read_text()
    assert config.catalog_uri in stock and config.warehouse in stock
    assert all(value in stock for value in config.catalog.properties.values())
    assert "event_id" in described and "day" in described
    if config.warehouse.startswith("s3://"):
        # The data files are in the object store, and a Beam batch run reads them with
        # the same properties (passed to its workers).
        from saiki.batch.run import BatchRunRequest, run_batch_view

        location = master.table().metadata_location
        assert location.startswith("s3://"), location
        manifest = run_batch_view(config, BatchRunRequest())
        assert manifest.snapshot_id == late


def test_two_loaders_racing_on_postgres_commit_once(
    postgres: str, traffic: tuple[Path, TrafficSummary, World], tmp_path: Path
) -> None:
    """Two data dirs share the log and the catalog but not the loader's file lock (two
    machines): the second commit against the same table version fails, and nothing is
    doubled."""
    warehouse = tmp_path / "warehouse"
    mine = _config(tmp_path / "a", postgres, warehouse)
    theirs = tmp_path / "b"
    theirs.mkdir()
    ingest_files(Ingestor(EventLog(mine.log_dir)), [traffic[0]], workers=1)
    (theirs / "log").symlink_to(mine.log_dir)
    # The catalog is shared across tests: start this one from its own namespace's table.
    namespace = {"SAIKI_CATALOG_NAMESPACE": "race"}
    mine = load_config(mine.data_dir, environ={**_environ(postgres, warehouse), **namespace})

    def other_machine_loads(table: str, offset: int) -> None:
        if table != "events":
            return
        env = {k: v for k, v in os.environ.items() if not k.startswith("SAIKI_")}
        env.update({**_environ(postgres, warehouse), **namespace})
        subprocess.run(
            [sys.executable, "-m", "saiki.cli.main", "--data-dir", str(theirs), "master", "load"],
            cwd=ROOT,
            env=env,
            check=True,
            capture_output=True,
        )

    racing = MasterDataset(mine, before_commit=other_machine_loads)
    with pytest.raises(ComponentError, match="concurrent load"):
        racing.load(EventLog(mine.log_dir))
    master = MasterDataset(mine)
    master.load(EventLog(mine.log_dir))  # the loser's rerun: nothing new to add
    ids = master.read(master.resolve_snapshot(), ("event_id",)).column("event_id").to_pylist()
    assert sorted(ids) == sorted(_log_ids(mine)) == sorted(set(ids))


def _environ(postgres: str, warehouse: Path) -> dict[str, str]:
    return {"SAIKI_CATALOG_URI": postgres, "SAIKI_CATALOG_WAREHOUSE": warehouse.as_uri()}
