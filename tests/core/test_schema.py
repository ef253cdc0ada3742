"""The event rules of ARCHITECTURE.md, one by one."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from saiki.core.schema import Event, Rejection, check_json_lines, parse_json_line, validate_event

NOW = 1_795_176_000_000


def good(**changes: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "event_id": "e1",
        "event_time": "2026-11-20T10:15:30.123Z",
        "user_id": "u1",
        "item_id": "i1",
        "event_type": "CLICK",
        "dwell_ms": 1500,
    }
    event.update(changes)
    return {k: v for k, v in event.items() if v is not ...}


def test_a_valid_click_is_normalised() -> None:
    event = validate_event(good(device_id="ios", request_id="r1", variant="B"), NOW)
    assert event == Event("e1", 1_795_169_730_123, "u1", "i1", "ios", "CLICK", 1500, "r1", "B")


def test_epoch_milliseconds_and_iso_strings_mean_the_same_instant() -> None:
    iso = validate_event(good(), NOW)
    epoch = validate_event(good(event_time=1_795_169_730_123), NOW)
    offset = validate_event(good(event_time="2026-11-20T11:15:30.123+01:00"), NOW)
    assert isinstance(iso, Event)
    assert iso == epoch == offset


def test_empty_optional_strings_are_absent() -> None:
    event = validate_event(good(device_id="", request_id="", variant=""), NOW)
    assert isinstance(event, Event)
    assert (event.device_id, event.request_id, event.variant) == (None, None, None)


@pytest.mark.parametrize(
    ("changes", "field", "fragment"),
    [
        ({"event_id": ...}, "event_id", "required"),
        ({"event_id": ""}, "event_id", "required"),
        ({"event_id": 7}, "event_id", "required"),
        ({"user_id": ...}, "user_id", "required"),
        ({"user_id": "u" * 129}, "user_id", "1..128"),
        ({"item_id": ...}, "item_id", "required"),
        ({"item_id": 12}, "item_id", "required"),
        ({"event_type": "VIEW"}, "event_type", "IMPRESSION or CLICK"),
        ({"event_type": ...}, "event_type", "IMPRESSION or CLICK"),
        ({"event_time": ...}, "event_time", "required"),
        ({"event_time": "yesterday"}, "event_time", "not an ISO-8601 time"),
        ({"event_time": "2026-11-20T10:15:30"}, "event_time", "without a zone"),
        ({"event_time": 1_795_169_730}, "event_time", "seconds sent as milliseconds"),
        ({"event_time": NOW + 5 * 60_000 + 1}, "event_time", "future"),
        ({"event_time": 1.5e12}, "event_time", "integer epoch ms"),
        ({"dwell_ms": -1}, "dwell_ms", "0..86400000"),
        ({"dwell_ms": 86_400_001}, "dwell_ms", "0..86400000"),
        ({"dwell_ms": "100"}, "dwell_ms", "integer"),
        ({"dwell_ms": True}, "dwell_ms", "integer"),
        ({"event_type": "IMPRESSION"}, "dwell_ms", "CLICK events only"),
        ({"device_id": 5}, "device_id", "string"),
        ({"colour": "red"}, "colour", "unknown field"),
    ],
)
def test_each_rule_rejects_with_the_field_named(
    changes: dict[str, Any], field: str, fragment: str
) -> None:
    outcome = validate_event(good(**changes), NOW)
    assert isinstance(outcome, Rejection)
    assert outcome.field == field
    assert fragment in outcome.reason


def test_boundaries_that_are_allowed() -> None:
    assert isinstance(validate_event(good(event_time=NOW + 5 * 60_000), NOW), Event)
    assert isinstance(validate_event(good(dwell_ms=0), NOW), Event)
    assert isinstance(validate_event(good(dwell_ms=86_400_000), NOW), Event)
    assert isinstance(validate_event(good(dwell_ms=None), NOW), Event)
    assert isinstance(validate_event(good(user_id="u" * 128), NOW), Event)


def test_broken_json_is_a_rejection_not_an_exception() -> None:
    assert isinstance(parse_json_line(b'{"event_id": "e1", '), Rejection)
    assert isinstance(parse_json_line(b"[1, 2]"), Rejection)
    assert parse_json_line(b'{"a": 1}') == {"a": 1}


def _slow(line: bytes) -> Event | Rejection:
    decoded = parse_json_line(line)
    return decoded if isinstance(decoded, Rejection) else validate_event(decoded, NOW)


def _edge_cases() -> list[bytes]:
    raw = [
        b'{"event_id":"e1","event_id":"e2","event_time":1795176000000,"user_id":"u",'
        b'"item_id":"i","event_type":"CLICK"}',  # a repeated key
        b'{"event_id":"e1","event_time":1795176000000,"user_id":"u","user_id":5,'
        b'"item_id":"i","event_type":"CLICK"}',
        b"[1, 2]",
        b"null",
        b'"a string"',
        b'{"event_id": "e1", ',
        b'{"event_id":"e1"}',
        b'{"event_id":"\xff\xfe","event_time":1795176000000,"user_id":"u","item_id":"i",'
        b'"event_type":"CLICK"}',  # not UTF-8
        b'{"event_id":"e1","event_time":1180591620717411303424,"user_id":"u","item_id":"i",'
        b'"event_type":"CLICK"}',  # beyond 64 bits
        b'{"event_id":"e1","event_time":-1180591620717411303424,"user_id":"u","item_id":"i",'
        b'"event_type":"IMPRESSION"}',
    ]
    changes: list[dict[str, Any]] = [
        {},
        {"event_time": 1_795_169_730_123},
        {"event_time": "2026-11-20T11:15:30.123+01:00"},
        {"event_time": "2026-11-20T10:15:30.123456789Z"},
        {"event_time": "2026-11-20t10:15:30z"},
        {"event_time": "2026-11-20"},
        {"event_time": "2026-11-20T10:15:30"},
        {"event_time": "2026-11-20T10:15:60Z"},
        {"event_time": "20261120T101530Z"},
        {"event_time": " 2026-11-20T10:15:30Z"},
        {"event_time": 1.7e12},
        {"event_time": True},
        {"event_time": None},
        {"event_time": ...},
        {"event_time": 12},
        {"event_time": NOW + 5 * 60_000},
        {"event_time": NOW + 5 * 60_000 + 1},
        {"event_time": "9999-12-31T23:59:59Z"},
        {"event_id": ""},
        {"event_id": "é" * 128},
        {"event_id": "é" * 129},
        {"event_id": 7},
        {"user_id": "u" * 128},
        {"user_id": "u" * 129},
        {"item_id": ""},
        {"item_id": None},
        {"event_type": "click"},
        {"event_type": "IMPRESSION"},
        {"event_type": "IMPRESSION", "dwell_ms": None},
        {"dwell_ms": 0},
        {"dwell_ms": 86_400_000},
        {"dwell_ms": 86_400_001},
        {"dwell_ms": -1},
        {"dwell_ms": 1.5},
        {"dwell_ms": True},
        {"dwell_ms": "15"},
        {"device_id": "", "request_id": "", "variant": ""},
        {"device_id": None, "variant": "treatment"},
        {"device_id": 0},
        {"device_id": False},
        {"device_id": 3},
        {"request_id": "r" * 129},
        {"variant": ["a"]},
        {"colour": "red"},
    ]
    return raw + [orjson.dumps(good(**change)) for change in changes]


def test_the_fast_path_decides_every_line_as_the_rules_do() -> None:
    """check_json_lines on lines of every kind, valid and not, against the slow path."""
    from saiki.simulator.traffic import MALFORMED_KINDS, malformed_line

    lines = _edge_cases() + [
        malformed_line(kind, n, NOW - 60_000, "t").encode()
        for n, kind in enumerate(MALFORMED_KINDS)
    ]
    fast = check_json_lines(lines, NOW)
    assert fast == [_slow(line) for line in lines]
    accepted = sum(isinstance(outcome, Event) for outcome in fast)
    assert 10 < accepted < len(lines) - 30  # both kinds of outcome were exercised


def test_the_event_schema_is_one_definition_everywhere() -> None:
    """The Arrow, Iceberg and wire forms of an event name the same fields, in order."""
    from saiki.batch.tables import EVENTS_SCHEMA
    from saiki.core.schema import EVENT_ARROW_SCHEMA, EVENT_FIELDS, FIELDS, Event
    from saiki.v1 import events_pb2

    assert Event._fields == FIELDS == tuple(EVENT_ARROW_SCHEMA.names)
    iceberg = EVENTS_SCHEMA.fields
    assert tuple(f.name for f in iceberg[: len(FIELDS)]) == FIELDS
    assert [f.required for f in iceberg[: len(FIELDS)]] == [f.required for f in EVENT_FIELDS]
    assert [f.field_id for f in iceberg] == list(range(1, len(iceberg) + 1))
    assert tuple(events_pb2.Event.DESCRIPTOR.fields_by_name) == FIELDS
