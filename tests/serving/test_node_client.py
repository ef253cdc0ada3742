"""A client in another language (Node, @grpc/grpc-js + @grpc/proto-loader) calls Predict
and GetFeatures using only the .proto files."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from saiki.core.config import SaikiConfig
from saiki.serving.server import RunningServer, start_server
from tests.conftest import ROOT

pytestmark = pytest.mark.slow
CLIENT = Path(__file__).parent / "node"


@pytest.fixture(scope="module")
def node_client(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.fail("Node.js and npm are needed for the cross-language client test")
    folder = tmp_path_factory.mktemp("node")
    for name in ("client.js", "package.json"):
        shutil.copy(CLIENT / name, folder / name)
    subprocess.run(
        ["npm", "install", "--no-audit", "--no-fund", "--silent"],
        cwd=folder,
        check=True,
        timeout=300,
    )
    return folder


@pytest.fixture(scope="module")
def server(trained: tuple[SaikiConfig, Path]) -> Iterator[RunningServer]:
    running = start_server(trained[0], host="127.0.0.1", port=0)
    yield running
    running.stop(0)


def test_a_node_client_predicts_and_reads_features(
    node_client: Path, server: RunningServer
) -> None:
    done = subprocess.run(
        ["node", "client.js", f"127.0.0.1:{server.port}", str(ROOT / "proto")],
        cwd=node_client,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    ranked = answer["predict"]
    assert ranked["request_id"] == "node-1" and ranked["model_version"] == "v1"
    scores = [item["score"] for item in ranked["items"]]
    assert sorted(item["item_id"] for item in ranked["items"]) == ["i1", "i2", "i3", "i4"]
    assert scores == sorted(scores, reverse=True)
    assert [e["id"] for e in answer["features"]] == ["i1", "i2"]
    assert "ctr_7d" in answer["features"][0]["values"]
    assert answer["bad"]["code"] == 3 and answer["bad"]["details"].startswith("entity")
