"""Every RPC and `saiki ingest` fed every class of bad input: the status and the field
named, a server that stays healthy, and every acknowledged event in the log and the master
dataset exactly once (no rejected one)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2

from saiki.batch.master import MasterDataset
from saiki.core.config import SaikiConfig
from saiki.core.eventlog import EventLog
from saiki.core.ingest import SEGMENT_ARROW_SCHEMA
from saiki.core.timeutil import format_iso, now_ms
from saiki.serving.client import SaikiClient
from saiki.serving.server import RunningServer, start_server
from saiki.v1 import events_pb2, features_pb2, prediction_pb2
from tests.conftest import make_config, run_saiki

pytestmark = pytest.mark.slow
Code = grpc.StatusCode
LONG = "x" * 129
SERVING = health_pb2.HealthCheckResponse.SERVING


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SaikiConfig, RunningServer]]:
    config = make_config(tmp_path_factory.mktemp("bad") / "data")
    running = start_server(config, host="127.0.0.1", port=0)
    yield config, running
    running.stop(0)


@pytest.fixture(scope="module")
def client(served: tuple[SaikiConfig, RunningServer]) -> Iterator[SaikiClient]:
    with SaikiClient(f"127.0.0.1:{served[1].port}", attempts=1, timeout_s=30) as client:
        yield client


def _stamp(ms: int) -> Timestamp:
    stamp = Timestamp()
    stamp.FromMilliseconds(ms)
    return stamp


def _event(event_id: str, **changes: object) -> events_pb2.Event:
    fields: dict[str, object] = {
        "event_id": event_id,
        "event_time": _stamp(now_ms() - 60_000),
        "user_id": "u1",
        "item_id": "i1",
        "event_type": events_pb2.IMPRESSION,
    }
    fields.update(changes)
    return events_pb2.Event(**fields)  # type: ignore[arg-type]


def _refused(call: object) -> tuple[Code, str]:
    with pytest.raises(grpc.RpcError) as caught:
        call()  # type: ignore[operator]
    return caught.value.code(), caught.value.details()


def _far_timestamp() -> events_pb2.Event:
    bad = _event("bad-far-seconds")
    bad.event_time.seconds = 1 << 62
    return bad


def _negative_nanos() -> events_pb2.Event:
    bad = _event("bad-nanos")
    bad.event_time.nanos = -1
    return bad


# (event, the field its rejection names)
QUARANTINED = [
    (_event(LONG), "event_id"),
    (_event("bad-user", user_id=LONG), "user_id"),
    (_event("bad-item", item_id=LONG), "item_id"),
    (_event("bad-device", device_id=LONG), "device_id"),
    (_event("bad-request", request_id=LONG), "request_id"),
    (_event("bad-variant", variant=LONG), "variant"),
    (_event("bad-empty-user", user_id=""), "user_id"),
    (_event("bad-past", event_time=_stamp(631_152_000_000)), "event_time"),  # 1990
    (_event("bad-future", event_time=_stamp(now_ms() + 86_400_000)), "event_time"),
    (_far_timestamp(), "event_time"),
    (_negative_nanos(), "event_time"),
    (_event("bad-no-time", event_time=None), "event_time"),
    (_event("bad-enum", event_type=7), "event_type"),
    (_event("bad-unset-type", event_type=0), "event_type"),
    (_event("bad-dwell-impression", dwell_ms=5), "dwell_ms"),
    (_event("bad-dwell-negative", event_type=events_pb2.CLICK, dwell_ms=-1), "dwell_ms"),
    (_event("bad-big", user_id="y" * (5 << 20)), "user_id"),
]


def test_ingest_quarantines_each_bad_event_naming_its_field_and_keeps_the_good(
    served: tuple[SaikiConfig, RunningServer], client: SaikiClient
) -> None:
    config, _ = served
    good = [_event(f"good-{n}") for n in range(3)]
    batch = [good[0], *(e for e, _ in QUARANTINED), good[1], good[1], good[2]]
    for event in batch:
        if event.event_id.startswith("bad-no-time"):
            event.ClearField("event_time")
    reply = client.ingest(batch)
    assert (reply.accepted, reply.duplicates, reply.quarantined) == (3, 1, len(QUARANTINED))
    assert [r.field for r in reply.rejections] == [field for _, field in QUARANTINED]
    assert [r.index for r in reply.rejections] == list(range(1, len(QUARANTINED) + 1))
    again = client.ingest([good[2], _event("good-3")])  # one resent, one new
    assert (again.accepted, again.duplicates) == (1, 1)
    assert client.ingest([]).accepted == 0
    assert client.health() == SERVING
    _assert_exactly_once(config, {f"good-{n}" for n in range(4)})


def test_too_many_events_in_one_call(client: SaikiClient) -> None:
    many = [_event(f"many-{n}") for n in range(10_001)]
    code, details = _refused(lambda: client.ingest(many))
    assert code == Code.INVALID_ARGUMENT and details.startswith("events")
    assert client.ingest(many[:10_000]).accepted == 10_000  # the limit itself is fine
    assert client.health() == SERVING


def test_a_message_over_the_size_limit_is_refused_whole(
    served: tuple[SaikiConfig, RunningServer],
) -> None:
    huge = events_pb2.IngestRequest(events=[_event("too-big", user_id="z" * (65 << 20))])
    with grpc.insecure_channel(
        f"127.0.0.1:{served[1].port}", options=[("grpc.max_send_message_length", 128 << 20)]
    ) as channel:
        ingest = channel.unary_unary(
            "/saiki.v1.EventService/Ingest",
            request_serializer=events_pb2.IngestRequest.SerializeToString,
            response_deserializer=events_pb2.IngestResponse.FromString,
        )
        code, _ = _refused(lambda: ingest(huge, timeout=60))
    assert code == Code.RESOURCE_EXHAUSTED


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        ({"entity": "", "ids": ["u1"]}, "entity"),
        ({"entity": "song", "ids": ["u1"]}, "entity"),
        ({"entity": "user", "ids": []}, "ids"),
        ({"entity": "user", "ids": ["u1", LONG]}, "ids[1]"),
        ({"entity": "user", "ids": [""]}, "ids[0]"),
        ({"entity": "user", "ids": [f"u{n}" for n in range(10_001)]}, "ids"),
        ({"entity": "user", "ids": ["u1"], "as_of": Timestamp(seconds=1 << 40)}, "as_of"),
        ({"entity": "user", "ids": ["u1"], "as_of": Timestamp(seconds=10, nanos=-1)}, "as_of"),
    ],
)
def test_get_features_names_the_bad_field(
    client: SaikiClient, request_fields: dict[str, object], field: str
) -> None:
    request = features_pb2.GetFeaturesRequest(**request_fields)  # type: ignore[arg-type]
    code, details = _refused(lambda: client.features.GetFeatures(request, timeout=10))
    assert code == Code.INVALID_ARGUMENT and details.startswith(field), details
    assert client.health() == SERVING


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        ({"user_id": "", "item_ids": ["i1"]}, "user_id"),
        ({"user_id": LONG, "item_ids": ["i1"]}, "user_id"),
        ({"user_id": "u1", "item_ids": []}, "item_ids"),
        ({"user_id": "u1", "item_ids": [f"i{n}" for n in range(1_001)]}, "item_ids"),
        ({"user_id": "u1", "item_ids": ["i1", LONG]}, "item_ids[1]"),
        ({"user_id": "u1", "item_ids": ["i1"], "device_id": LONG}, "device_id"),
        ({"user_id": "u1", "item_ids": ["i1"], "request_id": LONG}, "request_id"),
    ],
)
def test_predict_names_the_bad_field(
    client: SaikiClient, request_fields: dict[str, object], field: str
) -> None:
    request = prediction_pb2.PredictRequest(**request_fields)  # type: ignore[arg-type]
    code, details = _refused(lambda: client.prediction.Predict(request, timeout=10))
    assert code == Code.INVALID_ARGUMENT and details.startswith(field), details
    assert client.health() == SERVING


def test_a_candidate_asked_twice_is_answered_once(client: SaikiClient) -> None:
    ranked = client.predict("u1", ["i1", "i2", "i1", "i2", "i3"])
    assert sorted(item.item_id for item in ranked.items) == ["i1", "i2", "i3"]


@pytest.mark.parametrize(
    "method",
    [
        "/saiki.v1.EventService/Ingest",
        "/saiki.v1.FeatureService/GetFeatures",
        "/saiki.v1.PredictionService/Predict",
    ],
)
@pytest.mark.parametrize(
    "payload",
    [
        b"\xff\xfe\xfd garbage",
        # field 1 (a string) holding invalid UTF-8, as each request's first field is
        b"\x0a\x03\xc3\x28\xff",
    ],
)
def test_bytes_that_do_not_decode_leave_a_healthy_server(
    served: tuple[SaikiConfig, RunningServer], client: SaikiClient, method: str, payload: bytes
) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{served[1].port}") as channel:
        raw = channel.unary_unary(method)  # bytes in, bytes out: no serializer
        code, _ = _refused(lambda: raw(payload, timeout=10))
    # gRPC answers a request it cannot deserialize with INTERNAL, before saiki's code runs.
    assert code == Code.INTERNAL
    assert client.health() == SERVING


def test_saiki_ingest_quarantines_every_bad_line_and_loads_the_good_once(
    tmp_path: Path,
) -> None:
    config = make_config(tmp_path / "data")
    recent = format_iso(now_ms() - 60_000)

    def line(event_id: str, **changes: object) -> bytes:
        fields: dict[str, object] = {
            "event_id": event_id,
            "event_time": recent,
            "user_id": "u1",
            "item_id": "i1",
            "event_type": "IMPRESSION",
        }
        fields.update(changes)
        return json.dumps({k: v for k, v in fields.items() if v is not None}).encode()

    bad = [
        line(LONG),
        line("b-user", user_id=LONG),
        line("b-empty-user", user_id=""),
        line("b-past", event_time="1990-01-01T00:00:00Z"),
        line("b-future", event_time=format_iso(now_ms() + 86_400_000)),
        line("b-seconds", event_time=1_700_000_000),  # seconds sent as milliseconds
        line("b-enum", event_type="VIEW"),
        line("b-dwell", dwell_ms=-1, event_type="CLICK"),
        line("b-unknown", colour="red"),
        line("b-no-time", event_time=None),
        b"\xff\xfe not utf-8 at all",
        b"[1, 2, 3]",
        b"{truncated",
        line("b-huge", note="q" * (5 << 20)),
    ]
    good = [line(f"g-{n}") for n in range(4)]
    lines = [good[0], *bad, good[1], good[1], good[2], good[3], good[3]]
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    printed = run_saiki(config, "ingest", str(path))
    assert f"4 accepted, 2 duplicates, {len(bad)} quarantined" in printed
    again = run_saiki(config, "ingest", str(path))  # the same file twice: nothing new
    assert f"0 accepted, 6 duplicates, {len(bad)} quarantined" in again
    _assert_exactly_once(config, {f"g-{n}" for n in range(4)})


def _assert_exactly_once(config: SaikiConfig, accepted: set[str]) -> None:
    log = EventLog(config.log_dir)
    in_log = [
        event_id
        for _, table in log.events.read_range(0, SEGMENT_ARROW_SCHEMA)
        for event_id in table.column("event_id").to_pylist()
    ]
    master = MasterDataset(config)
    master.load(log)
    snapshot = master.resolve_snapshot()
    assert snapshot is not None
    in_master = master.read(snapshot, ("event_id",)).column("event_id").to_pylist()
    for held in (in_log, in_master):
        wanted = [e for e in held if e in accepted or e.startswith(("good-", "g-"))]
        assert sorted(wanted) == sorted(set(wanted)), "an event held twice"
        assert accepted <= set(held)
        assert not any(e.startswith(("bad-", "b-")) or e == LONG for e in held)
