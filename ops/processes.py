"""The child processes of ``saiki up``: started in their own process group (killed with
their parent, see :mod:`saiki.core.process`), signalled as a group, found again by group,
and their logs rotated in place."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from saiki.core.config import SaikiConfig
from saiki.core.process import PARENT_ENV

LOG_MAX_BYTES = 20 * 1024 * 1024  # a log past this is rotated to <name>.log.1


def logs_dir(data_dir: Path) -> Path:
    """One log per part and per job."""
    return data_dir / "logs"


def saiki_argv(config: SaikiConfig, *argv: str) -> list[str]:
    """The command line of ``saiki --data-dir D ARGV…`` in this interpreter."""
    return [sys.executable, "-m", "saiki.cli.main", "--data-dir", str(config.data_dir), *argv]


def spawn(
    config: SaikiConfig, argv: Sequence[str], log: IO[bytes], **env: str
) -> subprocess.Popen[bytes]:
    """Start a ``saiki`` child in its own process group, killed if this process dies."""
    return subprocess.Popen(
        saiki_argv(config, *argv),
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", PARENT_ENV: str(os.getpid()), **env},
    )


def kill_group(pid: int, sig: int = signal.SIGKILL) -> None:
    """Signal a child's whole process group (it leads its own session)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def rotate(path: Path, max_bytes: int = LOG_MAX_BYTES) -> bool:
    """Copy a log past ``max_bytes`` to ``<name>.1`` and empty it in place (the child
    keeps writing to the same open file, in append mode)."""
    try:
        if path.stat().st_size <= max_bytes:
            return False
    except FileNotFoundError:
        return False
    backup = path.with_name(path.name + ".1")
    with open(path, "rb") as source, open(backup, "wb") as copy:
        while chunk := source.read(1 << 20):
            copy.write(chunk)
    os.truncate(path, 0)
    return True


def group_members(group: int) -> list[int]:
    """The live processes of a process group (from /proc)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        fields = stat.rsplit(") ", 1)[1].split()
        # Only saiki's own processes and the JVMs they start, never a stranger that
        # reused the number.
        if (
            int(fields[2]) == group
            and fields[0] != "Z"
            and (b"saiki" in cmdline or b"java" in cmdline)
        ):
            members.append(int(entry.name))
    return members
