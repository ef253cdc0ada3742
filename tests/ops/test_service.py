"""``saiki up`` end to end: the server, the speed layer and the scheduler on a copy of the
lambda environment. A scheduled recompute hands off while a client queries without a
pause, and every answer equals the independent recomputation for its view's cutoff; a
killed server is restarted; a failing job is retried and reported while the others go
on; ``saiki status`` shows it all; SIGTERM stops everything."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from saiki.core.config import SaikiConfig
from saiki.ops.demo_services import free_port
from saiki.ops.processes import group_members
from saiki.ops.status import pid_alive, read_job, read_part, read_service
from saiki.v1 import features_pb2, features_pb2_grpc
from tests.conftest import END_MS, LAMBDA_CUTOFF_MS, ROOT, make_config, run_saiki
from tests.oracle import master_events, window_features
from tests.serving.test_get_features import sample_ids, served_truth, stamp

pytestmark = pytest.mark.slow
HOUR = 3_600_000
# [serving] cpus: the server, and the server restarted after a kill, hold to this CPU.
SERVER_CPU = max(os.sched_getaffinity(0))


def _wait(what: str, done: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if done():  # type: ignore[operator]
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def _serving(port: int) -> bool:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=1
            )
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


@pytest.fixture(scope="module")
def up(
    lambda_env: SaikiConfig, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[SaikiConfig, subprocess.Popen[bytes], int]]:
    root = tmp_path_factory.mktemp("up") / "data"
    shutil.copytree(lambda_env.data_dir, root)
    # Flink's checkpoints name the original folder's segment paths: start the copy fresh.
    shutil.rmtree(root / "speed" / "checkpoints", ignore_errors=True)
    port = free_port()
    (root / "saiki.toml").write_text(
        '[schedule]\nload = "10s"\nrecompute = "40s"\nmonitor = "1h"\nretrain = "1d"\n'
        f'[serving]\nport = {port}\ncpus = "{SERVER_CPU}"\n'
    )
    config = make_config(root)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAIKI_")}
    log = open(root.parent / "up.log", "wb")  # noqa: SIM115
    process = subprocess.Popen(
        [sys.executable, "-m", "saiki.cli.main", "--data-dir", str(root), "up"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        _wait("the server", lambda: _serving(port), 180)
        yield config, process, port
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(90)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
        log.close()


def test_a_scheduled_recompute_hands_off_while_every_answer_stays_exact(
    up: tuple[SaikiConfig, subprocess.Popen[bytes], int],
) -> None:
    config, _, port = up
    q = END_MS + 2 * HOUR
    everything = master_events(config)
    ids = sample_ids(everything, "user_id", 40)
    answers: list[features_pb2.GetFeaturesResponse] = []
    errors: list[str] = []
    stop = threading.Event()

    def query() -> None:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            client = features_pb2_grpc.FeatureServiceStub(channel)
            while not stop.is_set():
                try:
                    answers.append(
                        client.GetFeatures(
                            features_pb2.GetFeaturesRequest(entity="user", ids=ids, as_of=stamp(q)),
                            timeout=5,
                        )
                    )
                except grpc.RpcError as exc:
                    errors.append(str(exc.code()))
                time.sleep(0.05)

    worker = threading.Thread(target=query)
    worker.start()
    try:
        # The first recompute starts 40 s after `saiki up`; the server then notices it.
        _wait(
            "a scheduled recompute",
            lambda: (
                (job := read_job(config.data_dir, "recompute")) is not None and job.outcome == "ok"
            ),
            240,
        )
        time.sleep(2.0)
    finally:
        stop.set()
        worker.join(30)
    assert not errors
    # After the handoff the speed layer restarts fresh from the new cutoff, archiving the
    # segments the new view holds (its first start, fresh too, archived the older ones).
    speed_log = config.data_dir / "logs" / "speed.log"
    _wait(
        "the speed layer's fresh restart",
        lambda: speed_log.read_text(errors="replace").count("segments brought back") >= 2,
        120,
    )
    job = read_job(config.data_dir, "recompute")
    assert job is not None and job.trigger == "scheduled"
    cutoffs = [a.batch_cutoff.ToMilliseconds() for a in answers]
    assert cutoffs[0] == LAMBDA_CUTOFF_MS and cutoffs[-1] > LAMBDA_CUTOFF_MS
    assert cutoffs == sorted(cutoffs)  # never back to the old view
    truths = {
        cutoff: {i: window_features(served_truth(config, cutoff), "user_id", i, q) for i in ids}
        for cutoff in set(cutoffs)
    }
    for answer in answers:
        truth = truths[answer.batch_cutoff.ToMilliseconds()]
        for served in answer.entities:
            assert dict(served.values) == pytest.approx(truth[served.id]), (
                served.id,
                answer.batch_cutoff.ToMilliseconds(),
                sorted(set(cutoffs)),
                answers.index(answer),
                len(answers),
            )


def test_a_killed_batch_job_is_reported_and_run_again_while_the_others_go_on(
    up: tuple[SaikiConfig, subprocess.Popen[bytes], int],
) -> None:
    config, _, _ = up
    _wait(
        "a recompute to run",
        lambda: (
            (job := read_job(config.data_dir, "recompute")) is not None
            and job.outcome == "running"
            and pid_alive(job.pid)
        ),
        120,
    )
    running = read_job(config.data_dir, "recompute")
    assert running is not None
    # A scheduled job runs below serving's priority ([schedule] nice, 10 by default).
    wanted = min(19, os.nice(0) + config.schedule.nice)
    _wait("the job's priority", lambda: os.getpriority(os.PRIO_PROCESS, running.pid) == wanted, 20)
    os.killpg(running.pid, signal.SIGKILL)
    _wait(
        "the kill to be recorded",
        lambda: (
            (job := read_job(config.data_dir, "recompute")) is not None and job.outcome == "failed"
        ),
        30,
    )
    killed = read_job(config.data_dir, "recompute")
    assert killed is not None and killed.detail == "killed by signal 9" and killed.failures == 1
    assert "1 failed in a row" in run_saiki(config, "status")
    # The others go on, and the batch job runs again and succeeds.
    _wait(
        "a load after the kill",
        lambda: (
            (job := read_job(config.data_dir, "load")) is not None
            and job.outcome == "ok"
            and job.started_at > killed.started_at
        ),
        60,
    )
    _wait(
        "the recompute to run again",
        lambda: (
            (job := read_job(config.data_dir, "recompute")) is not None
            and job.outcome == "ok"
            and job.started_at > killed.started_at
        ),
        180,
    )
    again = read_job(config.data_dir, "recompute")
    assert again is not None and again.failures == 0


def test_a_killed_server_is_restarted(up: tuple[SaikiConfig, subprocess.Popen[bytes], int]) -> None:
    config, _, port = up
    before = read_part(config.data_dir, "server")
    assert before is not None and before.state == "up"
    os.kill(before.pid, signal.SIGKILL)
    _wait(
        "the restart",
        lambda: (
            (part := read_part(config.data_dir, "server")) is not None
            and part.restarts == before.restarts + 1
            and part.state == "up"
        ),
        60,
    )
    _wait("the server to answer again", lambda: _serving(port), 120)
    after = read_part(config.data_dir, "server")
    assert after is not None and after.last_exit == "signal 9" and after.pid != before.pid
    # The restarted server applied [serving] cpus again: every thread of it, gRPC's own
    # among them, may run on that CPU only.
    import psutil

    threads = psutil.Process(after.pid).threads()
    assert len(threads) > 1
    assert {cpu for t in threads for cpu in os.sched_getaffinity(t.id)} == {SERVER_CPU}
    status = run_saiki(config, "status")
    assert "server   up" in status and "signal 9" in status


def test_sigterm_stops_every_part(up: tuple[SaikiConfig, subprocess.Popen[bytes], int]) -> None:
    config, process, port = up
    service = read_service(config.data_dir)
    assert service is not None
    groups = list(service.groups)
    assert len(groups) >= 2
    # Enough recomputes (every 40 s) that pruning beyond keep_views has had to happen.
    deadline = time.monotonic() + 180
    while (job := read_job(config.data_dir, "recompute")) is None or (
        job.runs < config.schedule.keep_views + 1
    ):
        assert time.monotonic() < deadline, f"only {job.runs if job else 0} recomputes"
        time.sleep(1)
    os.killpg(process.pid, signal.SIGTERM)
    assert process.wait(90) == 0
    for group in groups:
        assert not group_members(group)
    # Recomputes ran every 40 s; views beyond [schedule] keep_views were removed.
    from saiki.feature_repo.views import ViewCatalog

    recomputes = read_job(config.data_dir, "recompute")
    assert recomputes is not None and recomputes.runs >= 3
    # (plus one, if the SIGTERM stopped a recompute between its publish and its prune)
    views = len(ViewCatalog(config.data_dir).list())
    assert views <= config.schedule.keep_views + 1 < recomputes.runs + 1
    stopped = read_service(config.data_dir)
    assert stopped is not None and stopped.stopped_at is not None
    for name in ("server", "speed"):
        part = read_part(config.data_dir, name)
        assert part is not None and part.state == "stopped" and not pid_alive(part.pid)
    output = Path(config.data_dir.parent / "up.log").read_text()
    print(output[-2000:])
    # The start line names the model in service (and reads the registry from the start).
    from saiki.serving.registry import ModelRegistry

    production = ModelRegistry(config.data_dir).production()
    said = f"model v{production} in production" if production else "no model in production"
    assert f":{port}, {said}; logs in" in output
