"""Importing Feast: quietly, and without typeguard's per-import instrumentation.

Every saiki module that needs ``feast`` imports it through :func:`import_feast` first.
"""

from __future__ import annotations

import warnings
from typing import Any


def _unchecked(target: Any = None, **_: Any) -> Any:
    """typeguard's ``@typechecked`` (bare or with arguments) as a no-op."""
    return target if target is not None else (lambda decorated: decorated)


def import_feast() -> Any:
    """Import Feast, 3 s faster than a plain import.

    Feast decorates about twenty of its classes and functions with typeguard's
    ``@typechecked``, which re-reads their source, rewrites it with checks on every
    argument and compiles it again, on every import: 3 of the 5 s ``import feast`` takes
    (7-10 s inside the speed layer's JVM, where it delayed the job's first write). For the
    duration of the import only, the decorator leaves its target as it is; Feast's
    classes behave the same for well-typed calls (saiki's own calls are typed and
    tested), and Feast's own CLI, in its own process, keeps its checks.
    """
    import typeguard

    checked = typeguard.typechecked
    typeguard.typechecked = _unchecked
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import feast
    finally:
        typeguard.typechecked = checked
    # Feast installs "once" filters on import; stream feature views would otherwise print
    # "experimental" warnings by the hundred. Silenced here, in one place, on purpose.
    warnings.filterwarnings("ignore", module="feast")
    warnings.filterwarnings("ignore", message=".*experimental.*")
    return feast
