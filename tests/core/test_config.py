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
        ('[feast]\nonline_store = "redsi"\n', {}, "feast.online_store: expected one of sqlite"),
        ("", {"SAIKI_SERVING_PRECISION": "int4"}, "serving.precision"),
        ('[catalog]\ntype = "glue"\n', {}, "catalog.type"),
        ("[serving]\nworkers = 0\n", {}, "serving.workers: must be at least 1"),
        ("", {"SAIKI_SERVING_PORT": "70000"}, "serving.port: must be at most 65535"),
        ("[serving]\nlog_features_share = 1.5\n", {}, "serving.log_features_share: must be"),
        ("", {"SAIKI_SERVING_LOG_FEATURES_SHARE": "half"}, "serving.log_features_share"),
        ("", {"SAIKI_SERVING_ACCESS_LOG_SHARE": "-0.1"}, "serving.access_log_share: must be"),
        ("[schedule]\nnice = 20\n", {}, "schedule.nice: must be at most 19"),
        ("[speed]\nnice = -1\n", {}, "speed.nice: must be at least 0"),
        ('[speed]\ncpus = "one"\n', {}, "speed.cpus: 'one' is not a CPU number"),
        ("", {"SAIKI_SPEED_CPUS": "1-0"}, "speed.cpus: '1-0': CPU numbers"),
        ('[serving]\ncpus = "0,x"\n', {}, "serving.cpus: 'x' is not a CPU number"),
        ('[serving]\ningest_cpus = "x"\n', {}, "serving.ingest_cpus: 'x' is not a CPU"),
        ("[models]\nshadow_cpu = 0.0\n", {}, "models.shadow_cpu: must be within"),
        ("[models]\ntraining_days = 1\n", {}, "models.training_days: must be at least 2"),
        ("", {"SAIKI_MODELS_MAX_HOLDOUT_ROWS": "10"}, "models.max_holdout_rows: must be at"),
        ("[models]\nshadow_cpu = 1.5\n", {}, "models.shadow_cpu: must be within"),
    ],
)
def test_bad_configuration_names_the_key(
    tmp_path: Path, text: str, environ: dict[str, str], message: str
) -> None:
    (tmp_path / "saiki.toml").write_text(text)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_config(tmp_path, environ=environ)


def test_the_options_of_a_choice_are_accepted_from_file_and_environment(tmp_path: Path) -> None:
    (tmp_path / "saiki.toml").write_text('[feast]\nonline_store = "redis"\n')
    config = load_config(tmp_path, environ={"SAIKI_SERVING_PRECISION": "fp32"})
    assert (config.feast.online_store, config.serving.precision) == ("redis", "fp32")


def test_flags_are_the_last_layer(tmp_path: Path) -> None:
    """What `saiki serve --workers` does: a flag given beats the file; one not given
    (None) leaves the file's value."""
    (tmp_path / "saiki.toml").write_text("[serving]\nworkers = 3\nport = 6001\n")
    config = load_config(tmp_path, environ={}, serving={"workers": 2, "port": None})
    assert (config.serving.workers, config.serving.port) == (2, 6001)


def test_a_share_is_a_number_and_the_prediction_log_can_be_turned_off(tmp_path: Path) -> None:
    (tmp_path / "saiki.toml").write_text("[serving]\nlog_features_share = 0\n")
    config = load_config(tmp_path, environ={"SAIKI_SERVING_LOG_PREDICTIONS": "false"})
    assert config.serving.log_features_share == 0.0
    assert config.serving.log_predictions is False


def test_catalog_properties_pass_to_pyiceberg_unchanged(tmp_path: Path) -> None:
    (tmp_path / "saiki.toml").write_text(
        '[catalog]\nwarehouse = "s3://lake/wh"\n'
        '[catalog.properties]\n"s3.endpoint" = "http://127.0.0.1:8333"\n'
        '"s3.access-key-id" = "key"\n"s3.path-style-access" = true\n'
    )
    config = load_config(tmp_path, environ={})
    assert config.iceberg_properties == {
        "type": "sql",
        "uri": config.catalog_uri,
        "warehouse": "s3://lake/wh",
        "s3.endpoint": "http://127.0.0.1:8333",
        "s3.access-key-id": "key",
        "s3.path-style-access": "true",
    }
    environ = {"SAIKI_CATALOG_PROPERTIES": '{"s3.region": "eu-west-1"}'}
    assert load_config(tmp_path, environ=environ).catalog.properties == {"s3.region": "eu-west-1"}
    with pytest.raises(ConfigError, match=r"catalog\.properties"):
        load_config(tmp_path, environ={"SAIKI_CATALOG_PROPERTIES": "s3.region=x"})
