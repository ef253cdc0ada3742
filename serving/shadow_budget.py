"""How much CPU a model staged in shadow may take from the version that answers.

A shadow scores requests after their answer is sent, on the prediction log's writer
thread; but on two cores under load that thread's forward passes are CPU the request
threads no longer get (measured: scoring every request in shadow added 2.9 ms to
``Predict``'s p50 at 8 calls in flight, docs/benchmarks.md). ``ShadowBudget`` bounds it:
a token bucket of seconds of forward time, refilled at ``share`` seconds per second (one
second's worth saved up at most). A request is shadowed only while the bucket holds time, and is
charged the recent mean forward time when it is admitted (so a burst of admissions
cannot overdraw it while their passes wait in the log's queue), corrected by the real
time once scored. At low traffic the shadow scores every request its stage asks for; at
saturation a sample, and its cost to production stays near ``share`` of a core per server
process. Requests left out are counted (``skipped``; the servers export
``saiki_shadow_skipped_total``): the comparison is made on the requests both scored.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Final


class ShadowBudget:
    """A token bucket of forward-pass seconds (see the module's text)."""

    BURST_S: Final = 1.0

    def __init__(
        self,
        share: float,
        clock: Callable[[], float] = time.monotonic,
        on_skip: Callable[[], None] | None = None,
    ) -> None:
        self.share = share
        self._clock = clock
        self._on_skip = on_skip
        self._lock = threading.Lock()
        self._cap = self.BURST_S * share  # one second's worth
        self._tokens = self._cap
        self._at = clock()
        self.mean_s = 0.0005  # the recent mean forward time (first guess: 0.5 ms)
        self.admitted = 0
        self.skipped = 0

    def admit(self) -> float | None:
        """The charge reserved for one shadowed request, or None when over budget."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self._cap, self._tokens + (now - self._at) * self.share)
            self._at = now
            if self._tokens <= 0.0:
                self.skipped += 1
                skipped = True
            else:
                charge = self.mean_s
                self._tokens -= charge
                self.admitted += 1
                skipped = False
        if skipped:
            if self._on_skip is not None:
                self._on_skip()
            return None
        return charge

    def settle(self, charged: float, took_s: float) -> None:
        """A shadowed request's forward pass took ``took_s``; ``charged`` was reserved."""
        with self._lock:
            self._tokens += charged - took_s
            self.mean_s += (took_s - self.mean_s) / 32
