"""Where the speed job's CPU goes under steady traffic, thread by thread.

On ``bench_live``'s data (prepared if missing): ``saiki speed run`` is started, fed as
in ``bench_speed_load`` (``CALLS_PER_S`` segments a second of ``EVENTS_PER_CALL``
impressions appended to the log), left ``LOAD_WARM_S`` to start and catch up, then every
thread of its JVM is measured over ``LOAD_MEASURE_S``: CPU seconds per second from
``/proc/<pid>/task``, named by the JVM's own thread dump (``jcmd <pid> Thread.print``,
matched on the native id). Threads the JVM does not know (the Python threads pemja's
interpreter starts, e.g. the sink's writer) keep their kernel name, marked ``[native]``.
Threads of one pool (``GC Thread#0``, ``#1``...) are summed under one name.

    python -m benchmarks.speed_threads
    LOAD_SHAPE=10x100 python -m benchmarks.speed_threads   # 10 segments/s of 100 events

``LOAD_SHAPE=SxE`` sets the segments per second and events per segment (default 20x50,
what 20 ``Ingest`` calls a second of 50 events write with no linger), so that the cost
per segment and per event can be told apart at one event rate.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections import defaultdict
from pathlib import Path

import psutil

from benchmarks import bench_speed_load as load
from benchmarks.common import conditions, cpu_counters, start_speed, steal_since
from benchmarks.live_traffic import live_data

WARM_S = float(os.environ.get("LOAD_WARM_S", "40"))
MEASURE_S = float(os.environ.get("LOAD_MEASURE_S", "60"))
SHAPES = os.environ.get("LOAD_SHAPE", "20x50").split(",")
TOP = int(os.environ.get("LOAD_TOP", "25"))
_TICKS = os.sysconf("SC_CLK_TCK")
_DUMP_LINE = re.compile(r'^"(?P<name>[^"]*)".*\bnid=(?P<nid>0x[0-9a-f]+)', re.MULTILINE)


def thread_ticks(pid: int) -> dict[int, tuple[str, int]]:
    """Each thread's kernel name and user + system clock ticks so far."""
    threads = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        threads[int(task.name)] = (comm, int(fields[11]) + int(fields[12]))
    return threads


def java_names(pid: int) -> dict[int, str]:
    """Native thread id → the JVM's name for the thread, from a thread dump."""
    dump = subprocess.run(
        ["jcmd", str(pid), "Thread.print"], check=True, capture_output=True, text=True, timeout=60
    ).stdout
    return {int(m["nid"], 16): m["name"] for m in _DUMP_LINE.finditer(dump)}


def pool_name(name: str) -> str:
    """``GC Thread#1`` → ``GC Thread#*``; a Flink task's attempt suffix is kept."""
    return re.sub(r"(?<=#)\d+$|(?<=-)\d+$|(?<=Thread)\d+$", "*", name)


def profile(data: Path, segments_per_s: int, events_per_segment: int) -> None:
    load.CALLS_PER_S, load.EVENTS_PER_CALL = segments_per_s, events_per_segment
    job = start_speed(data, {})
    feeder = load.Feeder(data)
    feeder.start()
    try:
        time.sleep(WARM_S)
        root = psutil.Process(job.pid)
        jvm = next(p for p in root.children(recursive=True) if p.name() == "java")
        before, driver0 = thread_ticks(jvm.pid), sum(root.cpu_times()[:2])
        read0, counters = load.events_read(data), cpu_counters()
        time.sleep(MEASURE_S)
        after, driver = thread_ticks(jvm.pid), sum(root.cpu_times()[:2]) - driver0
        read, stolen = load.events_read(data) - read0, steal_since(counters)
        names = java_names(jvm.pid)
    finally:
        try:
            feeder.stop()
        finally:
            load.stop_job(job)
    cores: dict[str, float] = defaultdict(float)
    for tid, (comm, ticks) in after.items():
        name = names.get(tid, f"{comm} [native]")
        cores[pool_name(name)] += (ticks - before.get(tid, (comm, 0))[1]) / _TICKS / MEASURE_S
    total = sum(cores.values())
    print(
        f"\n{segments_per_s} segments/s x {events_per_segment} events: JVM {total:.3f} cores, "
        f"driver {driver / MEASURE_S:.3f}, read {read / MEASURE_S:.0f} events/s, "
        f"steal {stolen:.1%}; {len(after)} threads"
    )
    for name, value in sorted(cores.items(), key=lambda kv: -kv[1])[:TOP]:
        print(f"  {value:6.3f}  {value / total:6.1%}  {name[:110]}")


def main() -> None:
    data = live_data()
    print(f"# the speed job's threads under load — {conditions()}")
    print(f"warm-up {WARM_S:.0f} s, measured {MEASURE_S:.0f} s; cores = CPU s per s")
    for shape in SHAPES:
        segments, _, events = shape.partition("x")
        profile(data, int(segments), int(events))


if __name__ == "__main__":
    main()
