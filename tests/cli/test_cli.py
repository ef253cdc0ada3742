"""The command line as a user runs it: simulate → ingest → master, and clear failures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from saiki.cli.main import main


def test_simulate_ingest_and_show(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data, out = str(tmp_path / "d"), tmp_path / "t.jsonl"
    assert (
        main(
            [
                "simulate",
                "--users",
                "40",
                "--items",
                "20",
                "--days",
                "1",
                "--seed",
                "2",
                "--out",
                str(out),
                "--malformed-rate",
                "0.02",
                "--end",
                "2026-11-20T00:00:00Z",
            ]
        )
        == 0
    )
    summary = json.loads(capsys.readouterr().out)
    assert main(["--data-dir", data, "ingest", str(out), "--workers", "1"]) == 0
    text = capsys.readouterr().out
    assert f"{summary['valid_events']} accepted" in text
    assert main(["--data-dir", data, "master", "snapshots"]) == 0
    assert "append" in capsys.readouterr().out
    assert main(["--data-dir", data, "master", "show"]) == 0
    shown = capsys.readouterr().out
    assert f"total: {summary['valid_events']} events" in shown
    assert "2026-11-19" in shown


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["ingest", "/nonexistent.jsonl"], "no such file"),
        (["master", "show", "--snapshot", "42"], "no snapshot 42"),
        (["master", "show", "--as-of", "tomorrow"], "--as-of"),
        (["simulate", "--out", "x.jsonl", "--late-rate", "2"], "--late-rate"),
    ],
)
def test_failures_exit_non_zero_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert main(["--data-dir", str(tmp_path / "d"), *argv]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
