"""Child processes that die with their parent, at the priority it asks for.

``saiki up`` starts every child with ``SAIKI_PARENT_PID`` set; the child asks Linux for
``SIGKILL`` when its parent dies (``prctl(PR_SET_PDEATHSIG)``) first thing in
``saiki.cli.main``, rather than in a ``preexec_fn``, which is unsafe in a parent that
runs threads. If the parent is already gone by then, the child exits at once.
"""

from __future__ import annotations

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
