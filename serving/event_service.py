"""``EventService.Ingest``: protobuf events into the shared event log."""

from __future__ import annotations

import threading
from typing import Any

import grpc
from google.protobuf import json_format

from saiki.core.ingest import Ingestor, RawEvent
from saiki.serving.status import rpc
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
        raw["event_time"] = event.event_time.seconds * 1000 + event.event_time.nanos // 1_000_000
    if event.event_type in (events_pb2.IMPRESSION, events_pb2.CLICK):
        raw["event_type"] = events_pb2.EventType.Name(event.event_type)
    else:
        raw["event_type"] = event.event_type  # unset or unknown: the validator names it
    if event.HasField("dwell_ms"):
        raw["dwell_ms"] = event.dwell_ms
    return raw


class EventService(events_pb2_grpc.EventServiceServicer):  # type: ignore[misc]
    """Validates and appends each request's events; answers per-event rejections."""

    def __init__(self, ingestor: Ingestor) -> None:
        self._ingestor = ingestor
        # One writer per process; the log's file lock orders this process against others.
        self._lock = threading.Lock()

    @rpc
    def Ingest(  # noqa: N802 (gRPC method name)
        self, request: events_pb2.IngestRequest, context: grpc.ServicerContext
    ) -> events_pb2.IngestResponse:
        inputs = [
            RawEvent(
                json_format.MessageToJson(event, indent=None),
                event_to_mapping(event),
                f"grpc:{context.peer()}",
            )
            for event in request.events
        ]
        if not inputs:
            return events_pb2.IngestResponse()
        with self._lock:
            result = self._ingestor.ingest(inputs)
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
