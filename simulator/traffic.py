"""Synthetic traffic: sessions of impressions and clicks drawn from a World, as JSON lines.

Generation is vectorised per simulated day (numpy), so ten million events take about a
minute. Lines come out in *arrival* order: most events arrive within two seconds of their
event time, a ``late_rate`` share arrives minutes to hours late (out of order), a
``duplicate_rate`` share is sent twice, and ``malformed_rate`` adds broken lines of every
kind the validator knows (see ``MALFORMED_KINDS``). Deterministic for a seed and end time.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, TextIO

import numpy as np
import numpy.typing as npt

from saiki.simulator.world import DEVICES, World

MS_PER_DAY: Final = 86_400_000
# Every way the simulator breaks an event; the ingest tests expect each one quarantined.
MALFORMED_KINDS: Final = (
    "missing_event_id",
    "missing_user_id",
    "missing_item_id",
    "unknown_event_type",
    "negative_dwell",
    "dwell_on_impression",
    "unparseable_time",
    "future_time",
    "broken_json",
    "wrong_type",
)


@dataclass(frozen=True)
class TrafficOptions:
    """How much traffic, over which period, with which defects."""

    days: float
    end_ms: int
    malformed_rate: float = 0.0
    late_rate: float = 0.0
    duplicate_rate: float = 0.0
    iso_time_share: float = 0.7
    mean_impressions_per_session: float = 8.0


@dataclass
class TrafficSummary:
    """What was written: the truth that ingest results can be checked against."""

    lines: int = 0
    impressions: int = 0
    clicks: int = 0
    late: int = 0
    duplicates: int = 0
    malformed: Counter[str] = field(default_factory=Counter)
    first_event_ms: int | None = None
    last_event_ms: int | None = None

    @property
    def valid_events(self) -> int:
        """Distinct valid events (what the master dataset must end up holding)."""
        return self.impressions + self.clicks

    def as_dict(self) -> dict[str, object]:
        """A JSON-friendly form."""
        return {
            "lines": self.lines,
            "valid_events": self.valid_events,
            "impressions": self.impressions,
            "clicks": self.clicks,
            "late": self.late,
            "duplicates": self.duplicates,
            "malformed": dict(self.malformed),
            "first_event_ms": self.first_event_ms,
            "last_event_ms": self.last_event_ms,
        }


@dataclass
class EventArrays:
    """A batch of valid events as parallel arrays, in arrival order."""

    event_ids: list[str]
    time: npt.NDArray[np.int64]
    arrival: npt.NDArray[np.int64]
    user: npt.NDArray[np.int64]
    item: npt.NDArray[np.int64]
    device: npt.NDArray[np.int64]
    click: npt.NDArray[np.bool_]
    dwell: npt.NDArray[np.int64]
    session: list[str]
    late: npt.NDArray[np.bool_]

    def take(self, index: npt.NDArray[np.int64]) -> EventArrays:
        """The events at these positions."""
        ids = [self.event_ids[i] for i in index.tolist()]
        sessions = [self.session[i] for i in index.tolist()]
        return EventArrays(
            ids,
            self.time[index],
            self.arrival[index],
            self.user[index],
            self.item[index],
            self.device[index],
            self.click[index],
            self.dwell[index],
            sessions,
            self.late[index],
        )

    @staticmethod
    def concat(parts: list[EventArrays]) -> EventArrays:
        """Join batches (their order kept)."""
        return EventArrays(
            [i for p in parts for i in p.event_ids],
            np.concatenate([p.time for p in parts]),
            np.concatenate([p.arrival for p in parts]),
            np.concatenate([p.user for p in parts]),
            np.concatenate([p.item for p in parts]),
            np.concatenate([p.device for p in parts]),
            np.concatenate([p.click for p in parts]),
            np.concatenate([p.dwell for p in parts]),
            [s for p in parts for s in p.session],
            np.concatenate([p.late for p in parts]),
        )

    def __len__(self) -> int:
        return len(self.event_ids)


def _run_tag(world: World, options: TrafficOptions) -> str:
    digest = hashlib.blake2b(f"{world.seed}:{options.end_ms}".encode(), digest_size=4)
    return digest.hexdigest()


def simulate_day(world: World, options: TrafficOptions, day: int) -> EventArrays:
    """All valid events whose sessions start in simulated day ``day`` (0 = the oldest)."""
    start_ms = options.end_ms - int(options.days * MS_PER_DAY) + day * MS_PER_DAY
    stop_ms = min(start_ms + MS_PER_DAY, options.end_ms)
    span = stop_ms - start_ms
    rng = np.random.default_rng(np.random.SeedSequence([world.seed, 0x7AFF1C, day]))
    activity = world.params["activity"] * (span / MS_PER_DAY)
    per_user = rng.poisson(activity)
    users = np.repeat(np.arange(world.users, dtype=np.int64), per_user)
    sessions = len(users)
    # Diurnal rhythm: more sessions in the evening (UTC), fewer at night.
    hours = np.arange(24)
    weights = 1.0 + 0.6 * np.sin((hours - 13) / 24 * 2 * np.pi)
    hour = rng.choice(24, size=sessions, p=weights / weights.sum())
    offset_in_day = (hour * 3_600_000 + rng.integers(0, 3_600_000, sessions)) % MS_PER_DAY
    session_start = start_ms + (offset_in_day % max(span, 1))
    device = world.device_of(users, rng)
    shown = 1 + rng.poisson(options.mean_impressions_per_session - 1, sessions)
    tag = _run_tag(world, options)
    session_names = [f"r{tag}-{day}-{s}" for s in range(sessions)]

    owner = np.repeat(np.arange(sessions), shown)
    position = np.arange(len(owner)) - np.repeat(np.cumsum(shown) - shown, shown)
    imp_time = session_start[owner] + position * 2_500 + rng.integers(0, 1_000, len(owner))
    imp_user = users[owner]
    imp_item = world.sample_items(len(owner), rng)
    imp_device = device[owner]
    probability = world.click_probability(imp_user, imp_item, imp_device, imp_time)
    clicked = rng.random(len(owner)) < probability
    click_time = (
        imp_time[clicked] + 800 + rng.exponential(5_000, int(clicked.sum())).astype(np.int64)
    )
    dwell = world.dwell_ms(probability[clicked], rng)

    n_imp, n_click = len(owner), int(clicked.sum())
    time = np.concatenate([imp_time, click_time]).astype(np.int64)
    keep = time < options.end_ms
    is_late = rng.random(n_imp + n_click) < options.late_rate
    near = rng.integers(10_000, 240_000, n_imp + n_click)
    far = rng.integers(600_000, 3 * 3_600_000, n_imp + n_click)
    delay = np.where(rng.random(n_imp + n_click) < 0.5, near, far)
    arrival = time + np.where(is_late, delay, rng.integers(0, 2_000, n_imp + n_click))
    owners = np.concatenate([owner, owner[clicked]])
    batch = EventArrays(
        [f"e{tag}-{day}-{n}" for n in range(n_imp + n_click)],
        time,
        arrival,
        np.concatenate([imp_user, imp_user[clicked]]),
        np.concatenate([imp_item, imp_item[clicked]]),
        np.concatenate([imp_device, imp_device[clicked]]),
        np.concatenate([np.zeros(n_imp, bool), np.ones(n_click, bool)]),
        np.concatenate([np.zeros(n_imp, np.int64), dwell]),
        [session_names[o] for o in owners.tolist()],
        is_late,
    )
    kept = np.flatnonzero(keep)
    return batch.take(kept[np.argsort(batch.arrival[kept], kind="stable")])


def generate(world: World, options: TrafficOptions) -> Iterator[EventArrays]:
    """Valid events in arrival order, a simulated day at a time."""
    days = int(np.ceil(options.days))
    pending: list[EventArrays] = []
    for day in range(days):
        pending.append(simulate_day(world, options, day))
        merged = EventArrays.concat(pending)
        order = np.argsort(merged.arrival, kind="stable")
        merged = merged.take(order)
        horizon = options.end_ms - int(options.days * MS_PER_DAY) + (day + 1) * MS_PER_DAY
        if day == days - 1:
            yield merged
            return
        # Late arrivals beyond this day wait for the next day's batch, keeping global order.
        split = int(np.searchsorted(merged.arrival, horizon))
        yield merged.take(np.arange(split))
        pending = [merged.take(np.arange(split, len(merged)))]


def format_lines(events: EventArrays, iso_share: float, rng: np.random.Generator) -> list[str]:
    """Each valid event as a JSON line (event_time ISO-8601 or epoch ms, by share)."""
    iso = np.datetime_as_string(events.time.astype("datetime64[ms]"), unit="ms")
    use_iso = (rng.random(len(events)) < iso_share).tolist()
    times = [
        f'"{text}Z"' if flag else str(ms)
        for text, flag, ms in zip(iso.tolist(), use_iso, events.time.tolist(), strict=True)
    ]
    device_names = [DEVICES[d] for d in events.device.tolist()]
    lines = []
    for event_id, when, user, item, device, click, dwell, session in zip(
        events.event_ids,
        times,
        events.user.tolist(),
        events.item.tolist(),
        device_names,
        events.click.tolist(),
        events.dwell.tolist(),
        events.session,
        strict=True,
    ):
        kind = f'"CLICK","dwell_ms":{dwell}' if click else '"IMPRESSION"'
        lines.append(
            f'{{"event_id":"{event_id}","event_time":{when},"user_id":"u{user}",'
            f'"item_id":"i{item}","device_id":"{device}","event_type":{kind},'
            f'"request_id":"{session}"}}'
        )
    return lines


def malformed_line(kind: str, n: int, time_ms: int, tag: str) -> str:
    """One broken event of the given kind."""
    event_id = f"bad{tag}-{n}"
    good = {
        "event_id": f'"{event_id}"',
        "event_time": str(time_ms),
        "user_id": '"u0"',
        "item_id": '"i0"',
        "event_type": '"IMPRESSION"',
    }
    if kind == "missing_event_id":
        del good["event_id"]
    elif kind == "missing_user_id":
        del good["user_id"]
    elif kind == "missing_item_id":
        del good["item_id"]
    elif kind == "unknown_event_type":
        good["event_type"] = '"PURCHASE"'
    elif kind == "negative_dwell":
        good["event_type"] = '"CLICK"'
        good["dwell_ms"] = "-250"
    elif kind == "dwell_on_impression":
        good["dwell_ms"] = "1200"
    elif kind == "unparseable_time":
        good["event_time"] = '"yesterday at noon"'
    elif kind == "future_time":
        good["event_time"] = str(time_ms + MS_PER_DAY * 400)
    elif kind == "wrong_type":
        good["user_id"] = "12345"
    text = "{" + ",".join(f'"{k}":{v}' for k, v in good.items()) + "}"
    if kind == "broken_json":
        return text[: len(text) // 2]
    return text


def write_jsonl(
    world: World,
    options: TrafficOptions,
    out: Path,
    progress: Callable[[int], None] | None = None,
) -> TrafficSummary:
    """Write the traffic to ``out`` as JSON lines; returns what was written."""
    summary = TrafficSummary()
    tag = _run_tag(world, options)
    rng = np.random.default_rng(np.random.SeedSequence([world.seed, 0xBAD, options.end_ms]))
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as handle:
        for events in generate(world, options):
            _write_batch(
                options=options, events=events, handle=handle, rng=rng, tag=tag, summary=summary
            )
            if progress is not None:
                progress(len(events))
    return summary


def _write_batch(
    *,
    options: TrafficOptions,
    events: EventArrays,
    handle: TextIO,
    rng: np.random.Generator,
    tag: str,
    summary: TrafficSummary,
) -> None:
    if not len(events):
        return
    lines = format_lines(events, options.iso_time_share, rng)
    out: list[str] = []
    n_dup = rng.binomial(len(lines), options.duplicate_rate)
    n_bad = rng.binomial(len(lines), options.malformed_rate)
    extras: list[tuple[int, str]] = []
    for position in rng.integers(0, len(lines), n_dup).tolist():
        # A retry: the same line again, a little later in the stream.
        extras.append((min(position + int(rng.integers(1, 50)), len(lines)), lines[position]))
    kinds = rng.choice(len(MALFORMED_KINDS), n_bad).tolist()
    numbered = summary.malformed.total()
    for n, (kind, position) in enumerate(
        zip(kinds, rng.integers(0, len(lines), n_bad).tolist(), strict=True)
    ):
        name = MALFORMED_KINDS[kind]
        bad = malformed_line(name, numbered + n, int(events.time[position]), tag)
        extras.append((position, bad))
        summary.malformed[name] += 1
    extras.sort(key=lambda pair: pair[0])
    cursor = 0
    for position, line in extras:
        out.extend(lines[cursor:position])
        out.append(line)
        cursor = max(cursor, position)
    out.extend(lines[cursor:])
    handle.write("\n".join(out))
    handle.write("\n")
    summary.lines += len(out)
    summary.duplicates += n_dup
    summary.clicks += int(events.click.sum())
    summary.impressions += len(events) - int(events.click.sum())
    summary.late += int(events.late.sum())
    first, last = int(events.time.min()), int(events.time.max())
    summary.first_event_ms = (
        first if summary.first_event_ms is None else min(summary.first_event_ms, first)
    )
    summary.last_event_ms = (
        last if summary.last_event_ms is None else max(summary.last_event_ms, last)
    )
