"""The Flink side of the sink: a keyed process function around :class:`speed.sink.TileSink`.

All rows arrive on one constant key (parallelism 1). Tile updates not yet written are
kept in keyed ``ListState`` and the read counters in ``ValueState``, so a checkpoint
holds exactly what the online store lacks; after a restore they are applied again before
anything else (max-merge makes that harmless). Writes happen every ``sink_flush_ms`` (a
processing-time timer) or every ``_FLUSH_ROWS`` pending updates. Restored timers do not
fire in PyFlink 2.3, so the timer is re-armed from an in-memory flag.
"""

from __future__ import annotations

import sys
from typing import Any

from pyflink.common import Types
from pyflink.datastream import KeyedProcessFunction, RuntimeContext
from pyflink.datastream.state import ListStateDescriptor, ValueStateDescriptor

from core.config import SaikiConfig
from core.timeutil import now_ms
from feature_repo.online import SpeedStatus
from speed.job import SpeedJobSpec
from speed.sink import TileSink

_FLUSH_ROWS = 20_000
_MAX_FLUSH_DELAY_MS = 1_000


class TileSinkFunction(KeyedProcessFunction):  # type: ignore[misc]
    """Merges tile rows, counts late and read events, flushes to the online store."""

    def __init__(self, spec: SpeedJobSpec, config: SaikiConfig) -> None:
        self._spec = spec
        self._config = config

    def open(self, runtime_context: RuntimeContext) -> None:
        # Feast imports torch when it is installed, for tensor helpers the sink never
        # uses: 2.6 of the 10 s its import takes inside the JVM's Python. Nothing else
        # runs in this interpreter, so torch is marked absent before Feast looks for it.
        sys.modules.setdefault("torch", None)  # type: ignore[arg-type]
        from feature_repo.feast_store import FeastSpeedWriter
        from feature_repo.views import ViewCatalog

        catalog = ViewCatalog(self._config.data_dir)

        def current_cutoff() -> int | None:
            manifest = catalog.current()
            return manifest.cutoff_ms if manifest else None

        status = SpeedStatus(
            job_started_ms=now_ms(),
            start_cutoff_ms=self._spec.epoch_cutoff_ms,
            allowed_lateness_ms=self._spec.allowed_lateness_s * 1000,
            state="running",
        )
        self._sink = TileSink(
            FeastSpeedWriter(self._config), self._spec.speed_dir, current_cutoff, status
        )
        self._sink.restore()
        self._pending = runtime_context.get_list_state(
            ListStateDescriptor("pending", Types.PICKLED_BYTE_ARRAY())
        )
        # How many updates the ListState holds: kept here, not in state (a state call per
        # record was a fifth of the job's Python time); recounted after a restore.
        self._pending_count = 0
        self._counters = runtime_context.get_state(
            ValueStateDescriptor("counters", Types.PICKLED_BYTE_ARRAY())
        )
        self._armed = False
        self._recovered = False
        self._sink.publish_status()

    def _apply_tile(self, row: tuple[Any, ...]) -> None:
        _, _, entity, entity_id, minute_ms, *rest = row
        values, events = tuple(rest[: len(rest) - 3]), rest[-3]
        self._sink.on_tile(entity, entity_id, minute_ms, values, events)

    def process_element(self, value: tuple[int, tuple[Any, ...]], ctx: Any) -> list[int]:
        row = value[1]
        if not self._recovered:
            for pending in self._pending.get() or []:
                self._apply_tile(pending)
                self._pending_count += 1
            counters = self._counters.value() or {}
            self._sink.status.events_seen = counters.get("seen", 0)
            self._sink.status.late_events = counters.get("late", 0)
            self._recovered = True
        retract, kind = row[0], row[1]
        if retract:
            return []  # the UPDATE_AFTER that follows carries the tile's new value
        if kind == "tile":
            self._apply_tile(row)
            self._pending.add(row)
            self._pending_count += 1
            if self._pending_count >= _FLUSH_ROWS:
                self._flush()
        elif kind == "late":
            self._sink.on_late(row[-3])
            self._save_counters()
        elif kind == "progress":
            self._sink.on_progress(row[-3], row[-2] or 0, row[-1] or 0)
            self._save_counters()
        if not self._armed:
            timers = ctx.timer_service()
            timers.register_processing_time_timer(
                timers.current_processing_time() + self._flush_delay_ms()
            )
            self._armed = True
        return []

    def _flush_delay_ms(self) -> int:
        """Flush every ``sink_flush_ms`` while flushes are cheap; when they are not (a
        backlog: every changed row is rewritten whole at each flush), wait four times as
        long as the last one took, up to a second, so that writing cannot crowd out
        reading."""
        last_ms = int(self._sink.status.last_flush_seconds * 1000)
        return max(self._spec.sink_flush_ms, min(4 * last_ms, _MAX_FLUSH_DELAY_MS))

    def _save_counters(self) -> None:
        status = self._sink.status
        self._counters.update({"seen": status.events_seen, "late": status.late_events})

    def _flush(self) -> None:
        self._sink.flush()
        self._pending.clear()
        self._pending_count = 0

    def on_timer(self, timestamp: int, ctx: Any) -> list[int]:
        self._armed = False
        self._flush()
        return []
