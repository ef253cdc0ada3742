"""The event writer ([serving] ingest_cpus): every worker's Ingest calls appended by one
process on CPUs of its own, exactly once; its answers never mixed up; its end stops
the server."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client, Listener
from pathlib import Path

import grpc
import psutil
import pyarrow as pa
import pytest

from saiki.core.config import load_config
from saiki.core.errors import ComponentError
from saiki.core.eventlog import EventLog
from saiki.core.ingest import SEGMENT_ARROW_SCHEMA, IngestResult, RawEvent
from saiki.ops.demo_services import free_port
from saiki.serving import event_writer
from saiki.serving.event_writer import EventWriter, WriterAddress, WriterClient
from saiki.serving.status import ForwardedError
from saiki.v1 import events_pb2, events_pb2_grpc
from tests.conftest import ROOT
from tests.serving.test_event_service import event

CPUS = sorted(os.sched_getaffinity(0))
SERVING_CPU, WRITER_CPU = CPUS[0], CPUS[-1]
THREADS, CALLS, EVENTS = 8, 12, 20
SAIKI = (sys.executable, "-m", "saiki.cli.main")


def _start(root: Path, port: int) -> tuple[subprocess.Popen[str], Path]:
    (root / "saiki.toml").write_text(
        f'[serving]\ncpus = "{SERVING_CPU}"\ningest_cpus = "{WRITER_CPU}"\n'
    )
    errors = root.parent / "serve.err"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAIKI_")}
    with open(errors, "w") as sink:
        process = subprocess.Popen(
            [*SAIKI, "--data-dir", str(root), "serve", "--port", str(port), "--workers", "2"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=sink,
            text=True,
        )
    assert process.stdout is not None
    assert "saiki serving on" in process.stdout.readline()
    return process, errors


@pytest.fixture
def serving(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], Path, int]]:
    root = tmp_path / "data"
    root.mkdir()
    port = free_port()
    process, errors = _start(root, port)
    yield process, errors, port
    if process.poll() is None:
        process.terminate()
        process.wait(60)


def _affinity(pid: int) -> set[int]:
    return {cpu for t in psutil.Process(pid).threads() for cpu in os.sched_getaffinity(t.id)}


def test_every_workers_calls_are_appended_once_by_the_writer_and_its_end_stops_the_server(
    serving: tuple[subprocess.Popen[str], Path, int], tmp_path: Path
) -> None:
    process, errors, port = serving
    found = re.search(r"event writer \(pid (\d+)\)", errors.read_text())
    assert found, errors.read_text()
    writer = int(found.group(1))
    workers = [
        child.pid
        for child in psutil.Process(process.pid).children()
        if child.pid != writer and "spawn_main" in " ".join(child.cmdline())
    ]  # (not multiprocessing's resource tracker, idle)
    assert len(workers) == 2
    totals = [0, 0, 0]  # accepted, duplicates, quarantined
    lock = threading.Lock()

    def send(thread: int) -> None:
        # A channel each: SO_REUSEPORT spreads the connections over both workers.
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = events_pb2_grpc.EventServiceStub(channel)
            for call in range(CALLS):
                ids = [f"t{thread}-c{call}-e{n}" for n in range(EVENTS)]
                batch = [event(i) for i in ids] + [event(f"t{thread}-bad-{call}", user_id="")]
                answer = stub.Ingest(events_pb2.IngestRequest(events=batch), timeout=30)
                again = stub.Ingest(events_pb2.IngestRequest(events=batch[:2]), timeout=30)
                with lock:
                    totals[0] += answer.accepted + again.accepted
                    totals[1] += answer.duplicates + again.duplicates
                    totals[2] += answer.quarantined
                assert [r.field for r in answer.rejections] == ["user_id"]

    threads = [threading.Thread(target=send, args=(n,)) for n in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert totals == [THREADS * CALLS * EVENTS, THREADS * CALLS * 2, THREADS * CALLS]
    log = EventLog(tmp_path / "data" / "log")
    rows = pa.concat_tables(t for _, t in log.events.read_range(0, SEGMENT_ARROW_SCHEMA))
    ids = rows.column("event_id").to_pylist()
    assert len(ids) == len(set(ids)) == THREADS * CALLS * EVENTS
    # The writer (every thread of it) runs on its CPUs, the workers on theirs.
    assert _affinity(writer) == {WRITER_CPU}
    assert all(_affinity(pid) == {SERVING_CPU} for pid in workers)

    # A writer gone mid-service: a call says so, and `saiki serve` stops with an error
    # (for `saiki up` to restart the whole).
    os.kill(writer, signal.SIGKILL)
    with (
        grpc.insecure_channel(f"127.0.0.1:{port}") as channel,
        pytest.raises(grpc.RpcError) as failed,
    ):
        events_pb2_grpc.EventServiceStub(channel).Ingest(
            events_pb2.IngestRequest(events=[event("after-the-kill")]), timeout=30
        )
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
    assert process.wait(60) == 1
    assert "the event writer process exited (code -9)" in errors.read_text()


class _Appender:
    """An appender that answers each call with its own size, slowly for a call of 3
    events and with an error for a user named "boom"."""

    def submit(self, inputs: Sequence[RawEvent]) -> IngestResult:
        if len(inputs) == 3:
            time.sleep(0.5)
        if any(
            isinstance(raw.decoded, dict) and raw.decoded.get("user_id") == "boom" for raw in inputs
        ):
            raise ComponentError("the disk is gone")
        return IngestResult(accepted=len(inputs))

    def close(self) -> None:
        pass


def _request(n: int, **changes: object) -> events_pb2.IngestRequest:
    return events_pb2.IngestRequest(events=[event(f"e{i}", **changes) for i in range(n)])


def test_a_late_answer_is_never_taken_for_the_next_calls_and_errors_keep_their_status() -> None:
    key = b"k" * 32
    listener = Listener(family="AF_UNIX", authkey=key)
    threading.Thread(target=event_writer._accept, args=(listener, _Appender()), daemon=True).start()
    try:
        client = WriterClient(WriterAddress(listener.address, key))
        with pytest.raises(ForwardedError) as late:
            client.append(_request(3), "test", timeout_s=0.1)
        assert late.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        # The next call on this thread gets its own answer (5), not the late one (3).
        assert client.append(_request(5), "test", timeout_s=5).accepted == 5
        with pytest.raises(ForwardedError) as failed:
            client.append(_request(1, user_id="boom"), "test", timeout_s=5)
        assert failed.value.code == grpc.StatusCode.UNAVAILABLE
        assert str(failed.value) == "the disk is gone"
        # A caller without the key is refused; the writer goes on serving the others.
        with pytest.raises(AuthenticationError):
            Client(listener.address, family="AF_UNIX", authkey=b"wrong")
        assert client.append(_request(2), "test", timeout_s=5).accepted == 2
    finally:
        listener.close()


def test_a_writer_that_cannot_start_says_why(tmp_path: Path) -> None:
    config = load_config(
        tmp_path / "data",
        environ={},
        log={"backend": "kafka"},  # and no bootstrap servers
        serving={"ingest_cpus": str(WRITER_CPU)},
    )
    with pytest.raises(ComponentError, match=r"did not start: .*kafka_bootstrap"):
        EventWriter(config)
