"""Users whose data was removed (``saiki forget``): the deletion records every layer honours.

``<data>/forgotten.jsonl`` holds one line per forgotten user: the SHA-256 of the user id
(the id itself is not kept) and the time of the deletion. What was ingested up to then
is gone from the master dataset, the prediction log and the online rows; the layers that
could bring it back read this file:

* the prediction loader drops the user's answers logged up to then (files still open at
  the deletion are loaded later);
* the speed sink drops the user's held tiles and every tile of a minute up to the
  deletion's (a replay of the event log would otherwise rebuild the row), and keeps
  tiles of later minutes: a user who comes back is served again;
* a batch view's publication writes no empty row for the user.

A record is appended with an fsync before anything is removed, so a crash in the middle
leaves a deletion that the next ``saiki forget`` of the same user completes.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import orjson

from saiki.core.files import fsync_path

FILE: Final = "forgotten.jsonl"


def user_digest(user_id: str) -> str:
    """The SHA-256 of a user id, as the records keep it."""
    return hashlib.sha256(user_id.encode()).hexdigest()


def record(data_dir: Path, user_id: str, at_ms: int) -> None:
    """Append a deletion record, durably."""
    path = data_dir / FILE
    line = orjson.dumps({"user_sha256": user_digest(user_id), "at_ms": at_ms}) + b"\n"
    with open(path, "ab") as handle:
        handle.write(line)
        handle.flush()
        os.fsync(handle.fileno())
    fsync_path(data_dir)


@dataclass
class Forgotten:
    """The deletion records, re-read when the file changes."""

    path: Path
    _stamp: tuple[int, int] | None = None
    _at: dict[str, int] | None = None

    @classmethod
    def of(cls, data_dir: Path) -> Forgotten:
        """The records of a data directory."""
        return cls(data_dir / FILE)

    def refresh(self) -> bool:
        """Re-read the file if it changed; True when it did."""
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            changed = self._at is None or bool(self._at)
            self._stamp, self._at = None, {}
            return changed
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp == self._stamp and self._at is not None:
            return False
        at: dict[str, int] = {}
        for line in self.path.read_bytes().splitlines():
            if line.strip():
                entry = orjson.loads(line)
                digest = str(entry["user_sha256"])
                at[digest] = max(at.get(digest, 0), int(entry["at_ms"]))
        self._stamp, self._at = stamp, at
        return True

    def __bool__(self) -> bool:
        if self._at is None:
            self.refresh()
        return bool(self._at)

    def at(self, user_id: str) -> int | None:
        """When the user was last forgotten, or None."""
        if self._at is None:
            self.refresh()
        if not self._at:
            return None
        return self._at.get(user_digest(user_id))
