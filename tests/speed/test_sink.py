"""The speed sink's merge, handoff and restart rules, on the in-memory store."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from saiki.core import forgotten
from saiki.core.forgotten import Forgotten
from saiki.feature_repo.online import MemorySpeedStore, SpeedStatus, read_status, unpack_tiles
from saiki.speed.sink import TileSink

M = 60_000
T = 1_795_176_000_000


def make(tmp_path: Path, store: MemorySpeedStore, cutoff: list[int]) -> TileSink:
    return TileSink(
        store,
        tmp_path,
        lambda: cutoff[-1],
        SpeedStatus(allowed_lateness_ms=300_000),
        clock=lambda: 1,
    )


def tiles_of(store: MemorySpeedStore, entity: str, entity_id: str) -> dict[int, list[int]]:
    row = store.read(entity, [entity_id])[entity_id]
    minutes, values = unpack_tiles(row.tiles)
    return {m * M: v.tolist() for m, v in zip(minutes.tolist(), values, strict=True)}


def test_updates_replace_a_tile_and_rows_are_written_per_flush(tmp_path: Path) -> None:
    store = MemorySpeedStore()
    sink = make(tmp_path, store, [T])
    sink.on_tile("user", "u1", T, (1, 0, 0), 1)
    sink.on_tile("user", "u1", T, (2, 1, 300), 3)
    sink.on_tile("user", "u1", T + M, (0, 1, 50), 1)
    sink.on_tile("item", "i1", T, (2, 1, 300), 3)
    assert sink.flush() == 2 and store.writes == 2  # one write per entity kind
    assert tiles_of(store, "user", "u1") == {T: [2, 1, 300], T + M: [0, 1, 50]}
    assert sink.status.events_tiled == 4
    assert sink.flush() == 0  # nothing changed


def test_a_replayed_lower_value_never_lowers_a_tile(tmp_path: Path) -> None:
    store = MemorySpeedStore()
    sink = make(tmp_path, store, [T])
    sink.on_tile("user", "u1", T, (5, 2, 900), 7)
    sink.flush()
    # After a restart Flink replays from its checkpoint: the tile grows back from less.
    restarted = make(tmp_path, store, [T])
    assert restarted.restore() == 1
    restarted.on_tile("user", "u1", T, (3, 1, 400), 4)
    restarted.flush()
    assert tiles_of(store, "user", "u1") == {T: [5, 2, 900]}
    restarted.on_tile("user", "u1", T, (6, 2, 900), 8)
    restarted.flush()
    assert tiles_of(store, "user", "u1") == {T: [6, 2, 900]}


def test_rows_keep_tiles_from_the_previous_cutoff_then_drop_them(tmp_path: Path) -> None:
    store = MemorySpeedStore()
    cutoff = [T]
    sink = make(tmp_path, store, cutoff)
    for minute in range(5):
        sink.on_tile("item", "i1", T + minute * M, (1, 0, 0), 1)
    sink.flush()
    cutoff.append(T + 2 * M)  # a new batch view: a server may still use the old one
    sink.flush()
    row = store.read("item", ["i1"])["i1"]
    assert row.tiles_from_ms == T and len(unpack_tiles(row.tiles)[0]) == 5
    cutoff.append(T + 4 * M)  # the next one: tiles before T + 2 min are in every view
    sink.flush()
    row = store.read("item", ["i1"])["i1"]
    assert row.tiles_from_ms == T + 2 * M
    assert unpack_tiles(row.tiles)[0].tolist() == [(T + m * M) // M for m in (2, 3, 4)]


def test_an_entity_with_no_tile_left_is_forgotten_and_its_row_removed(tmp_path: Path) -> None:
    """State stays bounded as entities come and go: once every tile of an entity is
    older than the oldest cutoff in use, the sink holds nothing of it and its speed row
    goes (a server finds no row: no events since the cutoff, the same answer)."""
    store = MemorySpeedStore()
    cutoff = [T]
    sink = make(tmp_path, store, cutoff)
    sink.on_tile("user", "gone", T, (1, 0, 0), 1)
    sink.on_tile("user", "stays", T, (1, 0, 0), 1)
    sink.on_tile("user", "stays", T + 3 * M, (2, 1, 40), 2)
    sink.flush()
    cutoff.append(T + 2 * M)
    sink.flush()  # the old view may still be in use: both rows stay whole
    assert set(store.read("user", ["gone", "stays"])) == {"gone", "stays"}
    seq = store.changes_since(None).seq
    cutoff.append(T + 4 * M)  # every view starts after "gone"'s only tile
    sink.flush()
    assert set(store.read("user", ["gone", "stays"])) == {"stays"}
    assert tiles_of(store, "user", "stays") == {T + 3 * M: [2, 1, 40]}
    changed = store.changes_since(seq).entities
    assert changed is not None and "gone" in changed["user"]  # servers drop their copy
    assert sink.status.rows_removed == 1
    sink.on_tile("user", "gone", T + 5 * M, (1, 0, 0), 1)  # back: a row again
    sink.flush()
    assert tiles_of(store, "user", "gone") == {T + 5 * M: [1, 0, 0]}
    for later in (6, 7):
        cutoff.append(T + later * M)
        sink.flush()
    assert store.read("user", ["gone", "stays"]) == {}  # and nothing held grows
    assert sink.status.rows_removed == 3


def test_a_job_started_after_a_handoff_trims_and_removes_the_rows_it_restores(
    tmp_path: Path,
) -> None:
    """``saiki up`` restarts the speed job fresh from each new cutoff: rows the previous
    job wrote are restored, and those holding minutes before the new cutoff are repacked
    at the first flush (or removed when nothing is left), not kept as they were."""
    store = MemorySpeedStore()
    before = make(tmp_path, store, [T])
    before.on_tile("user", "old", T, (1, 0, 0), 1)
    before.on_tile("user", "both", T, (1, 0, 0), 1)
    before.on_tile("user", "both", T + 3 * M, (2, 1, 40), 2)
    before.on_tile("user", "new", T + 4 * M, (1, 0, 0), 1)
    before.flush()
    fresh = make(tmp_path, store, [T + 2 * M])  # the next job, from the new cutoff
    assert fresh.restore() == 3
    assert fresh.flush() == 2  # "both" repacked, "new" restamped, "old" removed
    assert set(store.read("user", ["old", "both", "new"])) == {"both", "new"}
    assert tiles_of(store, "user", "both") == {T + 3 * M: [2, 1, 40]}
    assert store.read("user", ["both"])["both"].tiles_from_ms == T + 2 * M
    assert fresh.status.rows_removed == 1
    assert fresh.flush() == 0  # nothing left to trim


def test_status_is_published_for_other_processes(tmp_path: Path) -> None:
    sink = make(tmp_path, MemorySpeedStore(), [T])
    sink.on_progress(10, T + 90_000, T + 91_000)
    sink.on_late(2)
    sink.on_progress(7, T + 80_000, T + 81_000)  # a replayed, older total changes nothing
    sink.on_late(1)
    sink.flush()
    status = read_status(tmp_path)
    assert status is not None
    assert (status.events_seen, status.late_events, status.max_event_ms) == (10, 2, T + 90_000)
    assert status.watermark_ms == T + 90_000 - 300_000
    assert np.isclose(status.last_flush_seconds, 0.0)


def test_held_tiles_pack_like_a_sorted_max_merge_of_every_update() -> None:
    from saiki.feature_repo.online import WIDTH
    from saiki.speed.sink import _HeldTiles

    rng = np.random.default_rng(3)
    held, reference = _HeldTiles(), {}
    keep = 0
    for step in range(400):
        minute = int(rng.integers(1000, 1060))  # out of order, repeated
        update = rng.integers(0, 50, WIDTH).astype(np.int64)  # aggregations + events
        held.merge(minute, update)
        reference[minute] = np.maximum(reference.get(minute, update), update)
        if step % 50 == 49:
            keep += 5  # the cutoff moves: older minutes leave the row
            reference = {m: v for m, v in reference.items() if m >= keep + 1000}
            minutes, values = unpack_tiles(held.packed(keep + 1000))
            assert minutes.tolist() == sorted(reference)
            expected = [reference[m][:-1].tolist() for m in sorted(reference)]
            assert values.tolist() == expected


def test_writes_follow_each_tick_when_caught_up_and_space_out_when_behind() -> None:
    from saiki.speed.flink_sink import flush_delay_ms

    # Caught up: the next write may start at the next tick, however long the last took.
    assert flush_delay_ms(100, last_write_ms=700, behind_ms=400) == 100
    # Behind: four times the last write, within [tick, 3 s].
    assert flush_delay_ms(100, last_write_ms=700, behind_ms=60_000) == 2_800
    assert flush_delay_ms(100, last_write_ms=10, behind_ms=60_000) == 100
    assert flush_delay_ms(100, last_write_ms=5_000, behind_ms=60_000) == 3_000


def test_a_forgotten_user_loses_held_and_replayed_tiles_up_to_the_deletion(
    tmp_path: Path,
) -> None:
    store = MemorySpeedStore()
    data = tmp_path / "data"
    data.mkdir()
    sink = TileSink(
        store,
        tmp_path,
        lambda: T,
        SpeedStatus(allowed_lateness_ms=300_000),
        clock=lambda: 1,
        forgotten=Forgotten.of(data),
    )
    sink.on_tile("user", "u1", T, (3, 1, 100), 3)
    sink.on_tile("user", "u2", T, (1, 0, 0), 1)
    sink.on_tile("item", "i1", T, (4, 1, 100), 4)
    sink.flush()
    sink.on_tile("user", "u1", T + M, (1, 0, 0), 1)  # dirty when the deletion comes
    forgotten.record(data, "u1", T + M + 30_000)
    store._rows.pop(("user", "u1"))  # what `saiki forget` deletes online
    assert sink.flush() == 0  # nothing of u1 is written back
    assert "u1" not in store.read("user", ["u1"])
    # A replay of the log brings u1's old minutes again: dropped. Later minutes are
    # kept (the user came back); others are untouched.
    sink.on_tile("user", "u1", T, (3, 1, 100), 3)
    sink.on_tile("user", "u1", T + M, (1, 0, 0), 1)
    sink.on_tile("user", "u1", T + 2 * M, (1, 0, 0), 1)
    sink.on_tile("user", "u2", T + M, (2, 0, 0), 2)
    sink.flush()
    assert tiles_of(store, "user", "u1") == {T + 2 * M: [1, 0, 0]}
    assert tiles_of(store, "user", "u2") == {T: [1, 0, 0], T + M: [2, 0, 0]}
    assert tiles_of(store, "item", "i1") == {T: [4, 1, 100]}


def test_read_through_moves_over_segments_read_whole_in_any_order(tmp_path: Path) -> None:
    sink = make(tmp_path, MemorySpeedStore(), [T])
    sink.status.read_through = 100
    sink.on_segment(110, 5, 5)  # read whole, but 100..109 is not: held ahead
    sink.on_segment(100, 10, 9)  # one record short
    assert sink.status.read_through == 100 and sink.read_ahead == {110: 115}
    sink.on_segment(100, 10, 10)
    assert sink.status.read_through == 115 and not sink.read_ahead
    sink.on_segment(110, 5, 5)  # a replay after a restore changes nothing
    sink.on_segment(90, 10, 10)  # before the job's first segment
    assert sink.status.read_through == 115 and not sink.read_ahead
    sink.flush()
    status = read_status(tmp_path)
    assert status is not None and status.read_through == 115
