"""Synthetic users, items and traffic with hidden preferences (``saiki simulate``)."""

from saiki.simulator.traffic import MALFORMED_KINDS, TrafficOptions, TrafficSummary, write_jsonl
from saiki.simulator.world import DEVICES, World, item_id, user_id

__all__ = [
    "DEVICES",
    "MALFORMED_KINDS",
    "TrafficOptions",
    "TrafficSummary",
    "World",
    "item_id",
    "user_id",
    "write_jsonl",
]
