"""The speed layer's watermark as serving reports it (read from its status file)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from saiki.feature_repo.online import STATUS_FILE, read_status


class SpeedWatermark:
    """Caches the speed layer's published watermark, re-reading it at most every 200 ms."""

    def __init__(self, data_dir: Path) -> None:
        self._dir = data_dir / "speed"
        self._value = 0
        self._checked = 0.0
        self._mtime = 0.0

    def current_ms(self) -> int:
        """The watermark in epoch ms (0 when the speed layer has not run)."""
        now = time.monotonic()
        if now - self._checked >= 0.2:
            self._checked = now
            try:
                mtime = os.stat(self._dir / STATUS_FILE).st_mtime
            except FileNotFoundError:
                return self._value
            if mtime != self._mtime:
                self._mtime = mtime
                status = read_status(self._dir)
                self._value = status.watermark_ms if status else self._value
        return self._value
