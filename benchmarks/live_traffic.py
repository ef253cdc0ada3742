"""The moving parts of the live benchmarks (`bench_live`, `bench_soak`, `fault_drill`,
`bench_speed_idle`): their data, the ingest driver, and the speed layer's priority
(its CPUs are `[speed] cpus`)."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.bench_speed import saiki
from benchmarks.common import DATA, fresh_dir, impressions
from saiki.core.config import load_config
from saiki.core.eventlog import EventLog
from saiki.core.timeutil import MS_PER_DAY, floor_minute, format_iso, now_ms
from saiki.feature_repo.online import read_status
from saiki.feature_repo.spec import FEATURE_NAMES
from saiki.serving.client import SaikiClient

USERS = [f"u{n}" for n in range(2_000)]
ITEMS = [f"i{n}" for n in range(800)]
CALLS_PER_S, EVENTS_PER_CALL = 20, 50


def live_data() -> Path:
    """``bench_live``'s data folder, prepared first if it is not there (the scripts that
    measure the speed job under load share it)."""
    data = DATA / "live" / "data"
    if not (data / "views" / "CURRENT").exists():
        fresh_dir("live")
        data.mkdir(parents=True)
        prepare(data)
    return data


def prepare(data: Path) -> None:
    """History to now, a view 24 h back, a model; then the speed layer catches up."""
    end = floor_minute(now_ms())
    traffic = data.parent / "live-traffic.jsonl"
    steps = [
        (
            *("simulate", "--users", "2000", "--items", "800", "--days", "3", "--seed", "8"),
            *("--end", format_iso(end), "--out", str(traffic)),
        ),
        ("ingest", str(traffic)),
        ("batch", "run", "--as-of", format_iso(end - MS_PER_DAY)),
        ("train", "--promote-if-better"),
    ]
    for step in steps:
        done = saiki(data, *step)
        if done.wait() != 0:
            raise SystemExit(f"saiki {step[0]} failed")


def _drive(target: str, stop: Any, results: Any, held: Any, holding: Any) -> None:
    """The ingest driver, in its own process (so its GIL is not the measuring client's):
    20 Ingest calls/s of 50 events for random users and items, and freshness probes:
    after an acked call, the time until GetFeatures serves one of its users' new count."""
    client = SaikiClient(target, timeout_s=10)
    rng = np.random.default_rng(3)
    sent = 0
    freshness: list[tuple[float, float]] = []  # (when, ms)

    def served_impressions(user: str) -> float:
        reply = client.get_features("user", [user])
        return float(reply.entities[0].values["impressions_1h"])

    period = 1 / CALLS_PER_S
    tick = time.perf_counter()
    probe_at = 0.0
    while not stop.is_set():
        if held.is_set():  # the servers are restarting: nothing is sent meanwhile
            holding.set()
            time.sleep(0.05)
            tick = time.perf_counter()
            continue
        holding.clear()
        now = now_ms()
        users = rng.choice(USERS, EVENTS_PER_CALL)
        items = rng.choice(ITEMS, EVENTS_PER_CALL)
        events = impressions(users, items, f"live-{os.getpid()}", sent, now - 1_000)
        probe = time.perf_counter() >= probe_at
        if probe:
            user = str(users[0])
            before = served_impressions(user)
        client.ingest(events)
        acked = time.perf_counter()
        sent += len(events)
        if probe:
            probe_at = acked + 1.0
            wanted = before + int((users == users[0]).sum())
            while served_impressions(user) < wanted and time.perf_counter() - acked < 10:
                time.sleep(0.01)
            freshness.append((time.time(), (time.perf_counter() - acked) * 1000))
        tick += period
        time.sleep(max(0.0, tick - time.perf_counter()))
    client.close()
    results.put((sent, freshness))


class Ingest:
    """The driver process: started, stopped, and what it measured."""

    def __init__(self, target: str) -> None:
        context = multiprocessing.get_context("spawn")
        self._stop = context.Event()
        self._results = context.Queue()
        self._held, self._holding = context.Event(), context.Event()
        self._process = context.Process(
            target=_drive, args=(target, self._stop, self._results, self._held, self._holding)
        )
        self.sent = 0
        self.freshness_ms: list[tuple[float, float]] = []  # (when, ms)

    def start(self) -> None:
        self._process.start()

    def hold(self) -> None:
        """Send nothing until :meth:`resume` (while the servers restart); returns once the
        driver has finished the call or freshness probe it was in."""
        self._held.set()
        if not self._holding.wait(30):
            raise SystemExit("the ingest driver did not pause")

    def resume(self) -> None:
        """Send again after :meth:`hold`."""
        self._held.clear()

    @property
    def pid(self) -> int:
        """The driver process's id (once started)."""
        assert self._process.pid is not None
        return self._process.pid

    def stop(self) -> None:
        self._stop.set()
        self.sent, self.freshness_ms = self._results.get(timeout=60)
        self._process.join(30)


def renice(pid: int, niceness: int | str) -> None:
    """Set the niceness of every thread of a process and its descendants (Linux keeps it
    per thread: a process's own renice would leave the JVM's threads as they were);
    ``"idle"``: Linux's SCHED_IDLE policy instead, run only on a core nothing else wants
    (a waking thread of normal policy preempts it at once)."""
    import psutil

    root = psutil.Process(pid)
    for process in [root, *root.children(recursive=True)]:
        for thread in process.threads():
            with contextlib.suppress(ProcessLookupError):  # a thread that ended meanwhile
                if niceness == "idle":
                    os.sched_setscheduler(thread.id, os.SCHED_IDLE, os.sched_param(0))
                else:
                    os.sched_setscheduler(thread.id, os.SCHED_OTHER, os.sched_param(0))
                    os.setpriority(os.PRIO_PROCESS, thread.id, int(niceness))


def hold_threads(pid: int, cpus: set[int] | frozenset[int], *, descendants: bool = True) -> None:
    """Hold every thread of a process (and of its descendants) to ``cpus``; threads started
    later inherit it from the thread that starts them."""
    import psutil

    root = psutil.Process(pid)
    for process in [root, *(root.children(recursive=True) if descendants else [])]:
        for thread in process.threads():
            with contextlib.suppress(ProcessLookupError):  # a thread that ended meanwhile
                os.sched_setaffinity(thread.id, cpus)


def wait_caught_up(data: Path, head: int, timeout_s: float = 300) -> None:
    """Wait until the speed layer on ``data`` has read ``head`` events and written every
    row they changed."""
    deadline = time.monotonic() + timeout_s
    while True:
        status = read_status(data / "speed")
        if status is not None and status.pending_rows == 0 and status.events_seen >= head:
            return
        if time.monotonic() > deadline:
            raise SystemExit("the speed layer did not catch up")
        time.sleep(1)


def restart_speed(
    data: Path, speed: subprocess.Popen[str], settings: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    """Stop ``saiki speed run`` and start it again from its checkpoint with ``settings``
    (``bench_speed.saiki``'s); return once it has read what the log held at the stop."""
    speed.terminate()
    speed.wait(120)
    head = EventLog(load_config(data, environ={}).log_dir).events.head()
    speed = saiki(data, "speed", "run", settings=settings)
    wait_caught_up(data, head)
    return speed


def feast_item_reads(data: Path) -> list[tuple[str, Callable[[], None]]]:
    """Feast's two reads of 100 items' features on ``data``'s store, each call on the next
    of 64 fixed key sets: ``get_online_features`` (its generic path, batch and speed
    views) and the online store's own ``online_read`` through Feast's provider (the speed
    view), the baselines of the live benchmarks."""
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    from saiki.feature_repo.feast_repo import open_store

    store = open_store(load_config(data, environ={}))
    rng = np.random.default_rng(12)
    keys = [list(rng.choice(ITEMS, 100, replace=False)) for _ in range(64)]
    features = [f"item_batch:{n}" for n in FEATURE_NAMES] + ["item_speed:tiles"]
    view = store.get_feature_view("item_speed")
    provider = store._get_provider()  # Feast's own online store read, as Feast calls it
    turn = [0]

    def generic() -> None:
        turn[0] += 1
        store.get_online_features(
            features=features, entity_rows=[{"item_id": i} for i in keys[turn[0] % 64]]
        ).to_dict()

    def raw() -> None:
        turn[0] += 1
        entity_keys = [
            EntityKey(join_keys=["item_id"], entity_values=[Value(string_val=i)])
            for i in keys[turn[0] % 64]
        ]
        provider.online_read(store.config, view, entity_keys)

    return [("Feast get_online_features", generic), ("Feast online_read", raw)]


@contextmanager
def paused(pid: int) -> Iterator[None]:
    """A process and its descendants stopped (SIGSTOP) for the block, then resumed. Keep
    the block short: a JVM stopped for longer than Flink's heartbeat timeout (50 s) fails
    its own job on waking (its JobManager no longer hears its TaskManager)."""
    import psutil

    root = psutil.Process(pid)
    processes = [root, *root.children(recursive=True)]
    for process in processes:
        process.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        for process in reversed(processes):
            process.send_signal(signal.SIGCONT)


@contextmanager
def burning(
    niceness: int | str, count: int = 2, cpus: frozenset[int] | None = None
) -> Iterator[None]:
    """``count`` processes that only spin, at ``niceness`` (``renice``'s values), held to
    ``cpus`` if given, for the block: CPU work with none of the speed layer's writes, to
    tell what a background process's CPU alone costs serving's tail at that priority."""
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        for spinner in spinners:
            renice(spinner.pid, niceness)
            if cpus is not None:
                hold_threads(spinner.pid, cpus)
        yield
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()
