"""One user's rows out of the master dataset (``saiki forget``): Iceberg row-level deletes.

pyiceberg deletes copy-on-write: each data file that holds one of the user's rows is
rewritten without them, in one snapshot per table. The snapshot carries the loaders'
``saiki.*`` summary, so exactly-once loading resumes where it was. Older snapshots still
reach the old files until ``saiki master maintain`` expires them.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyiceberg.expressions import EqualTo

from saiki.batch.master import MasterDataset, loader_summary
from saiki.batch.predictions import PREDICTIONS_TABLE
from saiki.batch.tables import EVENTS_TABLE
from saiki.core.forgotten import user_digest

FORGET: str = "saiki.forget.user-sha256"


@dataclass(frozen=True)
class TableForgotten:
    """What a delete removed from one table."""

    table: str
    rows: int
    snapshot_id: int | None  # the delete's snapshot (None: nothing to delete)


def forget_in_master(master: MasterDataset, user_id: str) -> list[TableForgotten]:
    """Delete every row of the user from saiki.events and saiki.predictions. Run under
    the loader's lock, after a load (so that nothing acknowledged before is loaded
    after)."""
    results = []
    for name in (EVENTS_TABLE, PREDICTIONS_TABLE):
        table = master.table(name)
        if table.current_snapshot() is None:
            results.append(TableForgotten(name, 0, None))
            continue
        row_filter = EqualTo("user_id", user_id)
        count = table.scan(row_filter=row_filter, selected_fields=("user_id",)).to_arrow()
        if count.num_rows == 0:
            results.append(TableForgotten(name, 0, None))
            continue
        carry = {**loader_summary(table), FORGET: user_digest(user_id)}
        table.delete(row_filter, snapshot_properties=carry)
        snapshot = master.table(name).current_snapshot()
        results.append(
            TableForgotten(name, count.num_rows, snapshot.snapshot_id if snapshot else None)
        )
    return results
