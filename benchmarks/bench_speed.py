"""Speed-layer benchmark: freshness under a steady stream, throughput on a backlog.

Side by side in one run:
* JVM + job start: from ``saiki speed run`` launched to the job reading (the sink's first
  status) and to its first tiles written through Feast;
* throughput: a backlog of simulated events through the real job and its Feast sink,
  against the same per-minute aggregation in a plain Python loop over the same events;
* freshness: 1,000 events/s offered through the ``Ingest`` RPC of a running server, each
  batch for a fresh user; the time from the RPC's ack to the user's tile being readable
  from the online store, p50/p95/p99.
    python -m benchmarks.bench_speed
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pyarrow as pa
from google.protobuf.timestamp_pb2 import Timestamp

from benchmarks.common import PROJECT, conditions, fresh_dir
from saiki.core.config import load_config
from saiki.core.eventlog import EventLog
from saiki.core.ingest import SEGMENT_ARROW_SCHEMA, Ingestor
from saiki.core.ingest_files import ingest_files
from saiki.core.timeutil import now_ms
from saiki.feature_repo.online import read_status
from saiki.feature_repo.online_readers import SqliteOnlineReader
from saiki.simulator import TrafficOptions, World, write_jsonl
from saiki.v1 import events_pb2, events_pb2_grpc

BACKLOG_DAYS = 0.5
RATE = 1_000  # events per second offered for the freshness run
BATCHES_PER_SECOND = 20  # Ingest calls a second: each writes one segment of the log
FRESHNESS_SECONDS = 180  # long enough for a delay that grows with the log to show
PORT = 50_932


def saiki(data: Path, *argv: str, settings: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """``saiki <argv>`` on ``data`` in the background, with none of this environment's
    ``SAIKI_`` settings but ``settings`` (``{"SPEED_CPUS": "1"}`` → ``SAIKI_SPEED_CPUS``).
    Its output goes to ``<data>/../logs/<command>.log``: a pipe nobody reads fills, and
    then the child (a JVM logging a warning, say) blocks on its next write."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAIKI_")}
    env.update({f"SAIKI_{key}": value for key, value in (settings or {}).items()})
    logs = data.parent / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    name = "-".join(a for a in argv[:2] if a.isalpha())
    with open(logs / f"{name}.log", "a") as log:
        log.write(f"== saiki {' '.join(argv)} at {time.strftime('%H:%M:%S')}\n")
        log.flush()
        return subprocess.Popen(
            [sys.executable, "-m", "saiki.cli.main", "--data-dir", str(data), *argv],
            cwd=PROJECT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )


@dataclass(frozen=True)
class BacklogRun:
    """One ``saiki speed run --until-idle --fresh`` over the backlog, timed from launch."""

    events: int
    running_s: float  # the sink's first status: the job is deployed and reading
    first_write_s: float  # the first tiles written through Feast
    events_before_first_write: int
    done_s: float  # every event read and every changed row written

    @property
    def rate_from_running(self) -> float:
        return self.events / (self.done_s - self.running_s)

    @property
    def rate_from_first_write(self) -> float:
        return (self.events - self.events_before_first_write) / (self.done_s - self.first_write_s)


