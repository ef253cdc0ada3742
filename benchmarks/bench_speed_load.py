"""What the speed job costs under steady traffic, setting against setting, in one run.

On ``bench_live``'s data (prepared if missing, as ``bench_speed_idle`` does): for each
variant in turn, ``saiki speed run`` is started (restored from the previous variant's
checkpoint: the settings compared are no part of the job's state), left ``WARM_S`` to
start and catch up, then measured over ``MEASURE_S``, while this process appends
``CALLS_PER_S`` segments a second of ``EVENTS_PER_CALL`` impressions each straight to
the event log (what 20 ``Ingest`` calls/s × 50 events write, without a server).
Printed per variant and round: the CPU of the JVM and of the driver (``saiki speed
run``, which archives what the job has read), the events the sink reported read over
the window, the newest checkpoint's size and the segments left in the listed folder.
Rounds alternate the variants' order, so that drift on this shared host falls on both.

    python -m benchmarks.bench_speed_load
    LOAD_VARIANTS="2 s:SPEED_CHECKPOINT_INTERVAL_MS=2000;10 s:SPEED_CHECKPOINT_INTERVAL_MS=10000" \\
        python -m benchmarks.bench_speed_load

A variant is ``label:KEY=VALUE,KEY=VALUE`` (``SAIKI_`` settings without the prefix).

Flink's file source keeps the path of every file it has read in its state until the job
starts fresh (at each handoff under ``saiki up``), and writes that set into every
checkpoint. ``LOAD_INFLATE=N`` then appends N one-event segments with the job running
(what N more ``Ingest`` calls since the last handoff leave), waits until it has read
them, and measures the first variant again with that larger set:

    LOAD_INFLATE=60000 python -m benchmarks.bench_speed_load
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import psutil

from benchmarks.common import (
    conditions,
    cpu_counters,
    start_speed,
    steal_since,
)
from benchmarks.live_traffic import live_data
from saiki.core.config import load_config
from saiki.core.eventlog import EventLog
from saiki.core.ingest import Ingestor
from saiki.core.timeutil import now_ms
from saiki.feature_repo.online import read_status
from saiki.speed.job import latest_checkpoint
from saiki.speed.shape import checkpoint_root

DEFAULT_VARIANTS = (
    "defaults:;"
    "no object reuse:SPEED_OBJECT_REUSE=false;"
    "checkpoint 10 s:SPEED_CHECKPOINT_INTERVAL_MS=10000"
)
VARIANTS = os.environ.get("LOAD_VARIANTS", DEFAULT_VARIANTS)
ROUNDS = int(os.environ.get("LOAD_ROUNDS", "2"))
WARM_S = float(os.environ.get("LOAD_WARM_S", "40"))
MEASURE_S = float(os.environ.get("LOAD_MEASURE_S", "60"))
INFLATE = int(os.environ.get("LOAD_INFLATE", "0"))
CALLS_PER_S, EVENTS_PER_CALL = 20, 50


def parse_variants(text: str) -> list[tuple[str, dict[str, str]]]:
    """``label:K=V,K=V;label:...`` as (label, settings) pairs."""
    variants = []
    for part in filter(None, (p.strip() for p in text.split(";"))):
        label, _, settings = part.partition(":")
        pairs = (s.split("=", 1) for s in settings.split(",") if s.strip())
        variants.append((label, {k.strip(): v.strip() for k, v in pairs}))
    return variants


class Feeder(threading.Thread):
    """Appends ``CALLS_PER_S`` segments a second of fresh impressions to the log."""

    def __init__(self, data: Path) -> None:
        super().__init__(daemon=True)
        self._ingestor = Ingestor(EventLog(load_config(data, environ={}).log_dir))
        self._halt = threading.Event()
        self.calls = 0

    def run(self) -> None:
        tick = 1.0 / CALLS_PER_S
        next_at = time.monotonic()
        while not self._halt.is_set():
            at = now_ms()
            lines = [
                json.dumps(
                    {
                        "event_id": f"load-{at}-{self.calls}-{n}",
                        "event_time": at,
                        "user_id": f"load-u{(self.calls * 7 + n) % 2000}",
                        "item_id": f"i{(self.calls + n * 13) % 800}",
                        "event_type": "IMPRESSION",
                    }
                ).encode()
                for n in range(EVENTS_PER_CALL)
            ]
            self._ingestor.ingest_lines(lines, "bench_speed_load")
            self.calls += 1
            next_at += tick
            self._halt.wait(max(0.0, next_at - time.monotonic()))

    def stop(self) -> None:
        self._halt.set()
        self.join(10)
        self._ingestor.close()


def cpu_seconds(processes: list[psutil.Process]) -> float:
    total = 0.0
    for process in processes:
        with contextlib.suppress(psutil.Error):
            total += sum(process.cpu_times()[:2])
    return total


def events_read(data: Path) -> int:
    status = read_status(data / "speed")
    return status.events_seen if status is not None else 0


def stop_job(job: subprocess.Popen[bytes]) -> None:
    os.killpg(job.pid, signal.SIGTERM)
    job.wait(60)


def inflate(data: Path, segments: int) -> float:
    """Append ``segments`` one-event segments while the job runs; seconds until it has
    read them all."""
    job = start_speed(data, {})
    ingestor = Ingestor(EventLog(load_config(data, environ={}).log_dir))
    started = time.monotonic()
    try:
        time.sleep(WARM_S)
        target = events_read(data) + segments
        for n in range(segments):
            at = now_ms()
            line = {"event_id": f"inflate-{at}-{n}", "event_time": at, "user_id": f"load-u{n}"}
            line |= {"item_id": f"i{n % 800}", "event_type": "IMPRESSION"}
            ingestor.ingest_lines([json.dumps(line).encode()], "bench_speed_load")
        while events_read(data) < target:
            time.sleep(1)
        return time.monotonic() - started - WARM_S
    finally:
        ingestor.close()
        stop_job(job)


def measure(data: Path, label: str, settings: dict[str, str]) -> str:
    job = start_speed(data, settings)
    feeder = Feeder(data)
    feeder.start()
    try:
        time.sleep(WARM_S)
        root = psutil.Process(job.pid)
        javas = [p for p in root.children(recursive=True) if p.name() == "java"]
        jvm0, driver0, read0 = cpu_seconds(javas), cpu_seconds([root]), events_read(data)
        counters = cpu_counters()
        time.sleep(MEASURE_S)
        jvm = (cpu_seconds(javas) - jvm0) / MEASURE_S
        driver = (cpu_seconds([root]) - driver0) / MEASURE_S
        read = (events_read(data) - read0) / MEASURE_S
        stolen = steal_since(counters)
    finally:
        try:
            feeder.stop()
        finally:
            stop_job(job)
    config = load_config(data, environ={})
    newest = latest_checkpoint(checkpoint_root(data, config.speed.checkpoint_dir))
    size = sum(f.stat().st_size for f in newest.iterdir()) / 1e6 if newest else 0.0
    listed = len(EventLog(config.log_dir).events.live_segments())
    return f"{label:<22} {jvm:6.3f} {driver:7.3f} {read:8.0f} {size:8.1f} {listed:7d} {stolen:6.1%}"


def main() -> None:
    data = live_data()
    variants = parse_variants(VARIANTS)
    print(f"# speed layer under load — {conditions()}")
    print(
        f"{CALLS_PER_S} segments/s x {EVENTS_PER_CALL} impressions appended to the log "
        f"({CALLS_PER_S * EVENTS_PER_CALL} events/s); each start restores the previous "
        f"checkpoint; warm-up {WARM_S:.0f} s, measured {MEASURE_S:.0f} s; {ROUNDS} rounds, "
        "order alternating; cores = CPU seconds per second over the window"
    )
    print(
        f"{'variant':<22} {'JVM':>6} {'driver':>7} {'read/s':>8} {'ckpt MB':>8} "
        f"{'listed':>7} {'steal':>6}"
    )
    for round_number in range(ROUNDS):
        order = variants if round_number % 2 == 0 else variants[::-1]
        for label, settings in order:
            print(measure(data, label, settings), flush=True)
    if INFLATE:
        seconds = inflate(data, INFLATE)
        print(f"# {INFLATE} one-event segments appended and read in {seconds:.0f} s")
        label, settings = variants[0]
        print(measure(data, f"{label}, +{INFLATE} paths", settings), flush=True)


if __name__ == "__main__":
    main()
