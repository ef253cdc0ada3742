"""The batch view's Beam transforms, in the style of Beam's own examples."""

from __future__ import annotations

from typing import Any

import apache_beam as beam
import pyarrow as pa
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to

from saiki.batch.pipeline import DEAD_LETTER, ComputeBatchView

T = 1_795_176_000_000  # a whole minute: 2026-11-20T12:00:00Z
MIN = 60_000


def events(*rows: tuple[int, str, str, str, int | None]) -> pa.Table:
    """(event_time, user_id, item_id, event_type, dwell_ms) rows as the scan yields them."""
    times, users, items, types, dwell = zip(*rows, strict=True)
    return pa.table(
        {
            "event_time": pa.array(times, pa.int64()),
            "user_id": pa.array(users, pa.string()),
            "item_id": pa.array(items, pa.string()),
            "event_type": pa.array(types, pa.string()),
            "dwell_ms": pa.array(dwell, pa.int64()),
            "log_offset": pa.array(range(len(times)), pa.int64()),
        }
    )


def features_of(entity: str, *names: str) -> Any:
    def pick(keyed: tuple[Any, pa.Table]) -> list[tuple[Any, ...]]:
        key = f"{entity}_id"
        return [tuple([r[key], *(r[n] for n in names)]) for r in keyed[1].to_pylist()]

    return beam.FlatMap(pick)


def test_each_aggregation_sums_across_days() -> None:
    first = events(
        (T - 10 * MIN, "u1", "i1", "IMPRESSION", None),
        (T - 9 * MIN, "u1", "i1", "CLICK", 1500),
    )
    second = events(
        (T - 5 * MIN, "u1", "i2", "IMPRESSION", None),
        (T - 4 * MIN, "u1", "i2", "CLICK", 500),
        (T - 3 * MIN, "u2", "i2", "CLICK", None),
    )
    with BeamTestPipeline(runner="DirectRunner") as pipeline:
        view = pipeline | beam.Create([(0, first), (1, second)]) | ComputeBatchView(T)
        users = view["user_features"] | features_of(
            "user", "impressions_1h", "clicks_1h", "dwell_ms_1h", "ctr_1h", "mean_dwell_ms_1h"
        )
        assert_that(
            users,
            equal_to(
                [
                    ("u1", 2.0, 2.0, 2000.0, 3 / 22, 1000.0),
                    ("u2", 0.0, 1.0, 0.0, 2 / 20, 0.0),
                ]
            ),
        )
        items = view["item_features"] | "items" >> features_of(
            "item", "impressions_1d", "clicks_1d"
        )
        assert_that(items, equal_to([("i1", 1.0, 1.0), ("i2", 1.0, 2.0)]), label="items")


def test_window_edges_at_the_cutoff() -> None:
    # An event exactly at floor_minute(T - 1h) counts; one millisecond before does not;
    # one minute before T counts; an event at T would belong to the speed layer.
    batch = events(
        (T - 60 * MIN, "u1", "i1", "IMPRESSION", None),
        (T - 60 * MIN - 1, "u1", "i1", "IMPRESSION", None),
        (T - MIN, "u1", "i1", "IMPRESSION", None),
        (T - 1, "u1", "i1", "IMPRESSION", None),
        (T - 1440 * MIN, "u1", "i1", "IMPRESSION", None),
        (T - 10080 * MIN, "u1", "i1", "IMPRESSION", None),
    )
    with BeamTestPipeline(runner="DirectRunner") as pipeline:
        view = pipeline | beam.Create([(0, batch)]) | ComputeBatchView(T)
        counts = view["user_features"] | features_of(
            "user", "impressions_1h", "impressions_1d", "impressions_7d"
        )
        assert_that(counts, equal_to([("u1", 3.0, 5.0, 6.0)]))


def test_bad_rows_go_to_the_dead_letter_output_not_the_view() -> None:
    batch = events(
        (T - MIN, "u1", "i1", "IMPRESSION", None),
        (T - MIN, "", "i1", "IMPRESSION", None),
        (T - MIN, "u1", "i1", "PURCHASE", None),
        (T - MIN, "u1", "i1", "CLICK", -5),
    )
    with BeamTestPipeline(runner="DirectRunner") as pipeline:
        view = pipeline | beam.Create([(0, batch)]) | ComputeBatchView(T)
        counts = view["item_features"] | features_of("item", "impressions_1h", "clicks_1h")
        assert_that(counts, equal_to([("i1", 1.0, 0.0)]))
        bad = view[DEAD_LETTER] | beam.Map(lambda t: t.num_rows) | beam.CombineGlobally(sum)
        assert_that(bad, equal_to([3]), label="dead")


def test_tiles_are_per_minute_sums() -> None:
    batch = events(
        (T - 2 * MIN + 5, "u1", "i1", "IMPRESSION", None),
        (T - 2 * MIN + 59_000, "u1", "i1", "CLICK", 100),
        (T - MIN, "u1", "i1", "CLICK", 200),
    )
    with BeamTestPipeline(runner="DirectRunner") as pipeline:
        view = pipeline | beam.Create([(0, batch)]) | ComputeBatchView(T)
        rows = view["user_tiles"] | beam.FlatMap(
            lambda kv: [
                (r["minute"], r["impressions"], r["clicks"], r["dwell_ms"])
                for r in kv[1].to_pylist()
            ]
        )
        base = (T - 2 * MIN) // MIN
        assert_that(rows, equal_to([(base, 1, 1, 100), (base + 1, 0, 1, 200)]))
