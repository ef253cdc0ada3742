"""The session cluster's distribution folder, laid out from the installed package."""

from __future__ import annotations

from pathlib import Path

import pytest

from saiki.core.errors import ComponentError
from saiki.speed.cluster import FlinkRest, main, package_distribution


def test_prepare_puts_the_python_runtime_in_lib_and_writes_the_settings(tmp_path: Path) -> None:
    home = tmp_path / "flink"
    assert main(["prepare", str(home), "--rpc-port", "16100", "--rest-port", "18100"]) == 0
    lib = {p.name for p in (home / "lib").iterdir()}
    # The package keeps flink-python in opt/, where a cluster does not load it.
    assert not list((package_distribution() / "lib").glob("flink-python-*.jar"))
    assert any(name.startswith("flink-python-") for name in lib)
    assert any(name.startswith("flink-dist-") for name in lib)
    assert (home / "bin" / "jobmanager.sh").exists()
    settings = dict(
        line.split(": ", 1) for line in (home / "conf" / "config.yaml").read_text().splitlines()
    )
    assert settings["rest.port"] == '"18100"' and settings["jobmanager.rpc.port"] == '"16100"'
    assert "--add-opens=java.base/java.util=ALL-UNNAMED" in settings["env.java.opts.all"]
    # Preparing again (a new setting) keeps the folder usable.
    assert main(["prepare", str(home), "--rest-port", "18101"]) == 0
    assert 'rest.port: "18101"' in (home / "conf" / "config.yaml").read_text()


def test_an_unreachable_cluster_is_a_clear_error() -> None:
    with pytest.raises(ComponentError, match=r"REST API at http://127\.0\.0\.1:9 did not answer"):
        FlinkRest("127.0.0.1:9").jobs()
