"""The audit log: who did which admin action when (promote, rollback, experiments).

One JSON line per action in ``<data dir>/audit.log``, appended and fsync'd before the
action's command returns. "Who" is ``$SAIKI_ACTOR`` when a tool acts for someone (a
scheduler, a deploy pipeline), else the operating-system user running the command.
"""

from __future__ import annotations

import getpass
import json
import os
from pathlib import Path
from typing import Any

from saiki.core.errors import StorageError
from saiki.core.files import file_lock
from saiki.core.timeutil import format_iso, now_ms

AUDIT_FILE = "audit.log"


def actor() -> str:
    """Who is acting: $SAIKI_ACTOR, else the OS user."""
    return os.environ.get("SAIKI_ACTOR") or getpass.getuser()


def record(data_dir: Path, action: str, **details: Any) -> None:
    """Append one action to the audit log, durably."""
    line = json.dumps(
        {"time": format_iso(now_ms()), "who": actor(), "action": action, **details},
        default=str,
    )
    path = data_dir / AUDIT_FILE
    with file_lock(data_dir / ".audit.lock"):
        try:
            with open(path, "a") as handle:
                handle.write(line + "\n")
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as exc:
            raise StorageError(f"cannot write {path}: {exc.strerror or exc}") from exc


def read(data_dir: Path) -> list[dict[str, Any]]:
    """Every recorded action, oldest first."""
    try:
        text = (data_dir / AUDIT_FILE).read_text()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines() if line]
