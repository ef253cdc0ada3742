"""Soak: ``saiki up`` under steady traffic for an hour, measured per window.

Set-up: one simulated day of history up to now (2,000 users, 800 items), ingested, a batch
view, a model trained and promoted; then ``saiki up`` (server with 1 worker, the speed
layer with a fixed JVM heap, ``-Xms = -Xmx``, so its RSS means something, and the
scheduler with ``recompute`` shortened so that several handoffs happen) on the machine's
two cores. A driver process sends 20 ``Ingest`` calls/s × 50 events, open loop (up to 8
in flight, like independent clients), to a server whose group commit lingers
``SOAK_LINGER_MS`` (200 ms: at most 5 segments a second; the server gets 8 threads, as
each call waiting for its group holds one); a thread of it
probes freshness once a second on a user of its own (one event acknowledged → served by
``GetFeatures``), so a slow probe never holds the offered rate back; this process sends
``Predict`` for 100 candidates, one call in flight, 10 calls/s.

Printed per window: CPU (cores, sampled per process twice a second, so a restarted part
counts from its start) and RSS (at the window's end) of ``saiki up``, the server, the
speed driver, its JVM and the scheduled jobs; ``Ingest`` calls acknowledged per second
and their acknowledgement time (what the linger adds);
segments in the folder Flink's source lists; the online store's bytes (the speed rows);
the size of the speed job's newest checkpoint (a full copy of its state) and the speed
rows the sink has removed in all (entities with no tile left since the oldest cutoff);
freshness p50/p95; ``Predict`` p99; failed calls; whether a recompute (handoff) ran:
``yes`` when one ended in the window, ``after`` when the speed job it restarted was still
catching up in it (more than ``CATCH_UP_S`` behind the log's head at some second: a
fresh job re-reads everything since the new cutoff), with the speed layer's greatest lag
behind the head in the window; and the host's steal over the window (the share of the
machine's CPU time the hypervisor gave to others: on a shared host it comes and goes, and
slows every process here); last, the scheduled jobs that ran in the window with the
seconds each ran in it (from the jobs' status records, sampled each second), so a window's
figures can be tied to the job that overlapped them.

    python -m benchmarks.bench_soak                      # 60 min, 5-min windows
    SOAK_MINUTES=15 SOAK_WINDOW_S=150 SOAK_RECOMPUTE=5m python -m benchmarks.bench_soak
    SOAK_SPEED_CPUS=1 python -m benchmarks.bench_soak    # the speed layer held to CPU 1
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import psutil

from benchmarks.common import (
    PROJECT,
    conditions,
    cpu_counters,
    fresh_dir,
    impressions,
    steal_since,
)
from benchmarks.live_traffic import ITEMS, USERS, prepare
from benchmarks.soak_watch import (
    JobRuns,
    Sampler,
    folder_bytes,
    jobs_in,
    watch_jobs,
    watch_lag,
)
from saiki.core.config import load_config
from saiki.core.eventlog import EventLog
from saiki.core.timeutil import now_ms
from saiki.feature_repo.layout import online_store_path
from saiki.feature_repo.online import read_status
from saiki.ops.status import read_job
from saiki.serving.client import SaikiClient
from saiki.speed.job import latest_checkpoint
from saiki.v1 import events_pb2

PORT = 50_961
MINUTES = float(os.environ.get("SOAK_MINUTES", "60"))
WINDOW_S = float(os.environ.get("SOAK_WINDOW_S", "300"))
RECOMPUTE = os.environ.get("SOAK_RECOMPUTE", "10m")
HEAP = os.environ.get("SOAK_JVM_HEAP", "1g")
CALLS_PER_S, EVENTS_PER_CALL, PREDICTS_PER_S = 20, 50, 10
SENDERS = 8  # Ingest calls the driver may have in flight
# The server's group commit linger ([log] group_commit_ms): at most one segment per
# linger, so at 20 calls/s the folder Flink lists grows by 4 segments/s instead of 20.
LINGER_MS = int(os.environ.get("SOAK_LINGER_MS", "200"))
# [speed] cpus for the soak ("1": the speed layer's JVM and workers on CPU 1; empty: all).
SPEED_CPUS = os.environ.get("SOAK_SPEED_CPUS", "")
# Each Ingest call holds a gRPC thread until its group is durable, so a process
# acknowledges at most threads / linger calls a second: 8 threads / 0.2 s = 40 calls/s.
THREADS, MAX_IN_FLIGHT = 8, 32
# Behind the log's head by more than this, the speed job is catching up, not keeping up.
CATCH_UP_S = 5.0


def _drive(target: str, stop: Any, out: Any, parent: int) -> None:
    """Ingest at the fixed rate; a probe thread measures freshness once a second on its
    own users (one event each), so a slow probe never holds the offered rate back. Stops
    when the soak's process is gone (killed, it would otherwise go on sending to the
    port, and a next soak's server would take twice the traffic)."""
    client = SaikiClient(target, timeout_s=10)
    rng = np.random.default_rng(3)

    def probe() -> None:
        n = 0
        while not stop.wait(1.0):
            user = f"probe-{os.getpid()}-{n}"
            n += 1
            event = events_pb2.Event(
                event_id=f"{user}-e",
                user_id=user,
                item_id=ITEMS[0],
                event_type=events_pb2.IMPRESSION,
            )
            event.event_time.FromMilliseconds(now_ms() - 1_000)
            try:
                client.ingest([event])
                acked = time.perf_counter()
                while time.perf_counter() - acked < 60 and not stop.is_set():
                    reply = client.get_features("user", [user])
                    if reply.entities[0].values["impressions_1h"] >= 1:
                        break
                    time.sleep(0.01)
                out.put(("fresh", time.time(), (time.perf_counter() - acked) * 1000))
            except Exception as exc:
                out.put(("failed", time.time(), f"probe: {exc!r}"[:200]))

    prober = threading.Thread(target=probe, daemon=True)
    prober.start()

    def send(events: list[Any]) -> None:
        began = time.perf_counter()
        try:
            client.ingest(events)
            out.put(("acked", time.time(), (time.perf_counter() - began) * 1000))
        except Exception as exc:  # counted, and the soak goes on
            out.put(("failed", time.time(), f"ingest: {exc!r}"[:200]))

    # Open loop, as many independent clients are: a call is sent on its tick whether or
    # not the previous one was answered (up to SENDERS in flight), so the server's group
    # commit can share a segment between calls that arrive within one linger.
    senders = ThreadPoolExecutor(SENDERS)
    sent, period = 0, 1 / CALLS_PER_S
    tick = time.perf_counter()
    while not stop.is_set() and os.getppid() == parent:
        now = now_ms()
        events = impressions(
            rng.choice(USERS, EVENTS_PER_CALL),
            rng.choice(ITEMS, EVENTS_PER_CALL),
            f"soak-{os.getpid()}",
            sent,
            now - 1_000,
        )
        senders.submit(send, events)
        sent += len(events)
        tick += period
        time.sleep(max(0.0, tick - time.perf_counter()))
    stop.set()  # the probe thread too, if the loop ended because the parent died
    senders.shutdown(wait=True)
    prober.join(70)
    client.close()


