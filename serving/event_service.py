"""``EventService.Ingest``: protobuf events into the shared event log."""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from typing import Any, Protocol

import grpc
from google.protobuf import json_format

from saiki.core.errors import InvalidInputError
from saiki.core.ingest import IngestResult, RawEvent
from saiki.serving.status import abort_if_expired, rpc
from saiki.v1 import events_pb2, events_pb2_grpc


def event_to_mapping(event: events_pb2.Event) -> dict[str, Any]:
    """A protobuf Event as the plain mapping the shared validator checks."""
    raw: dict[str, Any] = {
        "event_id": event.event_id,
        "user_id": event.user_id,
        "item_id": event.item_id,
        "device_id": event.device_id,
        "request_id": event.request_id,
        "variant": event.variant,
    }
    if event.HasField("event_time"):
        stamp = event.event_time
        if _MIN_SECONDS <= stamp.seconds <= _MAX_SECONDS and 0 <= stamp.nanos < 1_000_000_000:
            raw["event_time"] = stamp.seconds * 1000 + stamp.nanos // 1_000_000
        else:  # not a Timestamp protobuf allows: the validator quarantines it, naming it
            raw["event_time"] = f"Timestamp(seconds={stamp.seconds}, nanos={stamp.nanos})"
    if event.event_type in (events_pb2.IMPRESSION, events_pb2.CLICK):
        raw["event_type"] = events_pb2.EventType.Name(event.event_type)
    else:
        raw["event_type"] = event.event_type  # unset or unknown: the validator names it
    if event.HasField("dwell_ms"):
        raw["dwell_ms"] = event.dwell_ms
    return raw


# The range of google.protobuf.Timestamp: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z.
_MIN_SECONDS, _MAX_SECONDS = -62_135_596_800, 253_402_300_799


def raw_payload(event: events_pb2.Event) -> str:
    """The event as JSON for the quarantine; an event protobuf's own JSON printer refuses
    (an out-of-range Timestamp) is kept with its time as plain numbers."""
    try:
        return json_format.MessageToJson(event, indent=None)
    except (ValueError, json_format.Error):
        copy = events_pb2.Event()
        copy.CopyFrom(event)
        copy.ClearField("event_time")
        document = json_format.MessageToDict(copy)
        document["event_time"] = {
            "seconds": event.event_time.seconds,
            "nanos": event.event_time.nanos,
        }
        return json.dumps(document)


class Appender(Protocol):
    """Where accepted events go: the segment files' group committer
    (``core/group_commit.py``) or the Kafka producer (``core/kafka_log.py``)."""

    def submit(self, inputs: Sequence[RawEvent]) -> IngestResult: ...

    def close(self) -> None: ...


class EventService(events_pb2_grpc.EventServiceServicer):  # type: ignore[misc]
    """Validates and appends each request's events; answers per-event rejections."""

    def __init__(self, appender: Appender, max_events: int) -> None:
        # One appender per process: calls share segments and fsyncs, or producer batches.
        self._committer = appender
        self._max_events = max_events

    def close(self) -> None:
        """Commit what is queued and stop the committer."""
        self._committer.close()

    @rpc
    def Ingest(  # noqa: N802 (gRPC method name)
        self, request: events_pb2.IngestRequest, context: grpc.ServicerContext
    ) -> events_pb2.IngestResponse:
        if len(request.events) > self._max_events:
            raise InvalidInputError(
                "events", f"{len(request.events)} events; at most {self._max_events} per call"
            )
        # Past its deadline the caller has given up: append nothing it will not hear of.
        abort_if_expired(context, "before the append")
        source = f"grpc:{context.peer()}"
        inputs = [
            RawEvent(functools.partial(raw_payload, event), event_to_mapping(event), source)
            for event in request.events
        ]
        if not inputs:
            return events_pb2.IngestResponse()
        result = self._committer.submit(inputs)
        return events_pb2.IngestResponse(
            accepted=result.accepted,
            duplicates=result.duplicates,
            quarantined=result.quarantined,
            rejections=[
                events_pb2.Rejection(
                    index=index, event_id=why.event_id, field=why.field, reason=why.reason
                )
                for index, why in result.rejections
            ],
        )
