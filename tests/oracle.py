"""An independent recomputation of features from raw events, for tests only.

Deliberately naive (pandas boolean masks straight from ARCHITECTURE.md's definition) and
sharing no code with feature_repo/, batch/, speed/ or serving/.
"""

from __future__ import annotations

import pandas as pd

MINUTE = 60_000
WINDOWS = {"1h": 60, "1d": 1440, "7d": 10080}


def floor_minute(ms: int) -> int:
    return ms - ms % MINUTE


def window_features(
    events: pd.DataFrame, key: str, entity_id: str, q: int, upper: int | None = None
) -> dict[str, float]:
    """Every feature of one entity at query time q (ms), from events with an int ms time:
    events from floor_minute(q - W) to ``upper`` (default q; serving "now" at t reads the
    current minute whole: upper = the end of t's minute)."""
    mine = events[events[key] == entity_id]
    end = q if upper is None else upper
    out: dict[str, float] = {}
    for name, minutes in WINDOWS.items():
        lower = floor_minute(q - minutes * MINUTE)
        inside = mine[(mine["event_time"] >= lower) & (mine["event_time"] < end)]
        impressions = float((inside["event_type"] == "IMPRESSION").sum())
        clicks_frame = inside[inside["event_type"] == "CLICK"]
        clicks = float(len(clicks_frame))
        dwell = float(clicks_frame["dwell_ms"].fillna(0).sum())
        out[f"impressions_{name}"] = impressions
        out[f"clicks_{name}"] = clicks
        out[f"dwell_ms_{name}"] = dwell
        out[f"ctr_{name}"] = (clicks + 1) / (impressions + 20)
        out[f"mean_dwell_ms_{name}"] = dwell / max(clicks, 1)
    return out


def master_events(config: object) -> pd.DataFrame:
    """All events of the master dataset's current snapshot, event_time as int ms."""
    from pyiceberg.catalog import load_catalog

    data_dir = config.data_dir  # type: ignore[attr-defined]
    catalog = load_catalog(
        "saiki",
        type="sql",
        uri=f"sqlite:///{data_dir / 'catalog.db'}",
        warehouse=(data_dir / "warehouse").as_uri(),
    )
    frame = catalog.load_table("saiki.events").scan().to_arrow().to_pandas()
    frame["event_time"] = frame["event_time"].astype("datetime64[us, UTC]").astype("int64") // 1000
    return frame


def log_records(config: object) -> pd.DataFrame:
    """Every record of the event log with its offset, in offset order (no saiki code)."""
    import glob
    import json
    import re

    log_dir = config.data_dir / "log" / "events"  # type: ignore[attr-defined]
    rows = []
    # The folder the speed layer lists, and the archive its oldest segments moved to.
    paths = glob.glob(str(log_dir / "seg-*.jsonl")) + glob.glob(
        str(log_dir / "_archive" / "seg-*.jsonl")
    )
    for path in sorted(paths):
        first = int(re.search(r"seg-(\d{16})-", path).group(1))  # type: ignore[union-attr]
        with open(path) as handle:
            for number, line in enumerate(handle):
                record = json.loads(line)
                record["offset"] = first + number
                rows.append(record)
    return pd.DataFrame(rows).sort_values("offset").reset_index(drop=True)


def late_flags(records: pd.DataFrame, lateness_ms: int) -> pd.Series:
    """The documented lateness rule, recomputed: an event is late when its minute ended
    at least the lateness before the newest (ingest-capped) event time of all records
    before it in the log."""
    capped = records[["event_time", "ingest_ms"]].min(axis=1).to_numpy()
    newest_before = pd.Series(capped).cummax().shift(1, fill_value=0).to_numpy()
    minute_end = records["event_time"].to_numpy() // MINUTE * MINUTE + MINUTE
    return pd.Series(minute_end + lateness_ms <= newest_before, index=records.index)
