"""EventService.Ingest over a real gRPC server, with health and reflection."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import grpc
import pyarrow as pa
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from saiki.core.config import SaikiConfig, load_config
from saiki.core.eventlog import EventLog
from saiki.core.ingest import QUARANTINE_RECORD_SCHEMA, SEGMENT_ARROW_SCHEMA
from saiki.core.timeutil import now_ms
from saiki.serving.event_writer import EventWriter
from saiki.serving.server import RunningServer, start_server
from saiki.v1 import events_pb2, events_pb2_grpc
from tests.conftest import make_config


@pytest.fixture(scope="module", params=["in-process", "event-writer"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[RunningServer, SaikiConfig]]:
    """The server appending its own Ingest calls, and one forwarding them to an event
    writer process ([serving] ingest_cpus): every test here answers the same for both."""
    root = tmp_path_factory.mktemp("rpc") / "data"
    if request.param == "in-process":
        config = make_config(root)
        running = start_server(config, host="127.0.0.1", port=0)
        yield running, config
        running.stop(0)
        return
    cpu = str(max(os.sched_getaffinity(0)))
    config = load_config(root, environ={}, serving={"ingest_cpus": cpu})
    writer = EventWriter(config)
    running = start_server(config, host="127.0.0.1", port=0, event_writer=writer.address)
    yield running, config
    running.stop(0)
    writer.stop()


@pytest.fixture(scope="module")
def channel(server: tuple[RunningServer, SaikiConfig]) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"127.0.0.1:{server[0].port}") as channel:
        yield channel


def event(event_id: str, **changes: object) -> events_pb2.Event:
    when = Timestamp()
    when.FromMilliseconds(now_ms() - 60_000)
    fields: dict[str, object] = {
        "event_id": event_id,
        "event_time": when,
        "user_id": "u1",
        "item_id": "i1",
        "event_type": events_pb2.CLICK,
        "dwell_ms": 1200,
        "request_id": "r1",
        "variant": "A",
    }
    fields.update(changes)
    return events_pb2.Event(**{k: v for k, v in fields.items() if v is not None})


def test_ingest_accepts_counts_duplicates_and_names_bad_fields(
    channel: grpc.Channel, server: tuple[RunningServer, SaikiConfig]
) -> None:
    stub = events_pb2_grpc.EventServiceStub(channel)
    future = Timestamp()
    future.FromMilliseconds(now_ms() + 3_600_000)
    request = events_pb2.IngestRequest(
        events=[
            event("ok-1"),
            event("ok-2", event_type=events_pb2.IMPRESSION, dwell_ms=None),
            event("ok-1"),
            event("bad-1", user_id=""),
            event("bad-2", event_type=events_pb2.EVENT_TYPE_UNSPECIFIED),
            event("bad-3", event_time=None),
            event("bad-4", event_time=future),
            event("bad-5", event_type=events_pb2.IMPRESSION),  # dwell on an impression
            event("bad-6", dwell_ms=-3),
            event("", user_id="u2"),
        ]
    )
    response = stub.Ingest(request, timeout=10)
    assert (response.accepted, response.duplicates, response.quarantined) == (2, 1, 7)
    named = {(r.index, r.field) for r in response.rejections}
    assert named == {
        (3, "user_id"),
        (4, "event_type"),
        (5, "event_time"),
        (6, "event_time"),
        (7, "dwell_ms"),
        (8, "dwell_ms"),
        (9, "event_id"),
    }
    again = stub.Ingest(events_pb2.IngestRequest(events=[event("ok-2")]), timeout=10)
    assert (again.accepted, again.duplicates) == (0, 1)
    log = EventLog(server[1].log_dir)
    rows = pa.concat_tables(t for _, t in log.events.read_range(0, SEGMENT_ARROW_SCHEMA))
    assert rows.column("event_id").to_pylist() == ["ok-1", "ok-2"]
    assert rows.column("variant").to_pylist() == ["A", "A"]
    assert rows.column("dwell_ms").to_pylist() == [1200, None]
    # Each rejected event is quarantined with its reason and its own payload, as JSON.
    held = pa.concat_tables(t for _, t in log.quarantine.read_range(0, QUARANTINE_RECORD_SCHEMA))
    raw = dict(
        zip(held.column("event_id").to_pylist(), held.column("raw").to_pylist(), strict=True)
    )
    assert set(raw) == {"bad-1", "bad-2", "bad-3", "bad-4", "bad-5", "bad-6", ""}
    assert all(json.loads(text).get("eventId", "") == key for key, text in raw.items())
    assert int(json.loads(raw["bad-6"])["dwellMs"]) == -3  # proto JSON: int64 as text


def test_an_empty_request_is_fine(channel: grpc.Channel) -> None:
    response = events_pb2_grpc.EventServiceStub(channel).Ingest(events_pb2.IngestRequest())
    assert response.accepted == response.quarantined == 0


def test_health_and_reflection_are_on(channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    status = health.Check(health_pb2.HealthCheckRequest(service="saiki.v1.EventService"))
    assert status.status == health_pb2.HealthCheckResponse.SERVING
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = reflection.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    )
    names = {s.name for r in responses for s in r.list_services_response.service}
    assert "saiki.v1.EventService" in names and "grpc.health.v1.Health" in names


def test_a_server_on_a_taken_port_fails_clearly(
    server: tuple[RunningServer, SaikiConfig], tmp_path: Path
) -> None:
    # SO_REUSEPORT lets saiki's own workers share a port; a port nobody may take fails.
    from saiki.core.errors import ConfigError

    on_purpose = load_config(tmp_path, environ={}, serving={"insecure": True})
    with pytest.raises(ConfigError, match="cannot listen"):
        start_server(on_purpose, host="203.0.113.1", port=1)
