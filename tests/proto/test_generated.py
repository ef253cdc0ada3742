"""The checked-in wire types must be exactly what protoc makes of the .proto files."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_generated_stubs_match_the_proto_files(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("generate", ROOT / "proto" / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    fresh = {p.name: p.read_bytes() for p in module.generate(tmp_path)}
    checked_in = {p.name: p.read_bytes() for p in (ROOT / "proto" / "saiki" / "v1").glob("*_pb2*")}
    assert fresh.keys() == checked_in.keys()
    stale = [name for name in fresh if fresh[name] != checked_in[name]]
    assert not stale, f"run `make proto`: {stale} drifted from the .proto files"


def test_the_contract_names_are_there() -> None:
    from saiki.v1 import events_pb2, features_pb2, prediction_pb2

    assert events_pb2.DESCRIPTOR.package == "saiki.v1"
    assert set(events_pb2.DESCRIPTOR.services_by_name) == {"EventService"}
    assert set(features_pb2.DESCRIPTOR.services_by_name) == {"FeatureService"}
    assert set(prediction_pb2.DESCRIPTOR.services_by_name) == {"PredictionService"}
    assert set(events_pb2.IngestResponse.DESCRIPTOR.fields_by_name) == {
        "accepted",
        "duplicates",
        "quarantined",
        "rejections",
    }
    assert set(events_pb2.Rejection.DESCRIPTOR.fields_by_name) == {
        "index",
        "event_id",
        "field",
        "reason",
    }
    assert events_pb2.EventType.Name(events_pb2.IMPRESSION) == "IMPRESSION"
