"""Child processes that die with their parent, at the priority and on the CPUs asked for.

``saiki up`` starts every child with ``SAIKI_PARENT_PID`` set; the child asks Linux for
``SIGKILL`` when its parent dies (``prctl(PR_SET_PDEATHSIG)``) first thing in
``saiki.cli.main``, rather than in a ``preexec_fn``, which is unsafe in a parent that
runs threads. If the parent is already gone by then, the child exits at once.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
import sys

PARENT_ENV = "SAIKI_PARENT_PID"
NICE_ENV = "SAIKI_NICE"  # a supervisor's way to start a child at a lower priority
_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """If started by a supervisor, be killed when it dies (Linux; a no-op elsewhere)."""
    wanted = os.environ.get(PARENT_ENV)
    if not wanted or not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != int(wanted):  # the parent died before the prctl took effect
        os._exit(1)


def lower_priority(increment: int) -> None:
    """Raise this process's niceness by ``increment`` (0: leave it); threads and children
    started from now on inherit it. Background work (the speed layer's JVM, scheduled
    jobs) so yields the cores to request threads, which then wait less for a core."""
    if increment > 0:
        os.nice(increment)


def nice_from_environment() -> None:
    """Apply the niceness a supervisor asked for in ``SAIKI_NICE``."""
    wanted = os.environ.get(NICE_ENV, "")
    if wanted.isdigit():
        lower_priority(int(wanted))


def parse_cpus(text: str) -> frozenset[int]:
    """``"1"``, ``"0-1"``, ``"0,2-3"`` as CPU numbers; ``""`` as none (no restriction).

    Raises ``ValueError`` saying what is wrong with the list.
    """
    cpus: set[int] = set()
    for part in filter(None, (p.strip() for p in text.split(","))):
        first, dash, last = part.partition("-")
        try:
            low, high = int(first), int(last if dash else first)
        except ValueError:
            raise ValueError(f"{part!r} is not a CPU number or a range such as 0-1") from None
        if low < 0 or high < low:
            raise ValueError(f"{part!r}: CPU numbers are at least 0, a range low-high")
        cpus.update(range(low, high + 1))
    return frozenset(cpus)


def usable_cpus(text: str) -> frozenset[int]:
    """The CPUs of ``text`` (``parse_cpus``), checked against those this process may use
    now; raises ``ValueError`` naming any it may not (or any list where CPUs cannot be
    chosen: Linux only)."""
    cpus = parse_cpus(text)
    if not cpus:
        return cpus
    if not hasattr(os, "sched_setaffinity"):
        raise ValueError(f"cannot hold a process to CPUs {text!r} on {sys.platform}")
    allowed = os.sched_getaffinity(0)
    if missing := sorted(cpus - allowed):
        raise ValueError(
            f"CPU(s) {missing} are not available to this process (it may use {sorted(allowed)})"
        )
    return cpus


def hold_to_cpus(text: str) -> frozenset[int]:
    """Hold this process to the CPUs of ``text`` (``parse_cpus``; empty: leave it): every
    thread it has now, and so every thread and child it starts from now on, which inherit
    their creator's affinity (a JVM started afterwards also sizes its GC and compiler
    threads to them). Returns the CPUs held to (empty when left alone).

    Raises ``ValueError`` naming any CPU this process may not use (Linux; elsewhere a
    non-empty list is an error too, since it cannot be honoured).
    """
    cpus = usable_cpus(text)
    if not cpus:
        return cpus
    for task in os.listdir("/proc/self/task"):  # Linux keeps the affinity per thread
        with contextlib.suppress(ProcessLookupError):  # a thread that ended meanwhile
            os.sched_setaffinity(int(task), cpus)
    return cpus
