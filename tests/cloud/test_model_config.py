"""config.pbtxt as Triton writes it: parsed, checked, turned into ModelSettings."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from edgecut.cloud.model_config import (
    DynamicBatchingSettings,
    ModelSettings,
    load_model_config,
    parse_model_config,
)
from edgecut.cloud.versions import VersionPolicy
from edgecut.errors import BadModelError

# As Triton's docs and model analyzer write them, including fields edgecut does not read.
TRITON_CONFIG = """
name: "resnet_tail"
platform: "onnxruntime_onnx"
max_batch_size: 16
version_policy: { latest: { num_versions: 2 } }
input [
  {
    name: "input"
    data_type: TYPE_FP32
    format: FORMAT_NCHW
    dims: [ 3, 224, 224 ]
  }
]
output [
  {
    name: "logits"
    data_type: TYPE_FP32
    dims: [ 1000 ]
    label_filename: "labels.txt"
  }
]
instance_group [
  {
    count: 2
    kind: KIND_CPU
  },
  {
    kind: KIND_CPU
  }
]
dynamic_batching {
  preferred_batch_size: [ 4, 8 ]
  max_queue_delay_microseconds: 100
  preserve_ordering: true
  default_queue_policy {
    timeout_action: DELAY
    default_timeout_microseconds: 50000
    max_queue_size: 64
  }
}
optimization { execution_accelerators { cpu_execution_accelerator: [ { name: "openvino" } ] } }
model_warmup [ { name: "zeros" batch_size: 1 inputs { key: "input" value: {
  data_type: TYPE_FP32 dims: [ 3, 224, 224 ] zero_data: true } } } ]
parameters { key: "intra_op_thread_count" value: { string_value: "2" } }
"""


def test_triton_config_is_read(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    model_dir = tmp_path / "resnet_tail"
    model_dir.mkdir()
    (model_dir / "config.pbtxt").write_text(TRITON_CONFIG)
    with caplog.at_level(logging.WARNING, logger="edgecut.cloud.model_config"):
        config, settings = load_model_config(model_dir)
    assert settings == ModelSettings(
        max_batch_size=16,
        dynamic_batching=DynamicBatchingSettings(
            preferred_batch_sizes=(4, 8), max_queue_delay_us=100, preserve_ordering=True,
            max_queue_size=64, default_timeout_us=50000, timeout_action="delay",
        ),
        version_policy=VersionPolicy(kind="latest", num_versions=2),
        instance_count=3,
        parameters={"intra_op_thread_count": "2"},
        intra_op_threads=2,
    )
    assert [i.name for i in config.input] == ["input"] and list(config.input[0].dims) == [3, 224, 224]
    # Unknown Triton fields: one warning each, naming file and line.
    lines = TRITON_CONFIG.split("\n")
    for field in ("optimization", "model_warmup"):
        line = next(i for i, text in enumerate(lines, 1) if text.startswith(field))
        assert f"{model_dir}/config.pbtxt:{line}: field {field!r}" in caplog.text
    assert caplog.text.count("not read by edgecut") == 2
    # Read but not acted on: said once each, so no one relies on them unknowingly.
    for setting in ("output 'logits' label_filename", "timeout_action DELAY"):
        assert f"{setting}" in caplog.text
    assert caplog.text.count("not applied by edgecut") == 2


@pytest.mark.parametrize(("text", "expected"), [
    ("max_batch_sise: 8", r"config.pbtxt:1: 'max_batch_sise' is no field of ModelConfig "
                          r"\(Triton's model_config.proto\); did you mean 'max_batch_size'\?"),
    ("max_batch_size: 8\ndynamic_batching { max_queue_delay_micros: 5 }",
     r":2: 'max_queue_delay_micros' is no field of ModelDynamicBatching.*"
     r"did you mean 'max_queue_delay_microseconds'"),
    ("sequence_batching { max_sequence_idle_microseconds: 5000000 }",
     r":1: 'sequence_batching' is not served: a stateful model"),
    ("batch_input [ { kind: BATCH_ELEMENT_COUNT target_name: \"n\" } ]",
     "'batch_input' is not served"),
    ('input [ { name: "x" data_type: TYPE_FP32 dims: [ 4 ] reshape: { shape: [ 2, 2 ] } } ]',
     "input 'x': reshape is not supported"),
    ('parameters { key: "intra_op_thread_count" value: { string_value: "two" } }',
     "'intra_op_thread_count' must be a whole number >= 0"),
])
def test_configs_that_would_serve_wrongly_are_refused(tmp_path: Path, text: str,
                                                      expected: str) -> None:
    """A typo would load the model with a default, and a stateful, ensemble or reshaping
    config would be served without what it needs: each is refused, naming file and line."""
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.pbtxt").write_text(text)
    with pytest.raises(BadModelError, match=expected):
        load_model_config(tmp_path / "m")


def test_defaults_are_tritons(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    config, settings = load_model_config(tmp_path / "m")
    assert config.name == "m"
    assert settings.version_policy == VersionPolicy(kind="latest", num_versions=1)
    assert settings.max_batch_size == 0 and settings.dynamic_batching is None
    assert settings.instance_count == 2 and settings.default_model_filename == "model.onnx"
    empty_batching = parse_model_config("max_batch_size: 4 dynamic_batching {}")
    assert empty_batching.HasField("dynamic_batching")


def test_malformed_config_names_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.pbtxt").write_text('name: "m"\nmax_batch_size: eight\n')
    with pytest.raises(BadModelError, match=rf"{tmp_path}/m/config.pbtxt:2:\d+: .*eight"):
        load_model_config(tmp_path / "m")


def test_bad_values_are_reported_together(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.pbtxt").write_text(
        'name: "other" platform: "tensorrt_plan" max_batch_size: 2\n'
        "dynamic_batching { preferred_batch_size: [4] }\n"
        "version_policy { specific { versions: [] } }\n"
    )
    with pytest.raises(BadModelError) as info:
        load_model_config(tmp_path / "m")
    message = str(info.value)
    assert message.startswith(f"{tmp_path}/m/config.pbtxt: ")
    for part in ("name 'other' does not match the model folder 'm'", "'tensorrt_plan' is not served",
                 "at least one version", "got [4]"):
        assert part in message


def test_settings_validate() -> None:
    with pytest.raises(BadModelError, match="max_batch_size must be >= 0"):
        ModelSettings(max_batch_size=-1)
