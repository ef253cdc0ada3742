from __future__ import annotations

from pathlib import Path

import pytest

from saiki.core.config import load_config
from saiki.core.errors import ConfigError


def test_defaults_live_under_the_data_dir(tmp_path: Path) -> None:
    config = load_config(tmp_path, environ={})
    assert config.data_dir == tmp_path.resolve()
    assert config.catalog_uri == f"sqlite:///{tmp_path.resolve() / 'catalog.db'}"
    assert config.warehouse.startswith("file://")
    assert config.serving.port == 50051


def test_file_then_environment_then_overrides(tmp_path: Path) -> None:
    (tmp_path / "saiki.toml").write_text('[serving]\nport = 6000\nhost = "0.0.0.0"\n')
    config = load_config(tmp_path, environ={"SAIKI_SERVING_PORT": "7000"})
    assert (config.serving.port, config.serving.host) == (7000, "0.0.0.0")
    config = load_config(tmp_path, environ={}, serving={"port": 8000})
    assert config.serving.port == 8000


def test_data_dir_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAIKI_DATA_DIR", str(tmp_path / "elsewhere"))
    assert load_config().data_dir == (tmp_path / "elsewhere").resolve()


@pytest.mark.parametrize(
    ("text", "environ", "message"),
    [
        ("[serving]\nprot = 1\n", {}, "serving.prot"),
        ("[nonsense]\n", {}, "[nonsense]"),
        ("[serving]\nport = 'x'\n", {}, "serving.port"),
        ("", {"SAIKI_SPEED_ALLOWED_LATENESS_S": "soon"}, "speed.allowed_lateness_s"),
        ("not toml = = 1", {}, "not valid TOML"),
    ],
)
def test_bad_configuration_names_the_key(
    tmp_path: Path, text: str, environ: dict[str, str], message: str
) -> None:
    (tmp_path / "saiki.toml").write_text(text)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_config(tmp_path, environ=environ)
