"""``saiki ingest`` of JSON-lines files: byte ranges validated and staged in worker
processes (:func:`core.ingest.stage_batch`), published in order by this process."""

from __future__ import annotations

import gc
import multiprocessing
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import orjson

from saiki.core.eventlog import EventLog
from saiki.core.files import write_synced
from saiki.core.ingest import Ingestor, IngestResult, StagedBatch, check_lines, stage_batch
from saiki.core.segments import StagedSegment


@dataclass(frozen=True)
class _Range:
    path: str
    start: int
    stop: int


def _split_file(path: Path, target_bytes: int) -> list[_Range]:
    """Byte ranges of about target_bytes, each ending just after a newline."""
    size = path.stat().st_size
    ranges: list[_Range] = []
    with open(path, "rb") as handle:
        start = 0
        while start < size:
            handle.seek(min(start + target_bytes, size))
            handle.readline()
            stop = min(handle.tell(), size)
            ranges.append(_Range(str(path), start, stop))
            start = stop
    return ranges


def _stage_range(task: tuple[str, _Range, int, int]) -> tuple[StagedBatch, int]:
    """Worker: validate and stage one byte range; also returns its count of physical lines."""
    # A worker process only allocates acyclic objects and lives for one ingest: the
    # cyclic collector would only rescan its millions of tuples.
    gc.disable()
    log_root, piece, ingest_ms, _ = task
    with open(piece.path, "rb") as handle:
        handle.seek(piece.start)
        data = handle.read(piece.stop - piece.start)
    raw_lines = data.split(b"\n")
    if raw_lines and raw_lines[-1] == b"":
        raw_lines.pop()
    # Blank lines are skipped but counted, so that sources name the right line.
    lines = [line.strip() for line in raw_lines]
    numbers = list(range(len(lines)))
    if b"" in lines:
        numbers = [n for n, line in enumerate(lines) if line]
        lines = [lines[n] for n in numbers]
    name = Path(piece.path).name
    staged = stage_batch(
        EventLog(Path(log_root)),
        check_lines(lines, ingest_ms),
        ingest_ms,
        lambda i: (lines[i].decode("utf-8", "replace"), f"{name}:+{numbers[i]}"),
    )
    return staged, len(raw_lines)


def ingest_files(
    ingestor: Ingestor,
    paths: Iterable[Path],
    chunk_bytes: int = 32 << 20,
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> IngestResult:
    """Ingest JSON-lines files: workers validate and stage byte ranges, this process
    publishes them in order. ``progress`` receives the input count of each chunk.
    """
    total = IngestResult()
    tasks = [piece for path in paths for piece in _split_file(path, chunk_bytes)]
    workers = workers if workers is not None else min(os.cpu_count() or 1, 4)
    line_base: dict[str, int] = {}
    index_base = 0
    root = str(ingestor.log.root)
    jobs = ((root, task, ingestor.clock(), n) for n, task in enumerate(tasks))

    def fold(staged: StagedBatch, physical_lines: int, path: str) -> None:
        nonlocal index_base
        base = line_base.get(path, 0)
        line_base[path] = base + physical_lines
        if staged.quarantine is not None:
            _renumber_sources(staged.quarantine, base + 1)
        total.add(ingestor.commit(staged), index_base=index_base)
        index_base += staged.size
        if progress is not None:
            progress(staged.size)

    if workers <= 1 or len(tasks) <= 1:
        for task, job in zip(tasks, jobs, strict=True):
            fold(*_stage_range(job), task.path)
        return total
    context = multiprocessing.get_context("spawn")
    with context.Pool(workers) as pool:
        for task, (staged, physical) in zip(tasks, pool.imap(_stage_range, jobs), strict=True):
            fold(staged, physical, task.path)
    return total


def _renumber_sources(staged: StagedSegment, base: int) -> None:
    """Turn range-relative sources (`file:+n`) into file line numbers (`file:base+n`)."""
    records = [orjson.loads(line) for line in staged.path.read_bytes().splitlines()]
    for record in records:
        name, _, relative = record["source"].rpartition(":+")
        record["source"] = f"{name}:{base + int(relative)}"
    payload = b"\n".join(orjson.dumps(r) for r in records) + b"\n"
    write_synced(staged.path, payload)
