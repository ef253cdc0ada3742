"""Time as saiki stores it: integer epoch milliseconds, UTC, everywhere inside the system."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from saiki.core.errors import InvalidInputError

MS_PER_MINUTE = 60_000
MS_PER_HOUR = 60 * MS_PER_MINUTE
MS_PER_DAY = 24 * MS_PER_HOUR
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS = timedelta(milliseconds=1)


def now_ms() -> int:
    """The wall clock in epoch milliseconds."""
    return time.time_ns() // 1_000_000


def floor_minute(ms: int) -> int:
    """The start of the minute that contains ms."""
    return ms - ms % MS_PER_MINUTE


def ceil_minute(ms: int) -> int:
    """The smallest whole minute at or after ms."""
    return -(-ms // MS_PER_MINUTE) * MS_PER_MINUTE


def parse_iso(text: str, field: str = "time") -> int:
    """Parse an ISO-8601 time with an explicit zone (``Z`` or ``+00:00``) to epoch ms.

    A time without a zone is refused rather than guessed: saiki times are UTC.
    A bare date (``2026-11-20``) means midnight UTC.
    """
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        value = text.strip()
        if len(value) == 10 and value[4] == "-" and value[7] == "-":
            return parse_iso(value + "T00:00:00Z", field)
        raise InvalidInputError(field, f"not an ISO-8601 time: {text!r}") from None
    if parsed.tzinfo is None:
        if len(text) == 10:  # a bare date: midnight UTC
            return (parsed.replace(tzinfo=UTC) - _EPOCH) // _ONE_MS
        raise InvalidInputError(field, f"ISO-8601 time without a zone: {text!r} (append Z)")
    # Exact integer arithmetic: floats would round some milliseconds the wrong way.
    return (parsed - _EPOCH) // _ONE_MS


def format_iso(ms: int) -> str:
    """Format epoch ms as ISO-8601 UTC with milliseconds, e.g. 2026-11-20T10:15:30.123Z."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.") + (
        f"{ms % 1000:03d}Z"
    )


def format_day(ms: int) -> str:
    """The UTC calendar day of ms, e.g. 2026-11-20."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d")


def parse_duration(text: str, field: str = "duration") -> int:
    """Parse a duration such as ``90s``, ``5m``, ``1h``, ``7d`` or ``250ms`` to milliseconds."""
    units = {"ms": 1, "s": 1000, "m": MS_PER_MINUTE, "h": MS_PER_HOUR, "d": MS_PER_DAY}
    value = text.strip()
    for suffix in ("ms", "s", "m", "h", "d"):
        number = value.removesuffix(suffix)
        if number != value and number.isdigit():
            return int(number) * units[suffix]
    raise InvalidInputError(field, f"not a duration like 90s, 5m, 1h or 7d: {text!r}")
