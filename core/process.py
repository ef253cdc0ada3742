"""Child processes that die with their parent.

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
