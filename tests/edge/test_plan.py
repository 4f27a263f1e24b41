"""load_plan: a real plan loads; every malformed plan is a BadPlanError naming file and key."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edgecut.edge import Plan, load_plan
from edgecut.errors import BadPlanError, UnknownCutError

Edit = Callable[[dict[str, Any]], None]


def _rewrite(plan_dir: Path, edit: Edit) -> Path:
    file = plan_dir / "plan.json"
    doc = json.loads(file.read_text())
    edit(doc)
    file.write_text(json.dumps(doc))
    return file


def test_loads_a_written_plan(plan_dir: Path) -> None:
    doc = json.loads((plan_dir / "plan.json").read_text())
    plan = load_plan(plan_dir)
    assert isinstance(plan, Plan)
    assert plan.directory == plan_dir
    assert plan.model.name == doc["model"]["name"]
    assert [s.name for s in plan.model.outputs] == ["p1", "p2", "p3"]
    assert plan.model.inputs[0].dtype == "float32"
    assert plan.cut_ids == tuple(c["id"] for c in doc["cuts"])
    assert plan.chosen == 3 and plan.cut(3).id == 3
    assert plan.input_shapes == {"x": (1, 3, 32, 32)}
    first, last = plan.cuts[0], plan.cuts[-1]
    assert first.head is None and first.crossing == ("x",)
    assert last.tail is None and last.endpoint_model is None and not last.cloud_outputs
    assert plan.path(plan.cut(3).head or "").is_file()


def test_accepts_a_string_path(plan_dir: Path) -> None:
    assert load_plan(str(plan_dir)).directory == plan_dir


def test_unknown_cut_lists_the_ids(plan_dir: Path) -> None:
    plan = load_plan(plan_dir)
    with pytest.raises(UnknownCutError, match=r"no cut with id 99; the plan has cuts \[0, 1"):
        plan.cut(99)


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(BadPlanError, match="nowhere: plan folder not found"):
        load_plan(tmp_path / "nowhere")


def test_missing_plan_json(tmp_path: Path) -> None:
    with pytest.raises(BadPlanError, match=r"plan\.json: not found"):
        load_plan(tmp_path)


def test_not_json(plan_copy: Path) -> None:
    (plan_copy / "plan.json").write_text("{ not json")
    with pytest.raises(BadPlanError, match=r"plan\.json: not valid JSON"):
        load_plan(plan_copy)


def test_not_an_object(plan_copy: Path) -> None:
    (plan_copy / "plan.json").write_text("[1, 2]")
    with pytest.raises(BadPlanError, match=r"\(top level\) must be a JSON object"):
        load_plan(plan_copy)


def test_unknown_format(plan_copy: Path) -> None:
    _rewrite(plan_copy, lambda d: d.update(format="other-plan"))
    with pytest.raises(BadPlanError, match="format must be 'edgecut-plan', got \"other-plan\""):
        load_plan(plan_copy)


def test_unknown_version(plan_copy: Path) -> None:
    _rewrite(plan_copy, lambda d: d.update(version=2))
    with pytest.raises(BadPlanError, match=r"version must be 1 .* got 2"):
        load_plan(plan_copy)


def test_missing_top_level_key(plan_copy: Path) -> None:
    _rewrite(plan_copy, lambda d: d.pop("chosen"))
    with pytest.raises(BadPlanError, match=r"plan\.json: chosen is missing; expected an integer"):
        load_plan(plan_copy)


def test_missing_cut_key_names_the_cut(plan_copy: Path) -> None:
    _rewrite(plan_copy, lambda d: d["cuts"][2].pop("crossing"))
    with pytest.raises(BadPlanError, match=r"cuts\[2\]\.crossing is missing"):
        load_plan(plan_copy)


def test_wrong_type_shows_the_value(plan_copy: Path) -> None:
    _rewrite(plan_copy, lambda d: d["cuts"][1].update(bytes="many"))
    with pytest.raises(BadPlanError,
                       match=r"cuts\[1\]\.bytes must be a non-negative integer, got \"many\""):
        load_plan(plan_copy)


def test_bad_dtype(plan_copy: Path) -> None:
    _rewrite(plan_copy, lambda d: d["model"]["inputs"][0].update(dtype="complex64"))
    with pytest.raises(BadPlanError, match=r"model\.inputs\[0\]\.dtype must be a numpy dtype"):
        load_plan(plan_copy)


def test_missing_model_key(plan_copy: Path) -> None:
    _rewrite(plan_copy, lambda d: d["model"].pop("name"))
    with pytest.raises(BadPlanError, match=r"model\.name is missing"):
        load_plan(plan_copy)


def test_all_problems_at_once(plan_copy: Path) -> None:
    def edit(d: dict[str, Any]) -> None:
        d["model"].pop("outputs")
        d["cuts"][0]["cloud_nodes"] = -1
        d.pop("input_shapes")
    _rewrite(plan_copy, edit)
    with pytest.raises(BadPlanError) as info:
        load_plan(plan_copy)
    lines = str(info.value).splitlines()
    assert len(lines) == 3
    assert all("plan.json: " in line for line in lines)


def test_chosen_not_among_cuts(plan_copy: Path) -> None:
    _rewrite(plan_copy, lambda d: d.update(chosen=1000))
    with pytest.raises(BadPlanError, match="chosen cut 1000 is not among the cut ids"):
        load_plan(plan_copy)


def test_repeated_cut_ids(plan_copy: Path) -> None:
    _rewrite(plan_copy, lambda d: d["cuts"][1].update(id=d["cuts"][0]["id"]))
    with pytest.raises(BadPlanError, match="cut ids repeat"):
        load_plan(plan_copy)


def test_head_file_missing(plan_copy: Path) -> None:
    (plan_copy / "cuts" / "3" / "head.onnx").unlink()
    with pytest.raises(BadPlanError,
                       match=r"cuts\[3\]\.head: file 'cuts/3/head\.onnx' not found"):
        load_plan(plan_copy)


def test_tail_file_missing(plan_copy: Path) -> None:
    (plan_copy / "cuts" / "3" / "tail.onnx").unlink()
    with pytest.raises(BadPlanError,
                       match=r"cuts\[3\]\.tail: file 'cuts/3/tail\.onnx' not found"):
        load_plan(plan_copy)


def test_full_model_missing(plan_copy: Path) -> None:
    (plan_copy / "full.onnx").unlink()
    with pytest.raises(BadPlanError, match=r"model\.file: file 'full\.onnx' not found"):
        load_plan(plan_copy)


@pytest.mark.parametrize("path", ["../outside.onnx", "/etc/passwd", ""])
def test_model_path_must_stay_in_the_folder(plan_copy: Path, path: str) -> None:
    _rewrite(plan_copy, lambda d: d["cuts"][3].update(head=path))
    with pytest.raises(BadPlanError, match=r"cuts\[3\]\.head must be a relative path inside"):
        load_plan(plan_copy)


def test_tail_without_endpoint_model(plan_copy: Path) -> None:
    _rewrite(plan_copy, lambda d: d["cuts"][3].update(endpoint_model=None))
    with pytest.raises(BadPlanError, match=r"cuts\[3\] is inconsistent: .*no endpoint_model"):
        load_plan(plan_copy)


def test_plan_errors_are_value_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        load_plan(tmp_path)
