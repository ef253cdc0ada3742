"""Facing a network: tokens by role, TLS and mutual TLS, the exposure guard, metrics."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client import REGISTRY

from saiki.core.config import SaikiConfig, load_config
from saiki.core.errors import ConfigError
from saiki.feature_repo.online import STATUS_FILE, SpeedStatus
from saiki.ops.demo_services import free_port
from saiki.serving import observability
from saiki.serving.client import SaikiClient, Tls
from saiki.serving.security import add_token
from saiki.serving.server import RunningServer, start_server
from tests.safety.certs import Certificates, make_certificates
from tests.serving.test_event_service import event

pytestmark = pytest.mark.slow
Code = grpc.StatusCode


@pytest.fixture(scope="module")
def guarded(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[RunningServer, dict[str, str], Path]]:
    root = tmp_path_factory.mktemp("auth")
    tokens_file = root / "tokens.toml"
    tokens = {
        role: add_token(tokens_file, f"{role}-bot", [role])
        for role in ("ingest", "read", "predict", "admin")
    }
    config = load_config(root / "data", environ={"SAIKI_AUTH_TOKENS_FILE": str(tokens_file)})
    running = start_server(config, host="127.0.0.1", port=0)
    yield running, tokens, tokens_file
    running.stop(0)


def _code(call: object) -> Code | None:
    try:
        call()  # type: ignore[operator]
    except grpc.RpcError as exc:
        return exc.code()  # type: ignore[no-any-return]
    return None


def _calls(client: SaikiClient) -> dict[str, object]:
    return {
        "ingest": lambda: client.ingest([event("auth-1")]),
        "read": lambda: client.get_features("user", ["u1"]),
        "predict": lambda: client.predict("u1", ["i1", "i2"]),
    }


def test_every_rpc_needs_a_known_token_with_its_role(
    guarded: tuple[RunningServer, dict[str, str], Path],
) -> None:
    running, tokens, _ = guarded
    target = f"127.0.0.1:{running.port}"
    with (
        SaikiClient(target, attempts=1) as anonymous,
        SaikiClient(target, token="not-a-token", attempts=1) as stranger,
    ):
        for name, call in _calls(anonymous).items():
            assert _code(call) == Code.UNAUTHENTICATED, name
        for name, call in _calls(stranger).items():
            assert _code(call) == Code.UNAUTHENTICATED, name
        assert anonymous.health() == health_pb2.HealthCheckResponse.SERVING  # no token needed
    for role, token in tokens.items():
        with SaikiClient(target, token=token, attempts=1) as client:
            for needed, call in _calls(client).items():
                expected = None if role in (needed, "admin") else Code.PERMISSION_DENIED
                assert _code(call) == expected, (role, needed)


def test_reflection_needs_admin(guarded: tuple[RunningServer, dict[str, str], Path]) -> None:
    running, tokens, _ = guarded
    with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        ask = reflection_pb2.ServerReflectionRequest(list_services="")

        def reflect(token: str) -> object:
            metadata = (("authorization", f"Bearer {token}"),)
            return list(stub.ServerReflectionInfo(iter([ask]), metadata=metadata, timeout=5))

        assert _code(lambda: reflect(tokens["read"])) == Code.PERMISSION_DENIED
        assert _code(lambda: reflect(tokens["admin"])) is None


def test_tokens_are_added_and_revoked_without_a_restart(
    guarded: tuple[RunningServer, dict[str, str], Path],
) -> None:
    running, _, tokens_file = guarded
    target = f"127.0.0.1:{running.port}"
    fresh = add_token(tokens_file, "late-reader", ["read"])
    assert "late-reader" in tokens_file.read_text() and fresh not in tokens_file.read_text()
    with SaikiClient(target, token=fresh, attempts=1) as client:
        deadline = time.monotonic() + 5
        while _code(lambda: client.get_features("user", ["u1"])) is not None:
            assert time.monotonic() < deadline, "a new token was not picked up"
            time.sleep(0.2)
        kept = tokens_file.read_text().split("\n[[token]]")
        tokens_file.write_text("\n[[token]]".join(k for k in kept if "late-reader" not in k))
        deadline = time.monotonic() + 5
        while _code(lambda: client.get_features("user", ["u1"])) != Code.UNAUTHENTICATED:
            assert time.monotonic() < deadline, "a revoked token kept working"
            time.sleep(0.2)


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("certs"))


def _tls_server(root: Path, certs: Certificates, mutual: bool) -> RunningServer:
    environ = {
        "SAIKI_SERVING_TLS_CERT": str(certs.server_cert),
        "SAIKI_SERVING_TLS_KEY": str(certs.server_key),
    }
    if mutual:
        environ["SAIKI_SERVING_CLIENT_CA"] = str(certs.ca)
    return start_server(load_config(root, environ=environ), host="127.0.0.1", port=0)


def test_tls_and_mutual_tls(certificates: Certificates, tmp_path: Path) -> None:
    plain = _tls_server(tmp_path / "tls", certificates, mutual=False)
    mutual = _tls_server(tmp_path / "mtls", certificates, mutual=True)
    try:
        trusting = Tls(certificates.ca)
        with SaikiClient(f"localhost:{plain.port}", tls=trusting, attempts=1) as client:
            assert _code(lambda: client.get_features("user", ["u1"])) is None
        with SaikiClient(f"localhost:{plain.port}", attempts=1, timeout_s=2) as cleartext:
            assert _code(lambda: cleartext.get_features("user", ["u1"])) == Code.UNAVAILABLE
        with SaikiClient(f"localhost:{mutual.port}", tls=trusting, attempts=1, timeout_s=2) as anon:
            assert _code(lambda: anon.get_features("user", ["u1"])) == Code.UNAVAILABLE
        known = Tls(certificates.ca, certificates.client_cert, certificates.client_key)
        with SaikiClient(f"localhost:{mutual.port}", tls=known, attempts=1) as client:
            assert _code(lambda: client.get_features("user", ["u1"])) is None
    finally:
        plain.stop(0)
        mutual.stop(0)


def test_a_non_loopback_address_needs_tls_and_tokens_or_insecure(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="without TLS and tokens"):
        start_server(load_config(tmp_path, environ={}), host="0.0.0.0", port=0)


def _scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def test_metrics_count_real_calls_by_method_and_status(config: SaikiConfig) -> None:
    # What a speed job that ran leaves behind: the server exports its figures.
    speed_dir = config.data_dir / "speed"
    speed_dir.mkdir(parents=True)
    (speed_dir / STATUS_FILE).write_text(json.dumps(asdict(SpeedStatus(events_seen=1234))))
    running = start_server(config, host="127.0.0.1", port=0)
    port = free_port()
    metrics = observability.serve_metrics(port, "127.0.0.1")
    method = 'method="/saiki.v1.FeatureService/GetFeatures"'
    ok = f'saiki_rpc_seconds_count{{code="OK",{method}}}'
    bad = f'saiki_rpc_seconds_count{{code="INVALID_ARGUMENT",{method}}}'
    try:
        before = _scrape(port)
        with SaikiClient(f"127.0.0.1:{running.port}", attempts=1) as client:
            for _ in range(5):
                client.get_features("user", ["u1"])
            assert _code(lambda: client.get_features("nobody", ["u1"])) == Code.INVALID_ARGUMENT
        after = _scrape(port)
    finally:
        metrics.shutdown()
        running.stop(0)
    assert after[ok] - before.get(ok, 0) == 5
    assert after[bad] - before.get(bad, 0) == 1
    assert after['saiki_health_serving{service="server"}'] == 1
    assert after['saiki_speed_job{figure="events_seen"}'] == 1234  # the job's own figure
    assert "saiki_model_version" in after and "saiki_rpc_in_flight" in after


def test_a_corrupt_production_model_leaves_the_server_up_and_predict_not_serving(
    trained: tuple[SaikiConfig, Path], tmp_path: Path
) -> None:
    import shutil

    from saiki.serving.registry import ModelRegistry
    from tests.conftest import make_config

    root = tmp_path / "data"
    shutil.copytree(trained[0].data_dir, root)
    config = make_config(root)
    registry = ModelRegistry(root)
    version = registry.production()
    for artifact in (root / "models").glob(f"v{version:04d}/*.pt"):
        artifact.write_bytes(b"not a model")
    running = start_server(config, host="127.0.0.1", port=0)
    try:
        with SaikiClient(f"127.0.0.1:{running.port}", attempts=1) as client:
            assert client.health("saiki.v1.PredictionService") == (
                health_pb2.HealthCheckResponse.NOT_SERVING
            )
            assert (
                client.health("saiki.v1.FeatureService") == health_pb2.HealthCheckResponse.SERVING
            )
            assert client.health("") == health_pb2.HealthCheckResponse.NOT_SERVING
            assert _code(lambda: client.predict("u1", ["i1"])) == Code.FAILED_PRECONDITION
            assert _code(lambda: client.get_features("user", ["u1"])) is None
        assert running.predictor.last_error
    finally:
        running.stop(0)


def test_a_bad_experiment_file_keeps_the_loaded_model_serving_and_says_so(
    trained: tuple[SaikiConfig, Path], tmp_path: Path
) -> None:
    import shutil

    from saiki.serving.experiment import FILE
    from tests.conftest import make_config

    root = tmp_path / "data"
    shutil.copytree(trained[0].data_dir, root)
    running = start_server(make_config(root), host="127.0.0.1", port=0)
    try:
        with SaikiClient(f"127.0.0.1:{running.port}", attempts=1) as client:
            before = client.predict("u1", ["i1", "i2"]).model_version
            (root / "models" / FILE).write_text("{not json")
            deadline = time.monotonic() + 10
            while running.predictor.last_error is None:
                assert time.monotonic() < deadline, "the bad file was never noticed"
                client.predict("u1", ["i1"])
                time.sleep(0.1)
            assert client.predict("u1", ["i1", "i2"]).model_version == before
            assert client.health("") == health_pb2.HealthCheckResponse.SERVING
            running.readiness.update()
            assert REGISTRY.get_sample_value("saiki_model_reload_failing") == 1
    finally:
        running.stop(0)
