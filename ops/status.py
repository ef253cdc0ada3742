"""Status records: what every part of the service and every scheduled job last did.

Each part (the server, the speed layer) and each job (load, recompute, monitor, retrain)
keeps one small JSON file under ``<data>/status/``; ``saiki status`` reads them. The jobs
write their own record (``cli/main.py`` wraps the command in :func:`job_record`), so
the records are the same whether ``saiki up``'s scheduler ran the job or cron did.

Every write replaces the file atomically, so a reader never sees half a record and a job
killed mid-run leaves ``running`` with a pid that no longer exists, which the reader
reports as ``killed``.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from saiki.core.files import atomic_write

JOBS = ("load", "recompute", "monitor", "retrain")
PARTS = ("server", "speed")


def status_dir(data_dir: Path) -> Path:
    """Where the records live."""
    return data_dir / "status"


@dataclass
class JobRecord:
    """The last run of one job."""

    name: str
    outcome: str  # running | ok | failed | due (monitor: a retrain is due)
    started_at: float
    finished_at: float | None = None
    pid: int = 0
    detail: str = ""  # the error's one line, or what the job did
    runs: int = 0  # runs recorded in this data dir
    failures: int = 0  # consecutive failed runs (0 after a success)
    trigger: str = ""  # scheduled | retry | policy | manual


@dataclass
class PartRecord:
    """One supervised child process, as ``saiki up`` sees it."""

    name: str
    state: str  # starting | up | restarting | stopped
    pid: int = 0
    started_at: float = 0.0
    restarts: int = 0
    last_exit: str = ""  # how it last ended: "exit 1", "signal 9"
    log: str = ""


@dataclass
class ServiceRecord:
    """``saiki up`` itself: its pid, and the process groups of the children it started
    (so the next ``saiki up`` can end what a killed one left behind)."""

    pid: int
    started_at: float
    address: str
    groups: list[int] = field(default_factory=list)
    stopped_at: float | None = None
    schedule: dict[str, str] = field(default_factory=dict)


def _write(path: Path, record: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(asdict(record), indent=1).encode())


def _read(path: Path) -> dict[str, Any] | None:
    try:
        loaded = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return loaded if isinstance(loaded, dict) else None


def read_job(data_dir: Path, name: str) -> JobRecord | None:
    """The last run of ``name``, if any."""
    raw = _read(status_dir(data_dir) / "jobs" / f"{name}.json")
    return JobRecord(**raw) if raw else None


def write_job(data_dir: Path, record: JobRecord) -> None:
    """Replace ``record.name``'s record."""
    _write(status_dir(data_dir) / "jobs" / f"{record.name}.json", record)


def read_part(data_dir: Path, name: str) -> PartRecord | None:
    """The supervised part ``name``, if ``saiki up`` ever started it."""
    raw = _read(status_dir(data_dir) / "parts" / f"{name}.json")
    return PartRecord(**raw) if raw else None


def write_part(data_dir: Path, record: PartRecord) -> None:
    """Replace ``record.name``'s record."""
    _write(status_dir(data_dir) / "parts" / f"{record.name}.json", record)


def read_service(data_dir: Path) -> ServiceRecord | None:
    """The last ``saiki up`` on this data dir, if any."""
    raw = _read(status_dir(data_dir) / "service.json")
    return ServiceRecord(**raw) if raw else None


def write_service(data_dir: Path, record: ServiceRecord) -> None:
    """Replace the service record."""
    _write(status_dir(data_dir) / "service.json", record)


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (and is not a zombie)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1][:1] != "Z"
    except OSError:
        return True


@contextlib.contextmanager
def job_record(data_dir: Path, name: str) -> Iterator[JobRecord]:
    """Record one run of job ``name``: ``running`` now, then ``ok`` or ``failed`` (with
    the error's line). The caller may set ``outcome`` (e.g. ``due``) and ``detail``."""
    previous = read_job(data_dir, name)
    record = JobRecord(
        name=name,
        outcome="running",
        started_at=time.time(),
        pid=os.getpid(),
        runs=(previous.runs if previous else 0) + 1,
        failures=previous.failures if previous else 0,
        trigger=os.environ.get("SAIKI_JOB_TRIGGER", "manual"),
    )
    write_job(data_dir, record)
    try:
        yield record
    except BaseException as exc:
        record.outcome = "failed"
        record.detail = record.detail or (str(exc).splitlines() or [type(exc).__name__])[0]
        record.failures += 1
        raise
    else:
        if record.outcome == "running":
            record.outcome = "ok"
        if record.outcome == "failed":
            record.failures += 1
        else:
            record.failures = 0
    finally:
        record.finished_at = time.time()
        write_job(data_dir, record)
