"""One oversized input must not stop the batch layer: 5 MB fields through gRPC and through
a file are quarantined as a bounded prefix with their size and hash, and the master load
and a batch run afterwards succeed."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import grpc
import pyarrow.compute as pc
import pytest

from saiki.batch.master import MasterDataset
from saiki.batch.run import BatchRunRequest, run_batch_view
from saiki.batch.tables import QUARANTINE_TABLE
from saiki.core.config import SaikiConfig
from saiki.core.ingest import RAW_PREFIX_BYTES
from saiki.core.timeutil import floor_minute, format_iso, now_ms
from saiki.serving.server import start_server
from saiki.v1 import events_pb2, events_pb2_grpc
from tests.conftest import run_saiki
from tests.safety.test_bad_input import _event

pytestmark = pytest.mark.slow
HUGE = "x" * (5 << 20)


def test_five_megabyte_fields_are_quarantined_and_the_batch_layer_goes_on(
    config: SaikiConfig, tmp_path: Path
) -> None:
    running = start_server(config, host="127.0.0.1", port=0)
    try:
        with grpc.insecure_channel(
            f"127.0.0.1:{running.port}", options=[("grpc.max_send_message_length", 64 << 20)]
        ) as channel:
            stub = events_pb2_grpc.EventServiceStub(channel)
            reply = stub.Ingest(
                events_pb2.IngestRequest(
                    events=[
                        _event("ok-1"),
                        _event(HUGE),
                        _event("big-user", user_id=HUGE),
                        _event("big-request", request_id=HUGE),
                    ]
                )
            )
    finally:
        running.stop(0)
    assert (reply.accepted, reply.quarantined) == (1, 3)
    assert [r.field for r in reply.rejections] == ["event_id", "user_id", "request_id"]
    assert all(len(r.event_id) <= 128 for r in reply.rejections)

    lines = [
        json.dumps(
            {
                "event_id": "ok-2",
                "event_time": format_iso(now_ms() - 60_000),
                "user_id": "u2",
                "item_id": "i2",
                "event_type": "CLICK",
                "dwell_ms": 10,
            }
        ),
        json.dumps({"event_id": "junk", "note": HUGE}),
        json.dumps({"event_id": HUGE, "user_id": "u3"}),
        HUGE,  # not JSON at all
    ]
    events_file = tmp_path / "big.jsonl"
    events_file.write_text("\n".join(lines) + "\n")
    printed = run_saiki(config, "ingest", str(events_file))
    assert "1 accepted" in printed and "3 quarantined" in printed

    master = MasterDataset(config)
    run_saiki(config, "master", "load")
    quarantine = master.table(QUARANTINE_TABLE).scan().to_arrow()
    assert quarantine.num_rows == 6
    assert int(pc.max(pc.utf8_length(quarantine.column("raw_payload"))).as_py()) <= RAW_PREFIX_BYTES
    sizes = sorted(quarantine.column("raw_bytes").to_pylist())
    assert min(sizes) >= 5 << 20  # every one of them held a 5 MB field
    digests = set(quarantine.column("raw_sha256").to_pylist())
    assert hashlib.sha256(HUGE.encode()).hexdigest() in digests  # the non-JSON line, whole
    events = master.read(master.resolve_snapshot(), ("event_id",)).column("event_id")
    assert sorted(events.to_pylist()) == ["ok-1", "ok-2"]

    manifest = run_batch_view(config, BatchRunRequest(as_of_ms=floor_minute(now_ms())))
    assert manifest.events_read == 2


def test_out_of_range_timestamps_are_quarantined_naming_the_field(config: SaikiConfig) -> None:
    running = start_server(config, host="127.0.0.1", port=0)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = events_pb2_grpc.EventServiceStub(channel)
            far = _event("far")
            far.event_time.seconds = 1 << 62
            negative = _event("negative-nanos")
            negative.event_time.nanos = -1
            reply = stub.Ingest(events_pb2.IngestRequest(events=[far, negative, _event("fine")]))
    finally:
        running.stop(0)
    assert (reply.accepted, reply.quarantined) == (1, 2)
    assert [(r.index, r.field) for r in reply.rejections] == [(0, "event_time"), (1, "event_time")]