def _drain(
    out: Any,
    fresh: list[tuple[float, float]],
    acked: list[tuple[float, float]],
    failures: list[tuple[float, str]],
    done: threading.Event,
) -> None:
    """Take the driver's reports as they come (a thread): freshness probes, acknowledged
    calls, failures. ``Queue.empty()`` is no way to drain a multiprocessing queue: it says
    empty while the driver's feeder thread still holds thousands of reports, which an
    earlier version of this script then never counted (its calls/s read 12.8 where the
    server's access log showed 20.7 calls acknowledged per second)."""
    while not done.is_set():
        try:
            kind, at, value = out.get(timeout=0.5)
        except queue.Empty:
            continue
        if kind == "fresh":
            fresh.append((at, value))
        elif kind == "acked":
            acked.append((at, value))
        else:
            failures.append((at, value))


def main() -> None:
    data = fresh_dir("soak") / "data"
    print(
        f"# soak: {MINUTES:g} min, windows of {WINDOW_S:g}s, recompute every {RECOMPUTE}, "
        f"group commit linger {LINGER_MS} ms, {THREADS} server threads, "
        f"[speed] cpus = {SPEED_CPUS!r}"
    )
    print(f"# {conditions()}")
    prepare(data)
    (data / "saiki.toml").write_text(
        f'[schedule]\nload = "5m"\nrecompute = "{RECOMPUTE}"\nmonitor = "15m"\nretrain = "1d"\n'
        f"[serving]\nport = {PORT}\nthreads = {THREADS}\nmax_in_flight = {MAX_IN_FLIGHT}\n"
        f"[log]\ngroup_commit_ms = {LINGER_MS}\n"
        f'[speed]\ncpus = "{SPEED_CPUS}"\n'
    )
    config = load_config(data, environ={})
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAIKI_")}
    env["JVM_ARGS"] = f"-Xms{HEAP} -Xmx{HEAP}"
    log = open(data.parent / "up.out", "wb")  # noqa: SIM115
    up = subprocess.Popen(
        [sys.executable, "-m", "saiki.cli.main", "--data-dir", str(data), "up"],
        cwd=PROJECT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    target = f"127.0.0.1:{PORT}"
    client = SaikiClient(target, timeout_s=10)
    deadline = time.monotonic() + 300
    while True:
        try:
            client.predict(USERS[0], ITEMS[:100])
            break
        except Exception:
            if time.monotonic() > deadline or up.poll() is not None:
                raise SystemExit("saiki up did not start serving") from None
            time.sleep(1)
    time.sleep(30)  # the speed layer catches up with the history
    context = multiprocessing.get_context("spawn")
    stop, out = context.Event(), context.Queue()
    driver = context.Process(target=_drive, args=(target, stop, out, os.getpid()))
    driver.start()
    predicts: list[tuple[float, float]] = []
    failures: list[tuple[float, str]] = []
    done = threading.Event()

    def predict_load() -> None:
        rng = np.random.default_rng(5)
        while not done.is_set():
            begin = time.perf_counter()
            try:
                client.predict(str(rng.choice(USERS)), list(rng.choice(ITEMS, 100, replace=False)))
                predicts.append((time.time(), (time.perf_counter() - begin) * 1000))
            except Exception as exc:
                failures.append((time.time(), f"predict: {exc!r}"[:200]))
            time.sleep(max(0.0, 1 / PREDICTS_PER_S - (time.perf_counter() - begin)))

    loader = threading.Thread(target=predict_load, daemon=True)
    loader.start()
    events_dir = EventLog(config.log_dir).events.directory
    online = online_store_path(data)
    roles = ("up", "server", "speed", "jvm", "jobs")
    head = "window  handoff  lag s  " + "  ".join(f"{r:>14}" for r in roles)
    print(
        head + "  calls/s  ack p50/p99 ms  segments  online MB  ckpt MB  removed"
        "  fresh p50/p95 ms  Predict p99  failed  steal  job runs"
    )
    lags: list[tuple[float, float]] = []
    lagging = threading.Thread(target=watch_lag, args=(config, lags, done), daemon=True)
    lagging.start()
    job_runs: JobRuns = {}
    watching = threading.Thread(target=watch_jobs, args=(config, job_runs, done), daemon=True)
    watching.start()
    fresh: list[tuple[float, float]] = []
    acked: list[tuple[float, float]] = []
    reports = threading.Thread(target=_drain, args=(out, fresh, acked, failures, done), daemon=True)
    reports.start()
    sampler = Sampler(psutil.Process(up.pid), roles)
    recomputes = read_job(data, "recompute")
    last_runs = recomputes.runs if recomputes else 0
    handed_off = False
    started = time.time()
    try:
        for window in range(int(MINUTES * 60 // WINDOW_S)):
            begin, counters = time.time(), cpu_counters()
            time.sleep(max(0.0, started + (window + 1) * WINDOW_S - time.time()))
            end = time.time()
            time.sleep(1.0)  # the reports of the window's last second arrive
            used = sampler.take()
            cells = [f"{used[r][0] / (end - begin):5.2f}c {used[r][1]:6.0f}M" for r in roles]
            job = read_job(data, "recompute")
            runs = job.runs if job else 0
            lag = max((v for t, v in lags if begin <= t < end), default=np.nan)
            label = "yes" if runs > last_runs else "no"
            if label == "no" and handed_off and lag > CATCH_UP_S:
                label = "after"
            handed_off = label != "no"
            last_runs = runs
            in_window = [v for t, v in fresh if begin <= t < end]
            p50, p95 = np.percentile(in_window, [50, 95]) if in_window else (np.nan, np.nan)
            p99 = np.percentile([v for t, v in predicts if begin <= t < end] or [np.nan], 99)
            failed = sum(1 for t, _ in failures if begin <= t < end)
            segments = sum(1 for p in events_dir.iterdir() if not p.name.startswith("_"))
            online_mb = online.stat().st_size / 2**20 if online.exists() else 0.0
            checkpoint = latest_checkpoint(data / "speed" / "checkpoints")
            ckpt_mb = folder_bytes(checkpoint) / 2**20 if checkpoint else 0.0
            status = read_status(data / "speed")
            removed = status.rows_removed if status else 0
            acks = [v for t, v in acked if begin <= t < end]
            rate = len(acks) / (end - begin)
            a50, a99 = np.percentile(acks, [50, 99]) if acks else (np.nan, np.nan)
            print(
                f"{window + 1:>6}  {label:>7}  {lag:5.0f}  {'  '.join(cells)}  "
                f"{rate:7.1f}  {a50:6.0f} / {a99:5.0f}  {segments:>8}  {online_mb:>9.1f}  "
                f"{ckpt_mb:>7.1f}  {removed:>7}  "
                f"{p50:7.0f} / {p95:6.0f}  "
                f"{p99:8.1f} ms  {failed:>6}  {steal_since(counters):5.1%}  "
                f"{jobs_in(job_runs, begin, end)}",
                flush=True,
            )
    finally:
        sampler.stop()
        done.set()
        stop.set()
        driver.join(60)
        os.killpg(up.pid, signal.SIGTERM)
        up.wait(120)
        log.close()
        client.close()
    for at, what in failures[:10]:
        print(f"# failed at {time.strftime('%H:%M:%S', time.gmtime(at))}: {what}")


if __name__ == "__main__":
    main()
