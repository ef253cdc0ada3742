"""The data path as library calls: simulate traffic, ingest files, load the master dataset."""

from __future__ import annotations

import itertools
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from saiki.batch.master import MasterDataset
from saiki.batch.predictions import PREDICTIONS_TABLE
from saiki.batch.tables import LoadResult
from saiki.core.config import SaikiConfig
from saiki.core.errors import InvalidInputError, NotFoundError
from saiki.core.eventlog import EventLog
from saiki.core.ingest import Ingestor, IngestResult
from saiki.core.ingest_files import ingest_files
from saiki.core.timeutil import format_iso, now_ms
from saiki.ops.console import progress_bar
from saiki.simulator import TrafficOptions, World, write_jsonl


@dataclass(frozen=True)
class SimulateRequest:
    """A synthetic world and the traffic to write from it."""

    users: int
    items: int
    days: float
    seed: int
    out: Path
    end_ms: int
    malformed_rate: float = 0.0
    late_rate: float = 0.0
    duplicate_rate: float = 0.0
    shift_at_ms: int | None = None

    def __post_init__(self) -> None:
        for name in ("malformed_rate", "late_rate", "duplicate_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise InvalidInputError(f"--{name.replace('_', '-')}", "must be within 0..1")
        if self.users < 1 or self.items < 1 or self.days <= 0:
            raise InvalidInputError("--users/--items/--days", "must be positive")


def simulate(request: SimulateRequest) -> dict[str, Any]:
    """Write the traffic as JSON lines; returns what was written (lines, defects, …)."""
    world = World(
        users=request.users, items=request.items, seed=request.seed, shift_at_ms=request.shift_at_ms
    )
    options = TrafficOptions(
        days=request.days,
        end_ms=request.end_ms,
        malformed_rate=request.malformed_rate,
        late_rate=request.late_rate,
        duplicate_rate=request.duplicate_rate,
    )
    expected = int(sum(world.params["activity"]) * request.days * 8 * 1.17)
    started = time.perf_counter()
    with progress_bar(expected, "ev", "simulate") as advance:
        summary = write_jsonl(world, options, request.out, progress=advance)
    report = summary.as_dict()
    report.update(
        out=str(request.out),
        seconds=round(time.perf_counter() - started, 2),
        end=format_iso(request.end_ms),
    )
    return report


@dataclass(frozen=True)
class IngestOutcome:
    """What ``ingest`` did: the log's counts, the load into the master dataset, timings."""

    result: IngestResult
    seconds: float
    loaded: list[LoadResult]
    snapshot: int | None

    def reasons(self) -> Counter[str]:
        """Quarantined inputs counted by field and rule."""
        return Counter(
            f"{r.field or 'json'}: {r.reason.split(':')[0]}" for _, r in self.result.rejections
        )


def ingest(
    config: SaikiConfig, files: list[Path], workers: int | None = None, load: bool = True
) -> IngestOutcome:
    """Validate files into the event log, then (unless ``load`` is off) the master dataset."""
    for path in files:
        if not path.is_file():
            raise NotFoundError(f"no such file: {path}")
    log = EventLog(config.log_dir)
    lines_estimate = max(1, sum(p.stat().st_size for p in files) // 200)
    started = time.perf_counter()
    with progress_bar(lines_estimate, "ev", "ingest → log") as advance:
        if config.log.backend == "kafka":
            result = _ingest_to_kafka(config, files, advance)
        else:
            result = ingest_files(Ingestor(log), files, workers=workers, progress=advance)
    seconds = time.perf_counter() - started
    loaded = load_master(config) if load else []
    snapshot = MasterDataset(config).resolve_snapshot() if load else None
    return IngestOutcome(result, seconds, loaded, snapshot)


def _ingest_to_kafka(
    config: SaikiConfig, files: list[Path], progress: Callable[[int], None]
) -> IngestResult:
    """JSON-lines files into the Kafka topic, 10,000 lines a call, in this process."""
    from saiki.core.kafka_log import KafkaAppender

    log = config.log
    appender = KafkaAppender(log.kafka_bootstrap, log.kafka_topic, properties=log.kafka_properties)
    total = IngestResult()
    try:
        for path in files:
            with path.open("rb") as handle:
                numbered = enumerate(handle, start=1)
                while chunk := list(itertools.islice(numbered, 10_000)):
                    # Blank lines are skipped but counted, so that sources name the right line.
                    kept = [(n, line.strip()) for n, line in chunk if line.strip()]
                    total.add(
                        appender.submit_lines(
                            [line for _, line in kept], [f"{path.name}:{n}" for n, _ in kept]
                        )
                    )
                    progress(len(chunk))
    finally:
        appender.close()
    return total


def describe_ingest(outcome: IngestOutcome) -> list[str]:
    """What ``saiki ingest`` prints: counts, rate, the commonest quarantine reasons, load."""
    result = outcome.result
    total = result.accepted + result.duplicates + result.quarantined
    lines = [
        f"event log: {result.accepted} accepted, {result.duplicates} duplicates, "
        f"{result.quarantined} quarantined in {outcome.seconds:.1f}s "
        f"({total / max(outcome.seconds, 1e-9):,.0f} events/s)"
    ]
    lines += [f"  quarantined {n:>8}  {why}" for why, n in outcome.reasons().most_common(12)]
    lines += describe_load(outcome.loaded)
    if outcome.snapshot is not None:
        lines.append(f"current snapshot of saiki.events: {outcome.snapshot}")
    return lines


def describe_load(loaded: list[LoadResult]) -> list[str]:
    """One line per table a load appended to."""
    return [
        f"master dataset: saiki.{r.table} +{r.rows} rows in {r.snapshots} snapshot(s), "
        + (f"log offset now {r.next_offset}" if r.next_offset >= 0 else "from closed log files")
        for r in loaded
    ]


def load_master(config: SaikiConfig) -> list[LoadResult]:
    """Append what the event log holds beyond the master dataset, exactly once; then the
    prediction log's closed files past the monitor's reach."""
    log = EventLog(config.log_dir)
    master = MasterDataset(config)
    pending = log.events.head() - MasterDataset.committed_offset(master.table())
    with progress_bar(max(pending, 0), "ev", "log → iceberg") as advance:
        results = master.load(log, progress=advance)
    served = master.load_predictions(config.data_dir / "serving", now_ms())
    results.append(LoadResult(PREDICTIONS_TABLE, served.rows, served.snapshots, -1))
    return results
