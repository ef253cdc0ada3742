"""A supervisor's children: the priority it asks for is taken first thing."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from saiki.core.process import NICE_ENV, parse_cpus


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


def _held(cpus: str) -> subprocess.CompletedProcess[str]:
    """A child that holds itself to ``cpus`` after starting a thread, then reports the
    affinity of that thread, of a thread started afterwards and of a child process."""
    script = (
        "import os, subprocess, sys, threading\n"
        "from saiki.core.process import hold_to_cpus\n"
        "gate = threading.Event()\n"
        "early = threading.Thread(target=gate.wait, daemon=True); early.start()\n"
        f"hold_to_cpus({cpus!r})\n"
        "late = threading.Thread(target=gate.wait, daemon=True); late.start()\n"
        "child = subprocess.run([sys.executable, '-c', "
        "'import os; print(sorted(os.sched_getaffinity(0)))'], capture_output=True, text=True)\n"
        "print(sorted(os.sched_getaffinity(early.native_id)), "
        "sorted(os.sched_getaffinity(late.native_id)), child.stdout.strip(), sep='|')\n"
        "gate.set()\n"
    )
    return subprocess.run(
        [sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=60
    )


def test_holding_to_cpus_covers_running_threads_new_threads_and_children() -> None:
    one = max(os.sched_getaffinity(0))
    done = _held(str(one))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().split("|") == [f"[{one}]"] * 3


def test_an_empty_cpu_list_leaves_the_affinity_alone() -> None:
    done = _held("")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().split("|") == [str(sorted(os.sched_getaffinity(0)))] * 3


def test_a_cpu_this_process_may_not_use_is_named() -> None:
    beyond = max(os.sched_getaffinity(0)) + 1
    done = _held(str(beyond))
    assert done.returncode != 0
    assert f"CPU(s) [{beyond}] are not available" in done.stderr


@pytest.mark.parametrize(
    ("text", "cpus"), [("", set()), ("1", {1}), ("0-2", {0, 1, 2}), ("0, 3-4", {0, 3, 4})]
)
def test_cpu_lists_read_as_linux_writes_them(text: str, cpus: set[int]) -> None:
    assert parse_cpus(text) == cpus
