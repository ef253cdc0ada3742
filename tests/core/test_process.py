"""A supervisor's children: the priority it asks for is taken first thing."""

from __future__ import annotations

import os
import subprocess
import sys

from saiki.core.process import NICE_ENV


def _niceness(env: dict[str, str]) -> int:
    script = (
        "import os; from saiki.core.process import nice_from_environment;"
        "nice_from_environment(); print(os.nice(0))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    )
    return int(done.stdout)


def test_a_child_lowers_its_priority_by_what_the_supervisor_asks() -> None:
    base = os.nice(0)
    env = {k: v for k, v in os.environ.items() if k != NICE_ENV}
    assert _niceness(env) == base
    assert _niceness({**env, NICE_ENV: "3"}) == min(19, base + 3)
    assert _niceness({**env, NICE_ENV: "0"}) == base
    assert _niceness({**env, NICE_ENV: "junk"}) == base  # ignored, never a crash