def backlog(data: Path) -> BacklogRun:
    """Ingest the backlog into a fresh data dir, then run the job over it."""
    config = load_config(data, environ={})
    traffic = data.parent / "backlog.jsonl"
    end = (now_ms() // 60_000) * 60_000
    write_jsonl(
        World(20_000, 2_000, seed=5), TrafficOptions(days=BACKLOG_DAYS, end_ms=end), traffic
    )
    log = EventLog(config.log_dir)
    ingest_files(Ingestor(log), [traffic])
    return fresh_run(data, log.events.head())


def fresh_run(data: Path, head: int) -> BacklogRun:
    """``saiki speed run --until-idle --fresh`` on ``data``, timed until it has read up to
    ``head`` and written every changed row."""
    started = time.perf_counter()
    job = saiki(data, "speed", "run", "--until-idle", "--fresh")
    running = first_write = None
    before_first_write = 0
    while job.poll() is None:
        status = read_status(data / "speed")
        now = time.perf_counter() - started
        if status is not None and running is None:
            running = now
        if status is not None and first_write is None and status.rows_written:
            first_write, before_first_write = now, status.events_seen
        if status is not None and status.events_seen >= head and status.pending_rows == 0:
            break
        time.sleep(0.05)
    done = time.perf_counter() - started
    job.wait(120)
    assert running is not None and first_write is not None
    return BacklogRun(head, running, first_write, before_first_write, done)


def python_loop(log: EventLog) -> tuple[int, float]:
    """The reference: the same tiles in a plain Python loop over the same events."""
    rows = pa.concat_tables(t for _, t in log.events.read_range(0, SEGMENT_ARROW_SCHEMA))
    records = rows.select(
        ["user_id", "item_id", "event_time", "event_type", "dwell_ms"]
    ).to_pylist()
    started = time.perf_counter()
    tiles: dict[tuple[str, str, int], list[int]] = defaultdict(lambda: [0, 0, 0])
    for r in records:
        minute = r["event_time"] // 60_000
        click = r["event_type"] == "CLICK"
        for key in (("user", r["user_id"], minute), ("item", r["item_id"], minute)):
            tile = tiles[key]
            tile[0] += not click
            tile[1] += click
            tile[2] += (r["dwell_ms"] or 0) if click else 0
    return len(records), time.perf_counter() - started


def freshness(data: Path) -> list[tuple[float, float]]:
    """(seconds into the stream, seconds from Ingest ack to readable tile), one per batch."""
    config = load_config(data, environ={})
    # As in production, the speed layer covers what the newest batch view has not: a
    # batch run at the end of the backlog first (without one, every row would carry the
    # backlog's twelve hours of tiles and each write would rewrite all of them).
    batch_run = saiki(data, "batch", "run")
    if batch_run.wait(600) != 0:
        raise RuntimeError("saiki batch run failed")
    launched = now_ms()
    server = saiki(data, "serve", "--port", str(PORT))
    # --fresh: a job resumed from the backlog run's checkpoint first replays and rewrites
    # every row it restored, which would be measured as the first batches' latency.
    job = saiki(data, "speed", "run", "--fresh")
    head = EventLog(config.log_dir).events.head()
    reader = SqliteOnlineReader(config)
    samples: list[tuple[float, float]] = []
    waiting: dict[str, float] = {}
    began = time.perf_counter()
    lock = threading.Lock()
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            with lock:
                pending = dict(waiting)
            if pending:
                found = reader.read_speed("user", list(pending))
                seen = time.perf_counter()
                with lock:
                    for user in found:
                        if user in waiting:
                            acked = waiting.pop(user)
                            samples.append((acked - began, seen - acked))
            time.sleep(0.01)

    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{PORT}")
        grpc.channel_ready_future(channel).result(timeout=120)
        stub = events_pb2_grpc.EventServiceStub(channel)
        # The previous run's status is still on disk: wait for this job's sink to open.
        while (
            (status := read_status(data / "speed")) is None
            or status.job_started_ms < launched
            or status.events_seen < head
            or status.pending_rows
        ):
            if job.poll() is not None:
                raise RuntimeError("saiki speed run exited before its sink opened")
            time.sleep(0.2)
        time.sleep(3)  # let the job settle after catching up with the backlog
        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        batch, interval = RATE // BATCHES_PER_SECOND, 1 / BATCHES_PER_SECOND
        began = time.perf_counter()
        deadline = began + FRESHNESS_SECONDS
        n = 0
        while time.perf_counter() < deadline:
            tick = time.perf_counter()
            user = f"fresh-{n}"
            when = Timestamp()
            when.FromMilliseconds(now_ms())
            events = [
                events_pb2.Event(
                    event_id=f"f{n}-{k}",
                    event_time=when,
                    user_id=user,
                    item_id=f"i{k % 500}",
                    event_type=events_pb2.IMPRESSION,
                )
                for k in range(batch)
            ]
            stub.Ingest(events_pb2.IngestRequest(events=events), timeout=10)
            with lock:
                waiting[user] = time.perf_counter()
            n += 1
            time.sleep(max(0.0, interval - (time.perf_counter() - tick)))
        time.sleep(5)
        stop.set()
    finally:
        for process in (job, server):
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)
    return samples


def main() -> None:
    # Two backlog runs, each on its own data dir: run to run, this machine moves ~20%.
    dirs = [fresh_dir(f"speed-{n}") / "data" for n in (1, 2)]
    runs = [backlog(d) for d in dirs]
    data = dirs[0]
    events, reference_s = python_loop(EventLog(load_config(data, environ={}).log_dir))
    samples = freshness(data)
    print(f"# speed benchmark — {conditions()}")
    print("JVM + job start, from `saiki speed run` launched (target <= 15 s):")
    for n, run in enumerate(runs, 1):
        print(
            f"  run {n}: job deployed and reading (sink's first status) {run.running_s:.1f}s; "
            f"first tiles written through Feast {run.first_write_s:.1f}s"
        )
    print(
        f"{'throughput on a backlog of ' + f'{events:,} events':<66}{'seconds':>9}{'events/s':>12}"
    )
    for n, run in enumerate(runs, 1):
        rows = (
            ("from reading to caught up", run.done_s - run.running_s, run.rate_from_running),
            (
                "from the first write to caught up",
                run.done_s - run.first_write_s,
                run.rate_from_first_write,
            ),
        )
        for label, seconds, rate in rows:
            print(f"{f'Flink job + Feast sink, run {n}, {label}':<66}{seconds:>9.1f}{rate:>12,.0f}")
    print(
        f"{'plain Python loop, same tiles (no I/O)':<66}{reference_s:>9.1f}"
        f"{events / reference_s:>12,.0f}"
    )
    for line in freshness_report(samples):
        print(line)


def freshness_report(samples: list[tuple[float, float]], window_s: int = 30) -> list[str]:
    """The freshness percentiles overall, then per ``window_s`` of the stream (a drift shows)."""
    lat = np.array([latency for _, latency in samples]) * 1000
    sent = np.array([at for at, _ in samples])

    def percentiles(values: np.ndarray[Any, Any]) -> str:
        return ", ".join(f"p{q} {np.percentile(values, q):,.0f} ms" for q in (50, 95, 99))

    lines = [
        f"freshness, {RATE} events/s offered for {FRESHNESS_SECONDS}s ({len(samples)} batches "
        f"of {RATE // BATCHES_PER_SECOND}, one log segment each): Ingest ack -> tile readable "
        f"{percentiles(lat)} (target p95 <= 2000 ms)"
    ]
    for start in range(0, FRESHNESS_SECONDS, window_s):
        inside = (sent >= start) & (sent < start + window_s)
        if inside.any():
            lines.append(f"  {start:>4}-{start + window_s:<4}s: {percentiles(lat[inside])}")
    return lines


if __name__ == "__main__":
    main()
