"""The Flink side of the sink: a keyed process function around :class:`speed.sink.TileSink`.

All rows arrive on one constant key (parallelism 1). Tile updates not yet written are
kept in keyed ``ListState`` and the read counters in ``ValueState``, so a checkpoint
holds at least what the online store lacks; after a restore they are applied again before
anything else (max-merge makes that harmless). Writes happen every ``sink_flush_ms`` (a
processing-time timer) or every ``_FLUSH_ROWS`` pending updates. Restored timers do not
fire in PyFlink 2.3, so the timer is re-armed from an in-memory flag.

A write runs on a thread of its own, so that Flink goes on reading and aggregating while
Feast and SQLite work (the task thread used to stall for every flush). The pending
updates alternate between two lists: those a running write carries stay in theirs until
it has finished, new ones go to the other; so at every checkpoint, each update that may
not be in the online store yet is in one of the two lists.
"""

from __future__ import annotations

import sys
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from pyflink.common import Types
from pyflink.datastream import KeyedProcessFunction, RuntimeContext
from pyflink.datastream.state import ListStateDescriptor, ValueStateDescriptor

from saiki.core.config import SaikiConfig
from saiki.core.forgotten import Forgotten
from saiki.core.timeutil import now_ms
from saiki.feature_repo.online import SpeedStatus
from saiki.speed.shape import SinkLine, SpeedJobSpec, parse_sink_line
from saiki.speed.sink import TileSink, WriteBatch

_FLUSH_ROWS = 100_000
_MAX_FLUSH_DELAY_MS = 3_000
_CAUGHT_UP_MS = 3_000


def flush_delay_ms(tick_ms: int, last_write_ms: int, behind_ms: int) -> int:
    """How long after the last write started the next one may start while updates keep
    coming (when they pause, the sink writes at the next tick anyway).

    Caught up (the newest record read was ingested at most ``_CAUGHT_UP_MS`` ago): every
    tick, so a tile is readable about one write after its events. Behind (a backlog,
    a restart): each write rewrites every changed entity's row whole and the same rows
    change again within seconds, so four times as long as the last write took, up to
    ``_MAX_FLUSH_DELAY_MS``: fewer, larger writes. (Applied always, the slower cadence
    put the demo's freshness p95 at 2.8 s once its rows grew after a batch publish.)
    """
    if behind_ms <= _CAUGHT_UP_MS:
        return tick_ms
    return max(tick_ms, min(4 * last_write_ms, _MAX_FLUSH_DELAY_MS))


