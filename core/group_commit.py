"""Group commit: the ``Ingest`` calls of one process share segments and fsyncs.

Each call validates its own events on its own thread, then queues them. One committer
thread takes everything queued and publishes it as one segment (one staging fsync, one
rename, one directory fsync). Every caller of the group is released only after that
fsync, with its own counts; if the append fails, every caller of the group gets the
error and nothing of the group is acknowledged (a retry is exact: duplicates are dropped
against the log).

``[log] group_commit_ms`` is the *linger*, kept as a floor between commits: a group is
taken no sooner than one linger after the previous commit began. So a process writes at
most one segment per linger however many calls arrive (the segment rate follows the
commit rate, not the call rate), calls that arrive meanwhile share it, and a call that
arrives after a quiet spell is committed at once: the linger costs an acknowledgement
at most one linger, and nothing when traffic is light. Under a burst the groups also
grow while a commit is in flight, even with no linger at all.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from saiki.core.errors import ComponentError
from saiki.core.ingest import Ingestor, IngestResult, RawEvent, check_inputs, stage_batch
from saiki.core.schema import Event, Rejection

# A group stops growing at this many events (one segment stays a few MB at most).
GROUP_MAX_EVENTS = 50_000


@dataclass
class _Call:
    inputs: Sequence[RawEvent]
    checked: list[Event | Rejection]
    done: threading.Event = field(default_factory=threading.Event)
    result: IngestResult | None = None
    error: BaseException | None = None


class GroupCommitter:
    """Commits the calls of many threads in groups, one segment per group."""

    def __init__(self, ingestor: Ingestor, linger_ms: float) -> None:
        self._ingestor = ingestor
        self._linger_s = max(linger_ms, 0.0) / 1000
        self._queue: list[_Call] = []
        self._queued_events = 0
        self._wake = threading.Condition()
        self._closed = False
        # When the last group was taken (monotonic s). Starting "just taken" lets calls
        # that arrive together at start-up share the first group.
        self._last_taken = time.monotonic()
        self.groups = 0  # committed groups (a segment each, when any event was new)
        self.calls = 0
        self._thread = threading.Thread(target=self._run, name="group-commit", daemon=True)
        self._thread.start()

    def submit(self, inputs: Sequence[RawEvent]) -> IngestResult:
        """Validate, queue, and return once the group holding these events is durable."""
        ingest_ms = self._ingestor.clock()
        call = _Call(inputs, check_inputs(inputs, ingest_ms))
        with self._wake:
            if self._closed:
                raise RuntimeError("the group committer is closed")
            self._queue.append(call)
            self._queued_events += len(inputs)
            self._wake.notify_all()
        call.done.wait()
        if call.error is not None:
            raise call.error
        assert call.result is not None
        return call.result

    def close(self) -> None:
        """Commit what is queued, then stop the committer thread."""
        with self._wake:
            self._closed = True
            self._wake.notify_all()
        self._thread.join()

    def _take_group(self) -> list[_Call] | None:
        with self._wake:
            while not self._queue:
                if self._closed:
                    return None
                self._wake.wait()
            deadline = self._last_taken + self._linger_s
            while not self._closed and self._queued_events < GROUP_MAX_EVENTS:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._wake.wait(left)
            group, self._queue, self._queued_events = self._queue, [], 0
            self._last_taken = time.monotonic()
            return group

    def _run(self) -> None:
        while (group := self._take_group()) is not None:
            try:
                results = self._commit(group)
            except BaseException as exc:  # every caller of the group hears of it
                for call in group:
                    call.error = exc
            else:
                for call, result in zip(group, results, strict=True):
                    call.result = result
            finally:
                for call in group:
                    call.done.set()

    def _commit(self, group: list[_Call]) -> list[IngestResult]:
        checked: list[Event | Rejection] = []
        starts: list[int] = []
        for call in group:
            starts.append(len(checked))
            checked.extend(call.checked)

        def describe(index: int) -> tuple[str, str]:
            which = bisect.bisect_right(starts, index) - 1
            raw = group[which].inputs[index - starts[which]]
            return raw.payload, raw.source

        batch = stage_batch(self._ingestor.log, checked, self._ingestor.clock(), describe)
        published = self._ingestor.commit(batch)  # durable when it returns
        # The ids this group appended (first occurrence wins); none when the log held all.
        kept = set(batch.event_ids) if published.accepted else set()
        if len(kept) != published.accepted:
            raise ComponentError("group commit: appended ids do not match the count")
        self.groups += 1
        self.calls += len(group)
        results = []
        for call in group:
            result = IngestResult(segments=list(published.segments))
            for index, outcome in enumerate(call.checked):
                if type(outcome) is Rejection:
                    result.quarantined += 1
                    result.rejections.append((index, outcome))
                elif outcome.event_id in kept:
                    kept.discard(outcome.event_id)
                    result.accepted += 1
                else:
                    result.duplicates += 1
            results.append(result)
        return results
