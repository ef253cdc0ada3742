from __future__ import annotations

import pytest

from saiki.core.errors import InvalidInputError
from saiki.core.timeutil import ceil_minute, floor_minute, format_iso, parse_duration, parse_iso


def test_iso_round_trip_to_the_millisecond() -> None:
    ms = parse_iso("2026-11-20T10:15:30.123Z")
    assert format_iso(ms) == "2026-11-20T10:15:30.123Z"
    assert parse_iso("2026-11-20") == parse_iso("2026-11-20T00:00:00Z")


def test_sub_millisecond_digits_are_truncated_not_rounded() -> None:
    assert parse_iso("2026-11-20T10:15:30.1239Z") == parse_iso("2026-11-20T10:15:30.123Z")


def test_minutes() -> None:
    assert floor_minute(119_999) == 60_000
    assert ceil_minute(60_001) == 120_000
    assert ceil_minute(120_000) == 120_000


@pytest.mark.parametrize(("text", "ms"), [("90s", 90_000), ("5m", 300_000), ("7d", 604_800_000)])
def test_durations(text: str, ms: int) -> None:
    assert parse_duration(text) == ms


def test_bad_times_name_the_field() -> None:
    with pytest.raises(InvalidInputError) as caught:
        parse_iso("soon", "--as-of")
    assert caught.value.field == "--as-of"
    with pytest.raises(InvalidInputError):
        parse_duration("5 minutes")