class TileSinkFunction(KeyedProcessFunction):  # type: ignore[misc]
    """Merges tile rows, counts late and read events, flushes to the online store."""

    def __init__(self, spec: SpeedJobSpec, config: SaikiConfig) -> None:
        self._spec = spec
        self._config = config

    def open(self, runtime_context: RuntimeContext) -> None:
        from saiki.feature_repo.views import ViewCatalog

        catalog = ViewCatalog.open(self._config)

        def current_cutoff() -> int | None:
            manifest = catalog.current()
            return manifest.cutoff_ms if manifest else None

        status = SpeedStatus(
            job_started_ms=now_ms(),
            start_offset=self._spec.first_offset,
            start_cutoff_ms=self._spec.epoch_cutoff_ms,
            allowed_lateness_ms=self._spec.allowed_lateness_s * 1000,
            # A position in the log: records before the folder's first segment at a fresh
            # start were archived, not read (speed.archive.arrange_for_start).
            events_seen=self._spec.first_offset,
            read_through=self._spec.first_offset,
            state="running",
        )
        # A restore whose counters the driver knows (speed/idle.py) says them from the
        # start: with nothing left to read, no record would ever bring them from state.
        for name, value in self._spec.restored:
            setattr(status, name, value)
        self._sink = TileSink(
            None,
            self._spec.speed_dir,
            current_cutoff,
            status,
            forgotten=Forgotten.of(self._config.data_dir),
        )
        self._lists = [
            runtime_context.get_list_state(ListStateDescriptor(name, Types.STRING()))
            for name in ("pending", "pending-b")
        ]
        self._current = 0  # the list new updates go to
        # How many updates the current list holds: kept here, not in state (a state call
        # per record was a fifth of the job's Python time); recounted after a restore.
        self._pending_count = 0
        self._counters = runtime_context.get_state(
            ValueStateDescriptor("counters", Types.PICKLED_BYTE_ARRAY())
        )
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="saiki-speed-sink")
        # Opening Feast (about 3 s inside the JVM's Python while Flink starts up beside
        # it) is the writer thread's first task: the job reads and merges meanwhile, and
        # no write is taken before the held tiles are restored.
        self._ready = self._writer.submit(self._connect)
        self._writing: Future[int] | None = None
        self._armed = False
        self._pending_at_tick = 0  # the pending count at the last tick
        self._flush_started_ms = 0
        self._status_changed = False  # read or late counts not yet published
        self._recovered = False
        self._sink.publish_status()

    def _connect(self) -> None:
        # Feast imports torch when it is installed, for tensor helpers the sink never
        # uses (2.6 s inside the JVM's Python). Nothing else runs in this interpreter, so
        # torch is marked absent before Feast looks for it.
        sys.modules.setdefault("torch", None)  # type: ignore[arg-type]
        from saiki.feature_repo.speed_rows import FeastSpeedWriter

        self._sink.attach(FeastSpeedWriter(self._config))
        self._sink.restore()

    def close(self) -> None:
        # Whatever has not been written stays in the last checkpoint's lists.
        self._writer.shutdown(wait=True, cancel_futures=True)

    def _apply_tile(self, line: SinkLine) -> None:
        self._sink.on_tile(line.entity, line.entity_id, line.minute_ms, line.values, line.events)

    def _recover(self) -> None:
        """Apply what the restored lists hold, all of it into the current list."""
        restored = [str(text) for pending in self._lists for text in pending.get() or []]
        for text in restored:
            self._apply_tile(parse_sink_line(text))
        self._lists[0].update(restored)
        self._lists[1].clear()
        self._pending_count = len(restored)
        counters = self._counters.value() or {}
        self._sink.status.events_seen = counters.get("seen", self._spec.first_offset)
        self._sink.status.late_events = counters.get("late", 0)
        self._sink.status.read_through = counters.get("read", self._spec.first_offset)
        self._sink.read_ahead = dict(counters.get("ahead", {}))
        self._recovered = True

    def process_element(self, value: str, ctx: Any) -> list[int]:
        # The change kind of the row is not looked at: an UPDATE_BEFORE carries a tile's
        # previous value, which the sink's max-merge leaves without effect.
        if not self._recovered:
            self._recover()
        line = parse_sink_line(value)
        if line.kind == "tile":
            self._apply_tile(line)
            self._lists[self._current].add(value)
            self._pending_count += 1
            if self._pending_count >= _FLUSH_ROWS:
                self._flush(wait=True)
        elif line.kind == "late":
            self._sink.on_late(line.events)
            self._save_counters()
            self._status_changed = True
        elif line.kind == "progress":
            self._sink.on_progress(line.events, line.max_event_ms, line.max_ingest_ms)
            self._save_counters()
            self._status_changed = True
        elif line.kind == "segment":
            self._sink.on_segment(line.minute_ms, line.max_event_ms, line.events)
            self._save_counters()
            self._status_changed = True
        if not self._armed:
            self._arm(ctx.timer_service())
        return []

    def _arm(self, timers: Any) -> None:
        timers.register_processing_time_timer(
            timers.current_processing_time() + self._spec.sink_flush_ms
        )
        self._armed = True

    def _save_counters(self) -> None:
        status = self._sink.status
        self._counters.update(
            {
                "seen": status.events_seen,
                "late": status.late_events,
                "read": status.read_through,
                "ahead": dict(self._sink.read_ahead),
            }
        )

    def _finish_write(self, wait: bool) -> bool:
        """Whether no write is running any more; clears the list a finished one carried
        (and raises its error, which fails the job). False too while Feast is opening."""
        if not wait and not self._ready.done():
            return False
        self._ready.result()
        if self._writing is None:
            return True
        if not wait and not self._writing.done():
            return False
        self._writing.result()
        self._writing = None
        self._lists[1 - self._current].clear()
        return True

    def _flush(self, wait: bool) -> bool:
        """Start writing what changed; False when the previous write is still running."""
        if not self._finish_write(wait):
            return False
        batch: WriteBatch = self._sink.take()
        # Updates from now on go to the other list; this one is cleared once written.
        self._current = 1 - self._current
        self._pending_count = 0
        self._writing = self._writer.submit(self._sink.write, batch)
        return True

    def on_timer(self, timestamp: int, ctx: Any) -> list[int]:
        """Every ``sink_flush_ms`` while there is anything to write: write when due, or
        as soon as the updates pause (the end of a backlog, or a quiet moment)."""
        self._armed = False
        self._finish_write(wait=False)
        quiet = self._pending_count == self._pending_at_tick
        delay = flush_delay_ms(
            self._spec.sink_flush_ms,
            int(self._sink.status.last_flush_seconds * 1000),
            behind_ms=timestamp - self._sink.status.max_ingest_ms,
        )
        due = timestamp - self._flush_started_ms >= delay
        wanted = (self._pending_count or self._status_changed) and (quiet or due)
        if wanted and self._flush(wait=False):
            self._flush_started_ms = timestamp
            self._status_changed = False
        if self._pending_count or self._status_changed or self._writing is not None:
            self._arm(ctx.timer_service())
        self._pending_at_tick = self._pending_count
        return []
