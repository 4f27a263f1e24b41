"""The model repository: layout, version choice, metadata, and broken models."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from edgecut.cloud.repository import ModelRepository, TensorSpec, choose_version
from edgecut.errors import BadModelError, ModelNotFoundError


@pytest.fixture(scope="module")
def repo(model_repo: Path) -> ModelRepository:
    return ModelRepository(model_repo, intra_op_threads=1)


def test_latest_version_is_the_highest(repo: ModelRepository) -> None:
    assert repo.get("tiny_cnn", "").version == 2
    assert repo.get("tiny_cnn").version == 2
    assert repo.get("tiny_cnn", "1").version == 1
    assert repo.ready_versions("tiny_cnn") == (1, 2)


def test_metadata_uses_oip_datatypes_and_minus_one_for_symbolic_dims(
    repo: ModelRepository,
) -> None:
    cnn = repo.get("tiny_cnn", "1")
    assert cnn.inputs == (TensorSpec(name="x", datatype="FP32", shape=(1, 3, 32, 32)),)
    assert [o.name for o in cnn.outputs] == ["logits", "features"]
    scale = repo.get("scale_by", "")
    assert scale.inputs == (
        TensorSpec(name="x", datatype="FP32", shape=(-1, 4)),
        TensorSpec(name="k", datatype="INT64", shape=(-1, 4)),
    )
    assert scale.output("y") == TensorSpec(name="y", datatype="FP32", shape=(-1, 4))


def test_config_and_non_numeric_folders_are_ignored(repo: ModelRepository) -> None:
    names = {(m.name, m.version) for m in repo.models()}
    assert ("tiny_cnn", 1) in names and ("tiny_cnn", 2) in names
    assert not any(m.name in ("config.pbtxt", "notes") for m in repo.models())


def test_broken_model_is_listed_not_ready_and_others_load(
    model_repo: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="edgecut.cloud.repository"):
        repo = ModelRepository(model_repo)
    broken = next(m for m in repo.models() if m.name == "broken")
    assert not broken.ready and "cannot be loaded by onnxruntime" in broken.reason
    assert "broken" in caplog.text
    empty = next(m for m in repo.models() if m.name == "empty")
    assert empty.version is None and "no version folder" in empty.reason
    stats = repo.statistics()
    assert stats.ready_versions == 4 and stats.failed_versions == 2
    with pytest.raises(ModelNotFoundError, match="version 1 failed to load"):
        repo.get("broken", "")
    with pytest.raises(ModelNotFoundError, match="no version folder"):
        repo.get("empty", "")


def test_unknown_model_names_the_models_available(repo: ModelRepository) -> None:
    with pytest.raises(ModelNotFoundError, match=r"unknown model 'nope'.*tiny_cnn"):
        repo.get("nope", "")


def test_unknown_version_names_the_versions_available(repo: ModelRepository) -> None:
    with pytest.raises(ModelNotFoundError, match=r"'tiny_cnn' has no version 7.*1, 2"):
        repo.get("tiny_cnn", "7")


@pytest.mark.parametrize("version", ["latest", "-1", "0", "1.0"])
def test_malformed_version_is_not_found(repo: ModelRepository, version: str) -> None:
    with pytest.raises(ModelNotFoundError, match="positive integer"):
        repo.get("tiny_cnn", version)


def test_choose_version_is_pure() -> None:
    assert choose_version("m", "", [3, 1, 2]) == 3
    assert choose_version("m", "2", [3, 1, 2]) == 2
    with pytest.raises(ModelNotFoundError, match="version 4 failed to load: bad"):
        choose_version("m", "4", [1], {4: "bad"})
    with pytest.raises(ModelNotFoundError, match=r"no ready version.*failed to load: bad"):
        choose_version("m", "", [], {1: "bad"})


def test_not_a_directory(tmp_path: Path) -> None:
    with pytest.raises(BadModelError, match="not a directory"):
        ModelRepository(tmp_path / "missing")


def test_negative_threads_rejected(model_repo: Path) -> None:
    with pytest.raises(BadModelError, match="intra_op_threads must be >= 0, got -1"):
        ModelRepository(model_repo, intra_op_threads=-1)


def test_tensor_spec_shapes() -> None:
    spec = TensorSpec(name="x", datatype="FP32", shape=(-1, 4))
    assert spec.accepts_shape((9, 4))
    assert not spec.accepts_shape((9, 5))
    assert not spec.accepts_shape((4,))
    assert spec.describe() == "FP32 [-1,4]"
