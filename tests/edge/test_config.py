"""Config validation: every problem named by its field, all at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgecut.edge import Config
from edgecut.errors import BadProfileError, UserInputError


def test_defaults_split_with_endpoint() -> None:
    config = Config(plan=Path("p"), endpoint="localhost:8001")
    assert (config.mode, config.codec, config.cut, config.timeout_s) == ("split", "auto", None,
                                                                         30.0)


def test_string_paths_become_paths() -> None:
    config = Config(plan="p", mode="local", tls_dir="tls")  # type: ignore[arg-type]
    assert config.plan == Path("p") and config.tls_dir == Path("tls")


@pytest.mark.parametrize("mode", ["split", "offload"])
def test_cloud_modes_need_an_endpoint(mode: str) -> None:
    with pytest.raises(BadProfileError, match=f"endpoint is required in mode '{mode}'"):
        Config(plan=Path("p"), mode=mode)  # type: ignore[arg-type]


def test_local_mode_needs_no_endpoint() -> None:
    assert Config(plan=Path("p"), mode="local").endpoint is None


@pytest.mark.parametrize(("field", "value", "message"), [
    ("mode", "cloud", "mode must be one of split, offload, local"),
    ("endpoint", "localhost", "endpoint must be 'host:port'"),
    ("codec", "gzip", "codec must be one of auto, raw, zstd, shuffle_zstd, fp16"),
    ("timeout_s", 0, "timeout_s must be > 0"),
    ("timeout_s", -1.5, "timeout_s must be > 0"),
    ("cut", -1, "cut must be a non-negative cut id"),
    ("cut", True, "cut must be a non-negative cut id"),
    ("intra_op_threads", -2, "intra_op_threads must be an integer >= 0"),
    ("device", "pi4", "device 'pi4' needs tls_dir"),
])
def test_bad_field_is_named(field: str, value: object, message: str) -> None:
    settings: dict[str, object] = {"plan": Path("p"), "endpoint": "localhost:1"}
    settings[field] = value
    with pytest.raises(BadProfileError, match=message):
        Config(**settings)  # type: ignore[arg-type]


def test_all_problems_reported_at_once() -> None:
    with pytest.raises(BadProfileError) as info:
        Config(plan=Path("p"), codec="lz4", timeout_s=0)
    text = str(info.value)
    assert "endpoint is required" in text and "codec" in text and "timeout_s" in text


def test_config_errors_are_value_errors() -> None:
    with pytest.raises(ValueError):
        Config(plan=Path("p"), mode="split")
    assert issubclass(BadProfileError, UserInputError)


def test_config_is_frozen() -> None:
    config = Config(plan=Path("p"), mode="local")
    with pytest.raises(AttributeError):
        config.mode = "split"  # type: ignore[misc]
