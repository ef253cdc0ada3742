"""What the speed job costs while no event arrives: the JVM's CPU against ``[speed]
monitor_ms``, how often Flink's source lists the log's folder.

On ``bench_live``'s data (run it first, or this prepares it: three simulated days and the
segments its ingest left): ``saiki speed run`` is started for each value of
``IDLE_MONITOR_MS`` (``200,500,2000``), left ``WARM_S`` to catch up (500 impressions
are ingested ``FIRST_EVENTS_S`` after the start, as service would send),
then the JVM's CPU (user + system) is measured over ``MEASURE_S`` with nothing ingested.
The segment files in the listed folder are counted at the start and after each
measurement: each listing costs per file, which is what archiving the segments the job
has read bounds (docs/speed.md).

    python -m benchmarks.bench_speed_idle
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import psutil

from benchmarks.common import conditions, start_speed
from benchmarks.live_traffic import live_data
from saiki.core.config import load_config
from saiki.core.eventlog import EventLog
from saiki.core.ingest import Ingestor
from saiki.core.ingest_files import ingest_files
from saiki.core.timeutil import now_ms

VALUES = [int(v) for v in os.environ.get("IDLE_MONITOR_MS", "200,500,2000").split(",")]
WARM_S, MEASURE_S = 35.0, 20.0
FIRST_EVENTS_S = 12.0  # after the start: the JVM is up and the job reading


def feed(data: Path) -> None:
    """Ingest 500 impressions at now, under event ids of their own."""
    path = data.parent / "idle-feed.jsonl"
    at = now_ms()
    path.write_text(
        "".join(
            json.dumps(
                {
                    "event_id": f"idle-{at}-{n}",
                    "event_time": at,
                    "user_id": f"u{n % 100}",
                    "item_id": f"i{n % 37}",
                    "event_type": "IMPRESSION",
                }
            )
            + "\n"
            for n in range(500)
        )
    )
    ingest_files(Ingestor(EventLog(load_config(data, environ={}).log_dir)), [path], workers=1)


def jvm_cores(root: psutil.Process, seconds: float) -> float:
    """CPU cores the Java processes under ``root`` used over ``seconds``."""
    javas = [p for p in root.children(recursive=True) if p.name() == "java"]
    before = sum(sum(p.cpu_times()[:2]) for p in javas)
    time.sleep(seconds)
    return (sum(sum(p.cpu_times()[:2]) for p in javas) - before) / seconds


def main() -> None:
    data = live_data()
    events = EventLog(load_config(data, environ={}).log_dir).events
    print(f"# idle speed job — {conditions()}")
    print(
        f"{len(events.segments())} segments in the log, {len(events.live_segments())} in the "
        f"folder the source lists; warm-up {WARM_S:.0f} s, measured {MEASURE_S:.0f} s"
    )
    for monitor_ms in VALUES:
        job = start_speed(data, {"SPEED_MONITOR_MS": str(monitor_ms)})
        try:
            time.sleep(FIRST_EVENTS_S)
            # A few events, read by the job: a restored job learns from its first record
            # what it had read, and archives it with what it reads now (docs/speed.md).
            feed(data)
            time.sleep(WARM_S - FIRST_EVENTS_S)
            cores = jvm_cores(psutil.Process(job.pid), MEASURE_S)
        finally:
            os.killpg(job.pid, signal.SIGTERM)
            job.wait(60)
        print(
            f"monitor_ms {monitor_ms:>5}: JVM {cores:.3f} cores with no event arriving; "
            f"{len(events.live_segments())} segments listed at the end"
        )


if __name__ == "__main__":
    main()
