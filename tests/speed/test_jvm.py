"""The JIT directives the speed layer hands the JVM: accepted by HotSpot, as meant."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from saiki.speed.jvm import DIRECTIVES_FILE, HOT_CLASSES, jvm_args


def test_hotspot_accepts_the_directives_in_the_intended_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    java = shutil.which("java")
    if java is None:
        pytest.skip("no java on PATH")
    monkeypatch.delenv("JVM_ARGS", raising=False)  # a job earlier in the session set it
    monkeypatch.delenv("SAIKI_DEFAULT_JIT", raising=False)
    args = jvm_args(tmp_path).split()
    printed = subprocess.run(
        [java, *args, "-XX:+CompilerDirectivesPrint", "-version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stderr  # DisplayVMOutputToStderr: the JVM's messages are on stderr
    assert "2 compiler directives added" in printed
    blocks = printed.split("Directive:")
    # First the hot classes with C2 allowed, then everything else with C2 excluded.
    hot, rest = blocks[1], blocks[2]
    assert all(f"{pattern}.*" in hot for pattern in HOT_CLASSES)
    assert hot.split("c2 directives:")[1].split("Exclude:")[1].startswith("false")
    assert "matching: *.*" in rest
    assert rest.split("c2 directives:")[1].split("Exclude:")[1].startswith("true")


def test_jvm_args_keep_the_users_and_are_added_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JVM_ARGS", "-Xmx2g")
    args = jvm_args(tmp_path)
    assert args.startswith("-Xmx2g ")
    assert f"-XX:CompilerDirectivesFile={tmp_path / DIRECTIVES_FILE}" in args
    monkeypatch.setenv("JVM_ARGS", args)
    assert jvm_args(tmp_path) == args  # a second job in the same process


@pytest.mark.parametrize("case", ["opt_out", "space"])
def test_jvm_args_left_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str) -> None:
    monkeypatch.setenv("JVM_ARGS", "-Xmx2g")
    directory = tmp_path / "with space" if case == "space" else tmp_path
    if case == "opt_out":
        monkeypatch.setenv("SAIKI_DEFAULT_JIT", "1")
    assert jvm_args(directory) == "-Xmx2g"
