"""Evaluation sets, top-1 accuracy and agreement, and `edgecut cascade calibrate`, on sklearn's
bundled digits with models trained by the suite (edgecut.digits)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgecut.accuracy import (
    EvalSet,
    agreement,
    load_eval_set,
    predict_scores,
    predict_top1,
    save_eval_set,
    top1,
    top1_accuracy,
)
from edgecut.calibrate import calibrate, cascade_curve, pick_threshold
from edgecut.cli import main
from edgecut.digits import EXIT_OUTPUT, INPUT, OUTPUT, trained
from edgecut.errors import BadInputError, UserInputError


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    data, models = trained()
    directory = tmp_path_factory.mktemp("accuracy")
    paths = {}
    for name, blob in models.items():
        paths[name] = directory / f"{name}.onnx"
        paths[name].write_bytes(blob)
    paths["cal"] = save_eval_set(directory / "cal.npz", {INPUT: data.x_cal}, labels=data.y_cal)
    paths["test"] = save_eval_set(directory / "test", {INPUT: data.x_test}, labels=data.y_test)
    return paths


def test_models_of_different_strength(files: dict[str, Path]) -> None:
    test = load_eval_set(files["test"])
    accuracy = {name: top1_accuracy(predict_top1(files[name], test), test.labels)
                for name in ("tiny", "small", "big")}
    assert 0.6 < accuracy["tiny"] < accuracy["small"] < accuracy["big"]
    assert accuracy["big"] > 0.95
    exit_accuracy = top1_accuracy(predict_top1(files["exits"], test, output=EXIT_OUTPUT),
                                  test.labels)
    assert accuracy["small"] - 0.05 < exit_accuracy < accuracy["big"]


def test_npz_and_folder_sets_load_alike(files: dict[str, Path], tmp_path: Path) -> None:
    cal = load_eval_set(files["cal"])
    folder = load_eval_set(files["test"])
    assert list(cal.inputs) == [INPUT] and cal.labels is not None and len(cal) > 400
    assert folder.truth is folder.labels and folder.source == str(files["test"])
    # Reference answers instead of labels: the metric becomes agreement with them.
    big = predict_scores(files["big"], cal)
    path = save_eval_set(tmp_path / "ref.npz", {INPUT: cal.inputs[INPUT]}, reference=big)
    ref = load_eval_set(path)
    np.testing.assert_array_equal(ref.truth, top1(big))
    assert agreement(predict_scores(files["big"], ref), big) == 1.0


def test_batched_and_one_by_one_runs_agree(files: dict[str, Path]) -> None:
    cal = load_eval_set(files["cal"]).subset(np.arange(20))
    batched = predict_scores(files["small"], cal, batch=True)
    single = predict_scores(files["small"], cal, batch=False)
    np.testing.assert_allclose(batched, single, rtol=1e-5, atol=1e-7)
    assert batched.shape == (20, 10)


def test_bad_evaluation_sets_say_what_is_wrong(tmp_path: Path, files: dict[str, Path]) -> None:
    with pytest.raises(BadInputError, match="different numbers of samples"):
        EvalSet(inputs={"x": np.zeros((3, 64), np.float32)}, labels=np.zeros(2, np.int64))
    with pytest.raises(BadInputError, match="'labels' must be integers"):
        EvalSet(inputs={"x": np.zeros((2, 64), np.float32)}, labels=np.zeros(2))
    with pytest.raises(BadInputError, match="no such evaluation set"):
        load_eval_set(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(BadInputError, match=r"not a readable \.npz"):
        load_eval_set(tmp_path / "junk.npz")
    wrong = save_eval_set(tmp_path / "wrong.npz", {"pixels": np.zeros((2, 64), np.float32)})
    with pytest.raises(BadInputError, match=r"no arrays for the model's inputs \['x'\]"):
        predict_scores(files["small"], load_eval_set(wrong))


def test_curve_and_threshold_by_hand() -> None:
    conf = np.array([0.95, 0.9, 0.5, 0.4])
    small = np.array([True, True, False, True])
    big = np.array([True, True, True, False])
    curve = cascade_curve(conf, small, big)
    by_threshold = {p.threshold: (p.accuracy, p.escalation) for p in curve}
    assert by_threshold[0.0] == (0.75, 0.0)
    assert by_threshold[0.5] == (0.5, 0.25)     # escalates 0.4, which the big model gets wrong
    assert by_threshold[0.9] == (0.75, 0.5)
    assert pick_threshold(curve, target_accuracy=0.75).threshold == 0.0
    assert pick_threshold(curve, max_escalation=0.3).accuracy == 0.75
    with pytest.raises(UserInputError, match=r"no threshold reaches top-1 0\.9"):
        pick_threshold(curve, target_accuracy=0.9)
    with pytest.raises(UserInputError, match="exactly one of"):
        pick_threshold(curve)


@pytest.mark.parametrize("measure", ["max_prob", "margin", "entropy"])
def test_calibration_meets_its_target_on_the_held_out_split(files: dict[str, Path],
                                                            measure: str) -> None:
    cal, test = load_eval_set(files["cal"]), load_eval_set(files["test"])
    result = calibrate(files["small"], files["big"], cal, measure=measure, target_accuracy=0.97)
    assert result.chosen.accuracy >= 0.97 and result.chosen.escalation < 0.5
    # Apply the threshold to data it never saw.
    held = calibrate(files["small"], files["big"], test, measure=measure, max_escalation=1.0)
    point = max((p for p in held.curve if p.threshold <= result.chosen.threshold),
                key=lambda p: p.threshold)
    assert point.accuracy >= 0.97 - 0.01
    assert abs(point.escalation - result.chosen.escalation) < 0.1


def test_cli_calibrate_writes_the_table_plot_and_cascade_json(files: dict[str, Path],
                                                              tmp_path: Path,
                                                              capsys: pytest.CaptureFixture
                                                              ) -> None:
    from edgecut.partitioner import write_plan

    plan = tmp_path / "plan"
    write_plan(files["big"], plan, cut_ids=[3], input_shapes={INPUT: (1, 64)}, chosen=3)
    code = main(["cascade", "calibrate", str(files["small"]), str(files["big"]), "--data",
                 str(files["cal"]), "--target-accuracy", "0.97", "--plan", str(plan),
                 "--plot", str(tmp_path / "curve.png")])
    out = capsys.readouterr().out
    assert code == 0 and "chosen" in out and "escalating" in out
    assert (tmp_path / "curve.png").stat().st_size > 1000
    doc = json.loads((plan / "cascade.json").read_text())
    assert doc["small_model"] == "small.onnx" and (plan / "small.onnx").is_file()
    assert doc["calibration"]["chosen"]["accuracy"] >= 0.97 and doc["measure"] == "max_prob"
    assert main(["cascade", "calibrate", str(files["small"]), str(files["big"]), "--data",
                 str(files["cal"]), "--max-escalation", "0.1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["chosen"]["escalation"] <= 0.1 and result["metric"] == "top-1 accuracy"
    assert main(["cascade", "calibrate", str(files["small"]), str(files["big"]), "--data",
                 str(files["cal"]), "--target-accuracy", "0.9999"]) == 2
    assert "no threshold reaches" in capsys.readouterr().err
    # The plan now runs as a cascade from the CLI; with its cloud down, the small model answers.
    data = load_eval_set(files["cal"])
    np.save(tmp_path / "x.npy", data.inputs[INPUT][:1])
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"
    assert main(["run", str(plan), "--mode", "cascade", "--endpoint", dead, "--input",
                 f"x={tmp_path / 'x.npy'}", "--output", str(tmp_path / "out.npz"),
                 "--timeout", "5"]) == 0
    assert "answered by small" in capsys.readouterr().out
    with np.load(tmp_path / "out.npz") as out:
        assert out[OUTPUT].shape == (1, 10)
