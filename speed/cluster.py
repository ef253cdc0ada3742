"""A Flink standalone session cluster, and the speed job on it through Flink's REST API.

The apache-flink package carries a whole Flink distribution (``pyflink/bin``, ``lib``,
``conf``), but the Python runtime's jar sits in ``opt/``, where a cluster does not load
it: :func:`prepare_home` lays out a distribution folder with it in ``lib/`` and a
``config.yaml`` of our own (ports, memory, heartbeats), from which Flink's own scripts
start a JobManager (``bin/jobmanager.sh start``) and TaskManagers (``bin/taskmanager.sh
start``). On real servers the same folder is what each machine runs (``python -m
saiki.speed.cluster prepare DIR``); the test suite's cluster tier starts one on loopback.

:class:`FlinkRest` is what ``saiki speed run --jobmanager`` and ``saiki speed status``
use to find, watch and cancel the job: Flink's REST API, no client library.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from saiki.core.errors import ComponentError

if TYPE_CHECKING:
    from saiki.core.config import SaikiConfig

JOB_NAME = "saiki-speed"
# Job states from which the job will not run again by itself.
TERMINAL = frozenset({"FAILED", "CANCELED", "FINISHED"})
# The JVM options the package's own config.yaml gives every Flink process (Java 17
# module openings Flink needs).
_JAVA_OPTS = " ".join(
    [
        "--add-exports=java.rmi/sun.rmi.registry=ALL-UNNAMED",
        *(
            f"--add-exports=jdk.compiler/com.sun.tools.javac.{p}=ALL-UNNAMED"
            for p in ("api", "file", "parser", "tree", "util")
        ),
        "--add-exports=java.security.jgss/sun.security.krb5=ALL-UNNAMED",
        *(
            f"--add-opens=java.base/{p}=ALL-UNNAMED"
            for p in (
                "java.lang",
                "java.net",
                "java.io",
                "java.nio",
                "sun.nio.ch",
                "java.lang.reflect",
                "java.text",
                "java.time",
                "java.util",
                "java.util.concurrent",
                "java.util.concurrent.atomic",
                "java.util.concurrent.locks",
            )
        ),
    ]
)


def package_distribution() -> Path:
    """The Flink distribution inside the installed apache-flink package."""
    import pyflink

    return Path(pyflink.__file__).resolve().parent


def cluster_settings(
    rpc_port: int, rest_port: int, *, host: str = "localhost", slots: int = 2
) -> dict[str, str]:
    """``config.yaml`` for a small session cluster on ``host``.

    Heartbeats are tighter than Flink's defaults (50 s to declare a TaskManager lost) so
    that a killed TaskManager's job restarts within seconds.
    """
    return {
        "env.java.opts.all": _JAVA_OPTS,
        "jobmanager.rpc.address": host,
        "jobmanager.rpc.port": str(rpc_port),
        "jobmanager.bind-host": host,
        "jobmanager.memory.process.size": "1024m",
        "rest.address": host,
        "rest.bind-address": host,
        "rest.port": str(rest_port),
        "taskmanager.host": host,
        "taskmanager.bind-host": host,
        "taskmanager.numberOfTaskSlots": str(slots),
        "taskmanager.memory.process.size": "1600m",
        "heartbeat.interval": "2000",
        "heartbeat.timeout": "8000",
        "parallelism.default": "1",
    }


def prepare_home(dest: Path, settings: Mapping[str, str]) -> Path:
    """A Flink distribution folder at ``dest``: the package's scripts and jars (linked,
    not copied) with ``flink-python`` moved into ``lib/``, and ``settings`` as its
    ``conf/config.yaml``."""
    source = package_distribution()
    dest.mkdir(parents=True, exist_ok=True)
    for folder in ("lib", "conf", "log", "plugins"):
        (dest / folder).mkdir(exist_ok=True)
    if not (dest / "bin").exists():
        shutil.copytree(source / "bin", dest / "bin")  # the scripts locate home from here
    jars = [*(source / "lib").glob("*.jar"), *(source / "opt").glob("flink-python-*.jar")]
    for jar in jars:
        link = dest / "lib" / jar.name
        if not link.exists():
            link.symlink_to(jar)
    for name in ("log4j.properties", "log4j-console.properties", "log4j-cli.properties"):
        shutil.copyfile(source / "conf" / name, dest / "conf" / name)
    lines = [f"{key}: {json.dumps(value)}" for key, value in sorted(settings.items())]
    (dest / "conf" / "config.yaml").write_text("\n".join(lines) + "\n")
    return dest


def job_name(data_dir: Path) -> str:
    """The speed job's name on a cluster: one job per data directory, so that several
    deployments (or test sessions) can share a session cluster."""
    return f"{JOB_NAME} {data_dir}"


@dataclass(frozen=True)
class FlinkRest:
    """Flink's REST API at ``HOST:PORT`` (the JobManager's ``rest.port``); ``name`` is the
    job it looks for (:func:`job_name`)."""

    address: str
    name: str = JOB_NAME

    @classmethod
    def for_config(cls, config: SaikiConfig) -> FlinkRest:
        """The cluster of ``[speed] jobmanager``, looking for this data dir's job."""
        return cls(config.speed.jobmanager, job_name(config.data_dir))

    @property
    def base(self) -> str:
        host, _, port = self.address.partition(":")
        return f"http://{host}:{port or '8081'}"

    def call(self, path: str, method: str = "GET", timeout: float = 5.0) -> Any:
        request = urllib.request.Request(self.base + path, method=method)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as answer:
                body = answer.read()
        except (urllib.error.URLError, OSError) as exc:
            raise ComponentError(f"Flink's REST API at {self.base} did not answer: {exc}") from exc
        return json.loads(body) if body else {}

    def overview(self) -> dict[str, Any]:
        """Slots and TaskManagers (``/overview``)."""
        return dict(self.call("/overview"))

    def jobs(self) -> list[dict[str, Any]]:
        """The cluster's jobs called :attr:`name`, newest first."""
        listed = self.call("/jobs/overview").get("jobs", [])
        jobs = [j for j in listed if j.get("name") == self.name]
        return sorted(jobs, key=lambda j: j.get("start-time", 0), reverse=True)

    def live_job(self) -> dict[str, Any] | None:
        """The newest job called :attr:`name` that is not in a terminal state."""
        return next((j for j in self.jobs() if j.get("state") not in TERMINAL), None)

    def checkpoints(self, job_id: str) -> dict[str, Any]:
        """Counts and the latest completed checkpoint (``/jobs/ID/checkpoints``)."""
        return dict(self.call(f"/jobs/{job_id}/checkpoints"))

    def exceptions(self, job_id: str) -> list[str]:
        """The job's recent failures, newest first (root causes' first lines)."""
        history = self.call(f"/jobs/{job_id}/exceptions").get("exceptionHistory", {})
        return [
            str(entry.get("exceptionName", "")) + ": " + str(entry.get("stacktrace", ""))[:200]
            for entry in history.get("entries", [])
        ]

    def cancel(self, job_id: str) -> None:
        """Cancel the job (its retained checkpoints stay)."""
        self.call(f"/jobs/{job_id}?mode=cancel", method="PATCH")

    def wait_ready(self, taskmanagers: int = 1, timeout_s: float = 90.0) -> None:
        """Until the REST API answers and ``taskmanagers`` have registered."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if self.overview().get("taskmanagers", 0) >= taskmanagers:
                    return
            except ComponentError:
                pass
            if time.monotonic() > deadline:
                raise ComponentError(
                    f"no Flink cluster with {taskmanagers} TaskManager(s) at {self.base}"
                )
            time.sleep(0.5)


def describe_job(rest: FlinkRest) -> list[str]:
    """Lines for ``saiki speed status``: the cluster job's state, restarts, checkpoints."""
    jobs = rest.jobs()
    if not jobs:
        return [f"no job {rest.name!r} on the Flink cluster at {rest.address}"]
    job = rest.live_job() or jobs[0]
    lines = [f"Flink job {job['jid']} at {rest.address}: {job['state']}"]
    if job.get("state") not in TERMINAL:
        counts = rest.checkpoints(job["jid"])
        latest = (counts.get("latest") or {}).get("completed") or {}
        lines.append(
            f"  checkpoints completed {counts.get('counts', {}).get('completed', 0)}, "
            f"failed {counts.get('counts', {}).get('failed', 0)}; latest "
            f"{latest.get('external_path', '-')}"
        )
    failures = rest.exceptions(job["jid"])
    if failures:
        lines.append(f"  {len(failures)} failure(s), newest: {failures[0]}")
    return lines


def main(argv: list[str] | None = None) -> int:
    """``python -m saiki.speed.cluster prepare DIR``: a distribution folder to run."""
    parser = argparse.ArgumentParser(prog="python -m saiki.speed.cluster")
    parser.add_argument("verb", choices=["prepare"])
    parser.add_argument("home", type=Path)
    parser.add_argument("--host", default="localhost")
    parser.add_argument("--rpc-port", type=int, default=6123)
    parser.add_argument("--rest-port", type=int, default=8081)
    parser.add_argument("--slots", type=int, default=2)
    args = parser.parse_args(argv)
    settings = cluster_settings(args.rpc_port, args.rest_port, host=args.host, slots=args.slots)
    home = prepare_home(args.home, settings)
    print(f"{home}: start with bin/jobmanager.sh start and bin/taskmanager.sh start")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
