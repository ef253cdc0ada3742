"""The lambda merge's exactness on the whole cluster configuration: the master dataset
in a PostgreSQL catalog with its warehouse on S3 (SeaweedFS), the batch view computed by
Beam from there and published to S3 with its manifest and the current pointer in
PostgreSQL, the Feast registry in PostgreSQL, the speed job on the Flink session cluster
writing to Redis, two serving replicas with data directories of their own — every value
served by either equals the independent recomputation, at the batch cutoff and again
after a handoff to a later view."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from saiki.core.config import SaikiConfig
from saiki.core.timeutil import format_iso
from saiki.feature_repo.views import ViewCatalog
from saiki.v1 import features_pb2, features_pb2_grpc
from tests.cluster.conftest import FlinkCluster, ObjectStore, _free_port
from tests.cluster.test_replicas import _serve, _wait_serving
from tests.conftest import END_MS, LAMBDA_CUTOFF_MS, online_store_config, run_saiki
from tests.oracle import master_events, window_features
from tests.serving.test_get_features import sample_ids, served_truth, stamp

pytestmark = [pytest.mark.slow, pytest.mark.cluster]
HOUR = 3_600_000


def _served(
    ports: list[int], entity: str, ids: list[str], as_of: int, cutoff_ms: int
) -> list[dict]:
    """Each replica's answer (one dict per id), checked to be the same on both and to
    come from the view at ``cutoff_ms``."""
    import grpc

    answers = []
    for port in ports:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = features_pb2_grpc.FeatureServiceStub(channel)
            reply = stub.GetFeatures(
                features_pb2.GetFeaturesRequest(entity=entity, ids=ids, as_of=stamp(as_of)),
                timeout=10,
            )
            assert [e.id for e in reply.entities] == ids
            assert reply.batch_cutoff.ToMilliseconds() == cutoff_ms, port
            answers.append([dict(e.values) for e in reply.entities])
    assert answers[0] == answers[1]
    return answers[0]


def test_served_values_equal_the_recomputation_on_the_cluster_stores_across_a_handoff(
    lambda_env: SaikiConfig,
    flink_cluster: FlinkCluster,
    request: pytest.FixtureRequest,
    tmp_path: Path,
) -> None:
    postgres: str = request.getfixturevalue("postgres")
    object_store: ObjectStore = request.getfixturevalue("object_store")
    redis_server: str = request.getfixturevalue("redis_server")
    root = tmp_path / "data"
    # The event log only: the master dataset, the views and the speed rows are rebuilt
    # on the cluster's stores.
    shutil.copytree(lambda_env.data_dir / "log", root / "log")
    properties = "\n".join(f'"{k}" = "{v}"' for k, v in object_store.properties.items())
    registry = postgres.replace("postgresql+psycopg2://", "postgresql+psycopg://", 1)
    config = online_store_config(
        root,
        "redis",
        redis_server,
        f'registry = "{registry}"\n'
        f'[catalog]\nuri = "{postgres}"\nnamespace = "lambda_cluster"\n'
        f'warehouse = "s3://{object_store.lake}/lambda-cluster"\n'
        f"[catalog.properties]\n{properties}\n"
        f'[views]\nlocation = "s3://{object_store.lake}/lambda-cluster/views"\n'
        f'metadata = "{postgres}"\n'
        f'[speed]\njobmanager = "{flink_cluster.address}"\n',
    )
    assert json.loads(json.dumps(config.catalog.properties)) == object_store.properties
    run_saiki(config, "master", "load")
    run_saiki(config, "batch", "run", "--as-of", format_iso(LAMBDA_CUTOFF_MS), timeout=600)
    run_saiki(config, "speed", "run", "--until-idle", "--fresh", timeout=400)
    views = ViewCatalog.open(config)
    first = views.current()
    assert views.shared is not None and first is not None
    assert "manifest.json" in views.shared.folder.files(first.view_id)  # on S3

    # Each replica has a data directory of its own: only saiki.toml in it. The view
    # comes from S3, which one is current from PostgreSQL.
    replica_dirs = [tmp_path / f"replica-{n}" for n in range(2)]
    for replica in replica_dirs:
        replica.mkdir()
        shutil.copy(root / "saiki.toml", replica / "saiki.toml")
    ports = [(_free_port(), _free_port()) for _ in range(2)]
    servers = [
        _serve(replica, port, metrics)
        for replica, (port, metrics) in zip(replica_dirs, ports, strict=True)
    ]
    try:
        for port, _ in ports:
            _wait_serving(port)
        grpc_ports = [port for port, _ in ports]
        # The truth comes from the lambda environment's own (local) master dataset: the
        # same events, read with no cluster code.
        truth = served_truth(lambda_env, LAMBDA_CUTOFF_MS)
        rng = np.random.default_rng(9)
        for entity, key in (("user", "user_id"), ("item", "item_id")):
            ids = sample_ids(truth, key, 15)
            for _ in range(3):
                as_of = LAMBDA_CUTOFF_MS + int(rng.integers(0, 40 * HOUR))
                q = -(-as_of // 60_000) * 60_000
                for entity_id, values in zip(
                    ids, _served(grpc_ports, entity, ids, as_of, LAMBDA_CUTOFF_MS), strict=True
                ):
                    expected = window_features(truth, key, entity_id, q)
                    assert values == pytest.approx(expected, rel=1e-12), (entity_id, q)

        # The handoff: a view at the end of the traffic, the speed job started afresh
        # from its cutoff; both replicas switch and serve every event, late ones healed.
        run_saiki(config, "batch", "run", "--as-of", format_iso(END_MS), timeout=600)
        run_saiki(config, "speed", "run", "--until-idle", "--fresh", timeout=400)
        everything = master_events(lambda_env)
        ids = sample_ids(everything, "item_id", 20)
        q = END_MS + HOUR
        deadline = time.monotonic() + 20  # each loads the new view in the background
        while True:
            try:
                _served(grpc_ports, "item", ids[:1], q, END_MS)
                break
            except AssertionError:
                assert time.monotonic() < deadline, "a replica kept the old view"
                time.sleep(0.5)
        for entity_id, values in zip(ids, _served(grpc_ports, "item", ids, q, END_MS), strict=True):
            assert values == pytest.approx(window_features(everything, "item_id", entity_id, q))
        second = views.current()
        assert second is not None and second.view_id != first.view_id
        for replica in replica_dirs:  # each fetched both views whole from S3
            for view in (first, second):
                assert (replica / "views" / view.view_id / "manifest.json").exists()
    finally:
        for server in servers:
            os.killpg(server.pid, signal.SIGTERM)
        for server in servers:
            server.wait(30)
