"""Plan folders as docs/plan-format.md describes them, and the errors of the file shell."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import onnx
import pytest

from edgecut.errors import BadModelError, UnknownCutError
from edgecut.partitioner import (
    list_cuts,
    load_model,
    model_name,
    run_model,
    run_split_locally,
    verify_split,
    within_tolerance,
    write_plan,
)
from edgecut.zoo import chain_cnn, dynamic_cnn, multi_branch, sample_inputs


@pytest.fixture
def chain_path(tmp_path: Path) -> Path:
    path = tmp_path / "chain_cnn.onnx"
    onnx.save(chain_cnn(), str(path))
    return path


def test_plan_folder_matches_the_format(chain_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "plan"
    cuts = list_cuts(chain_cnn())
    last = cuts[-1].id
    plan = write_plan(chain_path, out, cut_ids=[0, 3, last], chosen=3, input_shapes=None)
    on_disk = json.loads((out / "plan.json").read_text())
    assert on_disk == plan
    assert plan["format"] == "edgecut-plan" and plan["version"] == 1
    assert plan["chosen"] == 3
    assert plan["input_shapes"] == {"x": [1, 3, 32, 32]}
    m = plan["model"]
    assert m["name"] == "chain_cnn" and m["file"] == "full.onnx" and m["opset"] == 17
    assert (out / "full.onnx").read_bytes() == chain_path.read_bytes()
    assert m["sha256"] == hashlib.sha256(chain_path.read_bytes()).hexdigest()
    assert m["inputs"] == [{"name": "x", "dtype": "float32", "shape": [1, 3, 32, 32]}]
    assert m["outputs"] == [{"name": "y", "dtype": "float32", "shape": [1, 10]}]

    keys = {
        "id",
        "crossing",
        "bytes",
        "down_bytes",
        "device_nodes",
        "cloud_nodes",
        "head",
        "tail",
        "device_outputs",
        "cloud_outputs",
        "endpoint_model",
        "max_abs_diff",
    }
    entries = {c["id"]: c for c in plan["cuts"]}
    assert list(entries) == [0, 3, last]
    for entry in plan["cuts"]:
        assert keys <= set(entry)
        cut = cuts[entry["id"]]
        assert entry["crossing"] == sorted(entry["crossing"]) == list(cut.crossing)
        assert entry["bytes"] == cut.bytes and entry["down_bytes"] == cut.down_bytes
        assert entry["max_abs_diff"] <= 1e-5
    zero, mid, full = entries[0], entries[3], entries[last]
    assert zero["head"] is None and zero["tail"] == "cuts/0/tail.onnx"
    assert zero["crossing"] == ["x"] and zero["device_nodes"] == 0
    assert not (out / "cuts/0/head.onnx").exists()
    assert mid["head"] == "cuts/3/head.onnx" and mid["tail"] == "cuts/3/tail.onnx"
    assert mid["endpoint_model"] == "chain_cnn.cut3"
    assert full["tail"] is None and full["endpoint_model"] is None and full["cloud_nodes"] == 0
    assert full["device_outputs"] == ["y"] and full["cloud_outputs"] == []
    assert not (out / f"cuts/{last}/tail.onnx").exists()

    feeds = sample_inputs(chain_cnn(), seed=5)
    reference = run_model(chain_cnn(), feeds)
    for entry in plan["cuts"]:
        head = out / entry["head"] if entry["head"] else None
        tail = out / entry["tail"] if entry["tail"] else None
        assert within_tolerance(reference, run_split_locally(head, tail, feeds))


def test_plan_is_deterministic(chain_path: Path, tmp_path: Path) -> None:
    a = write_plan(chain_path, tmp_path / "a", cut_ids=[2, 5], chosen=5)
    b = write_plan(chain_path, tmp_path / "b", cut_ids=[2, 5], chosen=5)
    assert a == b
    for rel in ["plan.json", "cuts/2/head.onnx", "cuts/5/tail.onnx"]:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()


def test_plan_of_every_cut_with_several_outputs(tmp_path: Path) -> None:
    path = tmp_path / "multi branch (v2).onnx"
    onnx.save(multi_branch(), str(path))
    plan = write_plan(path, tmp_path / "plan", cut_ids=None, input_shapes=None, chosen=None)
    assert plan["model"]["name"] == "multi_branch__v2_"
    assert len(plan["cuts"]) == len(list_cuts(multi_branch()))
    assert plan["chosen"] == 0
    assert any(c["device_outputs"] == ["aux"] and c["cloud_outputs"] == ["y"] for c in plan["cuts"])


def test_plan_records_given_shapes_of_a_dynamic_model(tmp_path: Path) -> None:
    path = tmp_path / "dyn.onnx"
    onnx.save(dynamic_cnn(), str(path))
    plan = write_plan(path, tmp_path / "p", cut_ids=[1], input_shapes={"x": [2, 3, 16, 16]})
    assert plan["input_shapes"] == {"x": [2, 3, 16, 16]}
    assert plan["model"]["inputs"] == [{"name": "x", "dtype": "float32", "shape": ["N", 3, "H", "W"]}]
    assert plan["cuts"][0]["bytes"] == 2 * 8 * 16 * 16 * 4


def test_model_name_is_sanitised() -> None:
    assert model_name("/a/b/My Model+v1.2.onnx") == "My_Model_v1.2"
    assert model_name("résumé.onnx") == "r_sum_"


def test_missing_model_file(tmp_path: Path) -> None:
    with pytest.raises(BadModelError, match="no such model file"):
        load_model(tmp_path / "absent.onnx")


def test_file_that_is_not_onnx(tmp_path: Path) -> None:
    path = tmp_path / "notes.onnx"
    path.write_bytes(b"\xff\xfe this is not a protobuf \x00\x01")
    with pytest.raises(BadModelError, match="not an ONNX model"):
        load_model(path)


def test_empty_file_is_not_onnx(tmp_path: Path) -> None:
    path = tmp_path / "empty.onnx"
    path.write_bytes(b"")
    with pytest.raises(BadModelError, match="not an ONNX model"):
        load_model(path)


def test_model_that_fails_the_checker(tmp_path: Path) -> None:
    model = chain_cnn()
    model.graph.node[0].op_type = "NoSuchOp"
    path = tmp_path / "broken.onnx"
    onnx.save(model, str(path))
    with pytest.raises(BadModelError, match="fails the ONNX checker"):
        load_model(path)


def test_unknown_cut_id_in_plan(chain_path: Path, tmp_path: Path) -> None:
    with pytest.raises(UnknownCutError, match="cut 500 does not exist"):
        write_plan(chain_path, tmp_path / "p", cut_ids=[500])
    assert not (tmp_path / "p").exists()


def test_chosen_cut_must_be_written(chain_path: Path, tmp_path: Path) -> None:
    with pytest.raises(UnknownCutError, match="chosen cut 4"):
        write_plan(chain_path, tmp_path / "p", cut_ids=[1, 2], chosen=4)


def test_verify_split_rejects_a_tail_of_another_model() -> None:
    model = chain_cnn()
    feeds = sample_inputs(model)
    assert verify_split(model, None, model, feeds) == 0.0
    with pytest.raises(BadModelError, match="differs from the full model"):
        verify_split(model, None, _shifted(model), feeds)


def _shifted(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same model with its last bias moved by 1."""
    shifted = onnx.ModelProto()
    shifted.CopyFrom(model)
    bias = shifted.graph.node[-1].input[2]
    init = next(t for t in shifted.graph.initializer if t.name == bias)
    array = onnx.numpy_helper.to_array(init) + 1.0
    init.CopyFrom(onnx.numpy_helper.from_array(array, bias))
    return shifted
