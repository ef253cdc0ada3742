"""Two serving replicas on the cluster configuration: their own ports (gRPC and metrics)
and data directories (only saiki.toml in them), one event log folder (``[log] dir``)
standing in for a shared filesystem, the batch view and model versions in S3 object
storage with their catalogs in PostgreSQL, the Iceberg catalog and the Feast SQL registry
on PostgreSQL, the online store on Redis, the speed job on the Flink session cluster. A
client balancing over both with gRPC's ``round_robin`` gets identical answers; an event
sent to both is accepted once and reaches the master dataset and the speed layer; a
promotion reaches both."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import torch
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc

from saiki.batch.master import MasterDataset
from saiki.core.config import SaikiConfig
from saiki.core.timeutil import now_ms
from saiki.feature_repo.online import read_status
from saiki.feature_repo.views import ViewCatalog
from saiki.serving.model import ModelConfig, RankingModel, quantise
from saiki.serving.registry import ModelRegistry
from saiki.v1 import (
    events_pb2,
    events_pb2_grpc,
    features_pb2,
    features_pb2_grpc,
    prediction_pb2,
    prediction_pb2_grpc,
)
from tests.cluster.conftest import FlinkCluster, ObjectStore, _free_port
from tests.conftest import ROOT, online_store_config, run_saiki
from tests.serving.test_predict import register_untrained

pytestmark = [pytest.mark.slow, pytest.mark.cluster]
ITEMS = [f"i{n}" for n in range(60)]


def _serve(root: Path, port: int, metrics_port: int) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAIKI_")}
    env["SAIKI_SERVING_METRICS_PORT"] = str(metrics_port)
    log = open(root.parent / f"serve-{port}.log", "wb")  # noqa: SIM115 (the child keeps it)
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "saiki.cli.main",
            "--data-dir",
            str(root),
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        cwd=ROOT,
        env=env,
        start_new_session=True,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def _wait_serving(port: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                if (
                    stub.Check(health_pb2.HealthCheckRequest(), timeout=2).status
                    == health_pb2.HealthCheckResponse.SERVING
                ):
                    return
            except grpc.RpcError:
                pass
            assert time.monotonic() < deadline, f"replica on {port} never became SERVING"
            time.sleep(0.5)


def _predicts_received(metrics_port: int) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read()
    wanted = 'saiki_rpc_received_total{method="/saiki.v1.PredictionService/Predict"}'
    for line in text.decode().splitlines():
        if line.startswith(wanted):
            return float(line.split()[-1])
    return 0.0


def _upload_production(local: Path, config: SaikiConfig) -> None:
    """Register the local registry's production version in the configured (shared) one
    and promote it there."""
    source = ModelRegistry(local)
    entry = source.get(source.production())  # type: ignore[arg-type]
    model = RankingModel(ModelConfig(**entry.config))
    model.load_state_dict(torch.load(local / "models" / "v0001" / "fp32.pt", weights_only=True))
    shared = ModelRegistry.open(config)
    version = shared.register(
        model.eval(), quantise(model), ModelConfig(**entry.config), entry.lineage, entry.metrics
    ).version
    shared.promote(version)


def _share_current_view(root: Path, config: SaikiConfig) -> None:
    """Publish the data dir's current view (made by the trained fixture) to the shared
    view catalog, as `saiki batch run` on this configuration would have."""
    local = ViewCatalog(root)
    manifest = local.current()
    assert manifest is not None
    held = root.parent / "view-to-share"
    shutil.move(local.path(manifest.view_id), held)
    shutil.rmtree(root / "views")
    shared = ViewCatalog.open(config)
    staging = shared.stage(manifest.view_id)
    shutil.copytree(held, staging, dirs_exist_ok=True)
    shared.publish(staging, manifest)


@pytest.fixture
def replicas(
    trained: tuple[SaikiConfig, Path],
    postgres: str,
    redis_server: str,
    flink_cluster: FlinkCluster,
    request: pytest.FixtureRequest,
) -> Iterator[tuple[SaikiConfig, list[tuple[int, int]]]]:
    store: ObjectStore = request.getfixturevalue("object_store")
    tmp_path: Path = request.getfixturevalue("tmp_path")
    root = tmp_path / "shared"  # the machine that loads, recomputes and runs the speed job
    # Model versions and the view come from object storage, their catalogs from
    # PostgreSQL; the event log is one folder every replica reaches.
    shutil.copytree(trained[0].data_dir, root, ignore=shutil.ignore_patterns("feast", "models"))
    registry = postgres.replace("postgresql+psycopg2://", "postgresql+psycopg://", 1)
    properties = "\n".join(f'"{k}" = "{v}"' for k, v in store.properties.items())
    config = online_store_config(
        root,
        "redis",
        redis_server,
        f'registry = "{registry}"\n'
        f'[catalog]\nuri = "{postgres}"\nnamespace = "replicas"\n'
        f"[catalog.properties]\n{properties}\n"
        f'[models]\nartifacts = "s3://{store.lake}/replicas-{tmp_path.name}/models"\n'
        f'metadata = "{postgres}"\n'
        f'[views]\nlocation = "s3://{store.lake}/replicas-{tmp_path.name}/views"\n'
        f'metadata = "{postgres}"\n'
        f'[log]\ndir = "{root / "log"}"\n'
        f'[speed]\njobmanager = "{flink_cluster.address}"\n',
    )
    _upload_production(trained[0].data_dir, config)
    _share_current_view(root, config)
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
        yield config, ports
    finally:
        for server in servers:
            os.killpg(server.pid, signal.SIGTERM)
        for server in servers:
            server.wait(30)


def _event(event_id: str, user: str, item: str, kind: int, minutes_ago: int) -> events_pb2.Event:
    when = Timestamp()
    when.FromMilliseconds(now_ms() - minutes_ago * 60_000)
    event = events_pb2.Event(
        event_id=event_id,
        event_time=when,
        user_id=user,
        item_id=item,
        event_type=kind,  # type: ignore[arg-type]
        request_id=f"r-{event_id}",
        variant="A",
    )
    if kind == events_pb2.CLICK:
        event.dwell_ms = 900
    return event


def test_two_replicas_answer_alike_accept_an_event_once_and_follow_a_promotion(
    replicas: tuple[SaikiConfig, list[tuple[int, int]]],
) -> None:
    config, ports = replicas
    balanced = grpc.insecure_channel(
        "ipv4:" + ",".join(f"127.0.0.1:{port}" for port, _ in ports),
        options=[("grpc.lb_policy_name", "round_robin")],
    )
    direct = [grpc.insecure_channel(f"127.0.0.1:{port}") for port, _ in ports]
    try:
        # Identical answers, whichever replica the balancer picks (and it picks both).
        before = [_predicts_received(metrics) for _, metrics in ports]
        stub = prediction_pb2_grpc.PredictionServiceStub(balanced)
        request = prediction_pb2.PredictRequest(user_id="u7", item_ids=ITEMS)
        answers = {
            tuple((s.item_id, round(s.score, 9)) for s in stub.Predict(request, timeout=10).items)
            for _ in range(20)
        }
        assert len(answers) == 1 and len(next(iter(answers))) == len(ITEMS)
        after = [_predicts_received(metrics) for _, metrics in ports]
        assert all(a - b >= 5 for a, b in zip(after, before, strict=True)), (before, after)

        # An event sent to both replicas is accepted once.
        events = [
            _event(f"rep-{n}", "replica-user", f"i{n % 5}", kind, minutes_ago=3)
            for n, kind in enumerate([events_pb2.IMPRESSION] * 6 + [events_pb2.CLICK] * 2)
        ]
        first, second = (events_pb2_grpc.EventServiceStub(c) for c in direct)
        sent = events_pb2.IngestRequest(events=events)
        assert first.Ingest(sent, timeout=10).accepted == len(events)
        again = second.Ingest(sent, timeout=10)
        assert again.accepted == 0 and again.duplicates == len(events)

        # ...and reaches the master dataset (on PostgreSQL) once, and the speed layer.
        run_saiki(config, "master", "load")
        loaded = MasterDataset(config).table().scan(row_filter="user_id == 'replica-user'")
        ids = loaded.to_arrow().column("event_id").to_pylist()
        assert sorted(ids) == sorted(e.event_id for e in events)
        run_saiki(config, "speed", "run", "--until-idle", timeout=400)
        status = read_status(config.data_dir / "speed")
        assert status is not None and status.events_tiled >= len(events)
        asked = features_pb2.GetFeaturesRequest(entity="user", ids=["replica-user"])
        seen = []
        for channel in direct:
            reply = features_pb2_grpc.FeatureServiceStub(channel).GetFeatures(asked, timeout=10)
            seen.append(dict(reply.entities[0].values))
        assert seen[0] == seen[1]
        assert seen[0]["impressions_1h"] == 6 and seen[0]["clicks_1h"] == 2
        view = ViewCatalog.open(config).current_id()
        for n in range(2):  # each wrote to the one log and fetched the view from S3
            replica = config.data_dir.parent / f"replica-{n}"
            assert not (replica / "log").exists()
            assert view is not None and (replica / "views" / view / "manifest.json").exists()

        # A promotion in the shared registry reaches both replicas.
        version = register_untrained(config)
        run_saiki(config, "models", "promote", str(version))
        deadline = time.monotonic() + 20
        for channel in direct:
            replica = prediction_pb2_grpc.PredictionServiceStub(channel)
            while replica.Predict(request, timeout=10).model_version != f"v{version}":
                assert time.monotonic() < deadline, "a replica kept the old model"
                time.sleep(0.2)
    finally:
        balanced.close()
        for channel in direct:
            channel.close()
