"""``EventService.Ingest``: protobuf events into the shared event log."""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from typing import Any, Protocol

import grpc
from google.protobuf import json_format

from saiki.core.config import SaikiConfig
from saiki.core.errors import ConfigError, InvalidInputError
from saiki.core.eventlog import EventLog
from saiki.core.group_commit import GroupCommitter
from saiki.core.ingest import Ingestor, IngestResult, RawEvent
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


def event_appender(config: SaikiConfig) -> Appender:
    """Ingest's appender: the group committer on the segment files, or the Kafka producer
    (``[log] backend``)."""
    log = config.log
    if log.backend == "kafka":
        if not log.kafka_bootstrap:
            raise ConfigError('[log] backend = "kafka" needs [log] kafka_bootstrap')
        from saiki.core.kafka_log import KafkaAppender

        return KafkaAppender(
            log.kafka_bootstrap,
            log.kafka_topic,
            linger_ms=log.group_commit_ms,
            properties=log.kafka_properties,
        )
    # The log's file lock orders this process against others.
    return GroupCommitter(Ingestor(EventLog(config.log_dir)), log.group_commit_ms)


def append_request(
    appender: Appender, request: events_pb2.IngestRequest, source: str
) -> events_pb2.IngestResponse:
    """Validate and append one request's events; its answer, with per-event rejections.
    The same whether the server process appends itself or its event writer does
    (``serving/event_writer.py``)."""
    inputs = [
        RawEvent(functools.partial(raw_payload, event), event_to_mapping(event), source)
        for event in request.events
    ]
    if not inputs:
        return events_pb2.IngestResponse()
    result = appender.submit(inputs)
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


class RequestAppender(Protocol):
    """What EventService hands a checked request to: :class:`LocalAppender` in this
    process, or the event writer's client (``serving/event_writer.py``)."""

    def append(
        self, request: events_pb2.IngestRequest, source: str, timeout_s: float | None
    ) -> events_pb2.IngestResponse: ...

    def close(self) -> None: ...


class LocalAppender:
    """Appends on the calling thread (one appender per process: calls share segments and
    fsyncs, or producer batches)."""

    def __init__(self, appender: Appender) -> None:
        self._appender = appender

    def append(
        self, request: events_pb2.IngestRequest, source: str, timeout_s: float | None
    ) -> events_pb2.IngestResponse:
        """``append_request`` here; a group commit is not abandoned half-way, so the
        timeout is not applied."""
        return append_request(self._appender, request, source)

    def close(self) -> None:
        """Commit what is queued and stop the committer."""
        self._appender.close()


class EventService(events_pb2_grpc.EventServiceServicer):  # type: ignore[misc]
    """Checks each request's size and deadline; its events are validated and appended by
    ``appender`` (in this process, or by the event writer process)."""

    def __init__(self, appender: RequestAppender, max_events: int) -> None:
        self._appender = appender
        self._max_events = max_events

    def close(self) -> None:
        """Commit what is queued (or let go of the event writer)."""
        self._appender.close()

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
        if not request.events:
            return events_pb2.IngestResponse()
        return self._appender.append(request, f"grpc:{context.peer()}", context.time_remaining())
