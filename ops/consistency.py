"""Served features against a recomputation from the master dataset (``saiki consistency``).

The check itself is the batch layer's (:func:`saiki.batch.consistency.check`); this module
hands it the serving path's merger, in this process, as the thing to check.
"""

from __future__ import annotations

from saiki.batch.consistency import (
    ConsistencyReport,
    LogConsistencyReport,
    check,
    check_from_log,
)
from saiki.core.config import SaikiConfig
from saiki.feature_repo.online_readers import online_reader
from saiki.feature_repo.spec import FEATURE_NAMES
from saiki.feature_repo.views import ViewCatalog
from saiki.serving.merge import FeatureMerger


def serving_merger(config: SaikiConfig) -> FeatureMerger:
    """The merger the gRPC servers use (batch view + speed tiles), built in this process."""
    return FeatureMerger(ViewCatalog.open(config), online_reader(config))


def consistency_report(config: SaikiConfig, sample: int, q_ms: int) -> ConsistencyReport:
    """Compare what serving answers at ``q_ms`` with the recomputation, for sampled ids."""
    merger = serving_merger(config)

    def served(entity: str, ids: list[str], q: int) -> dict[str, dict[str, float]]:
        merged = merger.features(entity, ids, q)
        return {
            i: dict(zip(FEATURE_NAMES, row, strict=True))
            for i, row in zip(merged.ids, merged.values.tolist(), strict=True)
        }

    return check(config, served, q_ms, sample)


def log_consistency_report(
    config: SaikiConfig, from_ms: int, to_ms: int, sample: int
) -> LogConsistencyReport:
    """The logged feature values of answers in [from, to) against their recomputation."""
    return check_from_log(config, from_ms, to_ms, sample=sample)
