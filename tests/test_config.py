from pathlib import Path

import pytest

from daemon.cli.main import main
from daemon.settings import SHIPPED_MODELS, ConfigError, load_settings


def test_defaults_without_file_use_shipped_models() -> None:
    settings = load_settings(None)
    assert settings.models.segmenter == SHIPPED_MODELS / "segmenter.onnx"
    assert settings.redis.url is None
    assert settings.api.port == 8080 and settings.api.host == "127.0.0.1"


def test_relative_paths_resolve_against_the_files_folder(tmp_path: Path) -> None:
    folder = tmp_path / "etc"
    folder.mkdir()
    (folder / "c.yaml").write_text("data_dir: state\ncapture: {directory: in}\n")
    settings = load_settings(folder / "c.yaml")
    assert settings.data_dir == folder / "state"
    assert settings.capture.directory == folder / "in"
    assert settings.models.classifier == SHIPPED_MODELS / "classifier.onnx"


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "c.yaml").write_text("api: {port: 8081}\n")
    monkeypatch.setenv("LEUKOSCOPE_API__PORT", "9000")
    assert load_settings(tmp_path / "c.yaml").api.port == 9000


@pytest.mark.parametrize(
    "text, key",
    [
        ("api: {port: eighty}\n", "api.port"),
        ("workers: {device: tpu}\n", "workers.device"),
        ("capture: {directroy: x}\n", "capture.directroy"),
        ("queue: {max_backlog: 0}\n", "queue.max_backlog"),
        # HL7 MSH fields: at most 20 characters, no delimiters (else every report is a 500)
        ("lis: {sending_application: ABCDEFGHIJKLMNOPQRSTU}\n", "lis.sending_application"),
        ("lis: {sending_facility: 'LAB|2'}\n", "lis.sending_facility"),
        ("lis: {receiving_facility: 'A^B'}\n", "lis.receiving_facility"),
        ("lis: {statement: \"two\\nlines\"}\n", "lis.statement"),
        # a pixel size must be finite and physical
        ("capture: {um_per_pixel: .inf}\n", "capture.um_per_pixel"),
        ("capture: {um_per_pixel: 0.0001}\n", "capture.um_per_pixel"),
        ("capture: {max_frame_pixels: 0}\n", "capture.max_frame_pixels"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, text: str, key: str) -> None:
    (tmp_path / "c.yaml").write_text(text)
    with pytest.raises(ConfigError) as info:
        load_settings(tmp_path / "c.yaml")
    assert key in str(info.value)


def test_unparsable_or_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("api: [port: 1\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(tmp_path / "c.yaml")
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "missing.yaml")


def test_cli_exits_nonzero_naming_the_key(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "c.yaml").write_text("workers: {count: -1}\n")
    code = main(["worker", "--config", str(tmp_path / "c.yaml")])
    assert code == 2
    assert "workers.count" in capsys.readouterr().err
