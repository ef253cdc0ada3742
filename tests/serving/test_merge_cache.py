"""The merger's cache: served rows equal a fresh merge, and any change that could alter a
value (a write of an entity's speed row, a new minute, a new view) is seen on the next
call; a write re-merges only the entities it touched."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from saiki.core.config import SaikiConfig
from saiki.feature_repo.online import Changes, MemorySpeedStore, SpeedRow, pack_tiles
from saiki.feature_repo.spec import FEATURE_NAMES
from saiki.feature_repo.tiles import tiles
from saiki.feature_repo.views import ViewCatalog
from saiki.serving.merge import FeatureMerger
from tests.conftest import online_store_config
from tests.oracle import window_features

M = 60_000
START = 1_795_176_000_000  # a whole hour
ITEMS = ["i1", "i2", "i3"]


class CountingStore(MemorySpeedStore):
    def __init__(self, keep_changes: int = 1_000) -> None:
        super().__init__(keep_changes)
        self.reads = 0
        self.read_ids: list[list[str]] = []

    def read(self, entity: str, ids: object) -> dict[str, SpeedRow]:
        self.reads += 1
        self.read_ids.append(list(ids))  # type: ignore[call-overload]
        return super().read(entity, ids)  # type: ignore[arg-type]


def publish(store: CountingStore, events: pd.DataFrame) -> None:
    """Speed rows for the events, as the sink writes them (no batch view: T = 0)."""
    table = tiles(
        pa.array(events["item_id"]),
        pa.array(events["event_time"], pa.int64()),
        pa.array(events["event_type"]),
        pa.array(events["dwell_ms"], pa.int64()),
    ).to_pandas()
    rows = []
    for item_id, part in table.sort_values("minute").groupby("entity_id"):
        values = part.drop(columns=["entity_id", "minute"]).to_numpy(np.int64)
        rows.append(SpeedRow(str(item_id), pack_tiles(part["minute"].to_numpy(), values), 0, 1))
    store.write("item", rows)


def traffic(rng: np.random.Generator, count: int, until: int) -> pd.DataFrame:
    kinds = rng.choice(["IMPRESSION", "CLICK"], count, p=[0.8, 0.2])
    return pd.DataFrame(
        {
            "item_id": rng.choice(ITEMS[:2], count),  # i3 never seen
            "event_time": rng.integers(START, until, count),
            "event_type": kinds,
            "dwell_ms": np.where(kinds == "CLICK", rng.integers(100, 9_000, count), 0),
        }
    )


def served(merger: FeatureMerger) -> np.ndarray:
    merged = merger.features("item", ITEMS)
    assert merged.ids == ITEMS
    return merged.values


def expected(events: pd.DataFrame, q: int) -> np.ndarray:
    truth = [window_features(events, "item_id", i, q) for i in ITEMS]
    return np.array([[row[name] for name in FEATURE_NAMES] for row in truth])


@pytest.fixture
def setting(tmp_path: Path) -> tuple[CountingStore, list[int], pd.DataFrame]:
    store = CountingStore()
    events = traffic(np.random.default_rng(4), 400, START + 90 * M)
    publish(store, events)
    return store, [START + 90 * M + 30_000], events


def test_cached_rows_follow_every_write_and_every_minute(
    tmp_path: Path, setting: tuple[CountingStore, list[int], pd.DataFrame]
) -> None:
    store, clock, events = setting
    merger = FeatureMerger(ViewCatalog(tmp_path), store, clock=lambda: clock[-1])
    np.testing.assert_allclose(served(merger), expected(events, clock[-1]))
    reads = store.reads
    np.testing.assert_allclose(served(merger), expected(events, clock[-1]))
    assert store.reads == reads  # nothing changed: served from memory

    clicks = traffic(np.random.default_rng(5), 50, clock[-1] - 1)
    clicks["event_type"] = "CLICK"
    events = pd.concat([events, clicks], ignore_index=True)
    publish(store, events)  # the speed layer flushed
    np.testing.assert_allclose(served(merger), expected(events, clock[-1]))
    assert store.reads == reads + 1

    before = served(merger)
    clock.append(clock[-1] + 35 * M)  # the 1h window's lower end moved past tiles
    after = served(merger)
    np.testing.assert_allclose(after, expected(events, clock[-1]))
    assert not np.allclose(after, before)


def test_a_query_on_a_minute_and_one_inside_it_are_told_apart(
    tmp_path: Path, setting: tuple[CountingStore, list[int], pd.DataFrame]
) -> None:
    store, clock, events = setting
    on_minute = START + 60 * M
    merger = FeatureMerger(ViewCatalog(tmp_path), store, clock=lambda: clock[-1])
    inside = merger.features("item", ITEMS, on_minute - 10_000)  # ceil_minute: q = on_minute
    clock.append(on_minute + 1)  # now: its own minute's tile counts
    now = merger.features("item", ITEMS)
    np.testing.assert_allclose(inside.values, expected(events, on_minute))
    # For a q inside a minute the minute's tile is read whole: as if its events came first.
    times = events["event_time"]
    whole = events.assign(event_time=times.where(times // M != on_minute // M, on_minute))
    np.testing.assert_allclose(now.values, expected(whole, on_minute + 1))
    assert not np.allclose(inside.values, now.values)


def test_without_the_cache_every_call_reads_the_store(
    tmp_path: Path, setting: tuple[CountingStore, list[int], pd.DataFrame]
) -> None:
    store, clock, events = setting
    merger = FeatureMerger(ViewCatalog(tmp_path), store, clock=lambda: clock[-1], cache=False)
    for _ in range(3):
        np.testing.assert_allclose(served(merger), expected(events, clock[-1]))
    assert store.reads == 3
    assert merger.features("item", ITEMS).rows is None


def _row(entity_id: str, impressions: int) -> SpeedRow:
    """A speed row of one tile, two minutes before the clock, holding ``impressions``."""
    minute = (START + 88 * M) // M
    return SpeedRow(
        entity_id, pack_tiles(np.array([minute]), np.array([[impressions, 0, 0]])), 0, 1
    )


def test_a_write_re_merges_only_the_entities_it_names(tmp_path: Path) -> None:
    store = CountingStore()
    store.write("item", [_row(i, 1) for i in ITEMS])
    merger = FeatureMerger(ViewCatalog(tmp_path), store, clock=lambda: START + 90 * M)
    merger.features("item", ITEMS)
    store.write("item", [_row("i2", 7)])
    merged = merger.features("item", ITEMS)
    assert store.read_ids[-1] == ["i2"]
    impressions = merged.values[:, FEATURE_NAMES.index("impressions_1h")]
    assert impressions.tolist() == [1, 7, 1]
    store.write("user", [_row("i1", 9)])  # another kind's write names no item
    merger.features("item", ITEMS)
    assert store.reads == 2


def test_a_trimmed_change_log_drops_the_whole_cache(tmp_path: Path) -> None:
    store = CountingStore(keep_changes=2)
    store.write("item", [_row(i, 1) for i in ITEMS])
    merger = FeatureMerger(ViewCatalog(tmp_path), store, clock=lambda: START + 90 * M)
    merger.features("item", ITEMS)
    for n in range(3):  # more writes than the log keeps, none read in between
        store.write("item", [_row("i3", 10 + n)])
    merged = merger.features("item", ITEMS)
    assert store.read_ids[-1] == ITEMS
    assert merged.values[2, FEATURE_NAMES.index("impressions_1h")] == 12


class FeastBackedStore:
    """A real online store as the layers use it: rows written by the speed layer's
    writer (Feast's write path, then the change record), read by serving's fast reader."""

    def __init__(self, config: SaikiConfig) -> None:
        from saiki.feature_repo.online_readers import online_reader
        from saiki.feature_repo.speed_rows import FeastSpeedWriter

        self._writer = FeastSpeedWriter(config)
        self._reader = online_reader(config)

    def write(self, entity: str, rows: list[SpeedRow]) -> None:
        self._writer.write(entity, rows)

    def read(self, entity: str, ids: Sequence[str]) -> Mapping[str, SpeedRow]:
        return self._reader.read(entity, ids)

    def changes_since(self, seq: int | None) -> Changes | None:
        return self._reader.changes_since(seq)


@pytest.fixture(params=["memory", "sqlite", "redis"])
def racing_store(
    request: pytest.FixtureRequest, tmp_path: Path
) -> CountingStore | FeastBackedStore:
    """The in-memory store, and the real SQLite and Redis online stores: one design."""
    if request.param == "memory":
        return CountingStore()
    redis = request.getfixturevalue("redis_server") if request.param == "redis" else ""
    return FeastBackedStore(online_store_config(tmp_path / "data", request.param, redis))


def test_a_writer_racing_continuous_reads_is_never_missed(
    tmp_path: Path, racing_store: CountingStore | FeastBackedStore
) -> None:
    """Each write raises an entity's count by one; every served value must be at least
    the count the writer had finished writing before the read began (a stale cache hit
    would serve less), and after the race every value equals a fresh merge. On the
    in-memory store and on the real SQLite and Redis stores, written and read as in
    service."""
    store = racing_store
    ids = [f"i{n}" for n in range(20)]
    done = dict.fromkeys(ids, 0)
    store.write("item", [_row(i, 0) for i in ids])
    merger = FeatureMerger(ViewCatalog(tmp_path / "views"), store, clock=lambda: START + 90 * M)
    column = FEATURE_NAMES.index("impressions_1h")
    stop = threading.Event()

    def write() -> None:
        rng = np.random.default_rng(9)
        while not stop.is_set():
            entity_id = ids[int(rng.integers(len(ids)))]
            store.write("item", [_row(entity_id, done[entity_id] + 1)])
            done[entity_id] += 1

    writer = threading.Thread(target=write)
    writer.start()
    stale = reads = 0
    deadline = time.monotonic() + 120
    try:
        # At least 3,000 reads and 60 writes (Feast's SQLite writes are slow).
        while (reads < 3_000 or sum(done.values()) < 60) and time.monotonic() < deadline:
            reads += 1
            floor = dict(done)
            served = merger.features("item", ids).values[:, column]
            stale += sum(int(v) < floor[i] for i, v in zip(ids, served, strict=True))
    finally:
        stop.set()
        writer.join()
    assert stale == 0
    assert sum(done.values()) >= 60  # the writer did race the reads
    fresh = FeatureMerger(
        ViewCatalog(tmp_path / "views"), store, clock=lambda: START + 90 * M, cache=False
    )
    np.testing.assert_array_equal(
        merger.features("item", ids).values, fresh.features("item", ids).values
    )


def test_a_row_whose_tiles_are_out_of_order_sums_the_same(tmp_path: Path) -> None:
    minutes = np.array([(START + k * M) // M for k in (80, 85, 88)])
    values = np.array([[1, 0, 0], [2, 1, 50], [4, 0, 0]])
    ordered, shuffled = CountingStore(), CountingStore()
    ordered.write("item", [SpeedRow("i1", pack_tiles(minutes, values), 0, 1)])
    shuffled.write("item", [SpeedRow("i1", pack_tiles(minutes[::-1], values[::-1]), 0, 1)])
    clock = START + 90 * M
    served = [
        FeatureMerger(ViewCatalog(tmp_path), store, clock=lambda: clock).features("item", ["i1"])
        for store in (ordered, shuffled)
    ]
    np.testing.assert_array_equal(served[0].values, served[1].values)
    assert served[0].values[0, FEATURE_NAMES.index("impressions_1h")] == 7


def test_now_and_as_of_now_are_both_served_from_memory(tmp_path: Path) -> None:
    """A prober asking "as of now" (its minute's ceiling) between calls for "now" must not
    make either miss; a past minute is merged every time and never evicts them."""
    store = CountingStore()
    store.write("item", [_row(i, 1) for i in ITEMS])
    now = START + 90 * M + 30_000
    merger = FeatureMerger(ViewCatalog(tmp_path), store, clock=lambda: now)
    merger.features("item", ITEMS)
    merger.features("item", ITEMS, now)
    reads = store.reads
    for _ in range(3):
        assert merger.features("item", ITEMS).rows is not None
        assert merger.features("item", ITEMS, now).rows is not None
    assert store.reads == reads
    assert merger.features("item", ITEMS, now - 30 * M).rows is None  # merged, not kept
    merger.features("item", ITEMS)
    assert store.reads == reads + 1
