"""What a fresh speed job pays to re-read the log after a handoff, per file and per event.

After each batch recompute ``saiki up`` starts the speed job afresh, and it re-reads every
event since the new cutoff from the archive: in service that is minutes of ``Ingest``
calls, one segment of about fifty events each. Flink's file source pays for each file
(a split handed over, a reader opened), so the archive merges runs of small segments
into one (``core/eventlog.py``). Side by side in one run, on the same events:

* **as written**: the events as ``Ingest`` calls of ``REPLAY_EVENTS_PER_SEGMENT`` (50)
  events each, one segment each, as a job re-read them before the archive merged;
* **merged by the archive**: the same segments after ``Topic.archive`` (what the running
  archive does every few seconds), brought back for the fresh job.

For each: ``saiki speed run --until-idle --fresh`` timed from launch to the job reading
and to every event read and every changed row written, and the events a second from
reading; also what merging cost. Rounds alternate the two (``REPLAY_ROUNDS``, 2).
    python -m benchmarks.bench_speed_replay
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from benchmarks.bench_speed import BacklogRun, fresh_run
from benchmarks.common import conditions, cpu_counters, fresh_dir, steal_since
from saiki.core.config import load_config
from saiki.core.eventlog import EventLog
from saiki.core.ingest import Ingestor
from saiki.core.ingest_files import ingest_files
from saiki.core.timeutil import now_ms
from saiki.simulator import TrafficOptions, World, write_jsonl

DAYS = float(os.environ.get("REPLAY_DAYS", "0.5"))  # about 350,000 events
EVENTS_PER_SEGMENT = int(os.environ.get("REPLAY_EVENTS_PER_SEGMENT", "50"))
ROUNDS = int(os.environ.get("REPLAY_ROUNDS", "2"))
BYTES_PER_EVENT = 186  # the simulator's lines, on average: chunks of about N events


def as_written(data: Path) -> int:
    """The traffic ingested in chunks of about ``EVENTS_PER_SEGMENT`` events; the head."""
    traffic = data.parent / "replay-traffic.jsonl"
    end = (now_ms() // 60_000) * 60_000
    write_jsonl(World(20_000, 2_000, seed=5), TrafficOptions(days=DAYS, end_ms=end), traffic)
    log = EventLog(load_config(data, environ={}).log_dir)
    ingestor = Ingestor(log)
    try:
        ingest_files(ingestor, [traffic], chunk_bytes=EVENTS_PER_SEGMENT * BYTES_PER_EVENT)
    finally:
        ingestor.close()  # its id index closed: nothing of it changes while copied
    traffic.unlink()
    return log.events.head()


def copy_of(source: Path, data: Path, merge: bool) -> tuple[int, float]:
    """``source`` copied to ``data`` (each run gets its own: a run's own archive merges
    what it read), its log archived whole (merged) when ``merge``, as the running archive
    leaves it: (segments, seconds the merge took)."""
    shutil.rmtree(data, ignore_errors=True)
    shutil.copytree(source, data)
    events = EventLog(load_config(data, environ={}).log_dir).events
    started = time.perf_counter()
    if merge:
        events.archive(events.live_segments())
    return len(events.segments()), time.perf_counter() - started


def row(label: str, files: int, run: BacklogRun, steal: float) -> str:
    return (
        f"{label:<34}{files:>8,}{run.running_s:>10.1f}{run.done_s:>10.1f}"
        f"{run.rate_from_running:>12,.0f}{steal:>8.1%}"
    )


def main() -> None:
    print(f"# fresh re-read benchmark — {conditions()}")
    source = fresh_dir("replay/as-written")
    head = as_written(source)
    data = source.parent / "run"
    print(
        f"{head:,} events, ingested in chunks of about {EVENTS_PER_SEGMENT} events "
        "(one segment each)"
    )
    print(
        f"{'':<34}{'files':>8}{'reading':>10}{'done':>10}{'ev/s read':>12}{'steal':>8}"
        "   (seconds from launch)"
    )
    for round_ in range(1, ROUNDS + 1):
        for label, merge in (("as written", False), ("merged by the archive", True)):
            files, took = copy_of(source, data, merge)
            stamp = cpu_counters()
            run = fresh_run(data, head)
            print(row(f"round {round_}, {label}", files, run, steal_since(stamp)), flush=True)
            if merge:
                print(f"    (the merge: {took:.1f} s, {took / head * 1e6:.1f} µs an event)")
    shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    main()
