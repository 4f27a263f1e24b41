"""Quantised device models and lossy codecs, each measured on held-out digits against the
budget; then run by the device over the real mTLS endpoint on loopback."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edgecut.accuracy import EvalSet, predict_top1, save_eval_set, top1_accuracy
from edgecut.cli import main
from edgecut.cloud.server import create_server
from edgecut.deploy import deploy_plan
from edgecut.digits import INPUT, trained
from edgecut.edge import Config, Predictor
from edgecut.errors import BadPlanError, BadProfileError, UserInputError
from edgecut.partitioner.quantize import quantize_model, quantized_path
from edgecut.protocol.pki import init_ca, issue_device_certificate

BUDGET = 0.01
DEVICE = "quantize-test"


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    data, models = trained()
    directory = tmp_path_factory.mktemp("quantize")
    (directory / "big.onnx").write_bytes(models["big"])
    return {"big": directory / "big.onnx", "dir": directory,
            "cal": save_eval_set(directory / "cal.npz", {INPUT: data.x_cal}, labels=data.y_cal)}


def _held_out() -> EvalSet:
    data, _ = trained()
    return EvalSet(inputs={INPUT: data.x_test}, labels=data.y_test)


@pytest.mark.parametrize(("mode", "smaller"), [("int8", 0.6), ("fp16", 0.45)])
def test_quantised_models_are_smaller_and_within_budget_on_held_out_data(
        files: dict[str, Path], mode: str, smaller: float) -> None:
    data, _ = trained()
    target = quantized_path(files["big"], mode)
    assert target.name == f"big.{mode}.onnx"
    calibration = [{INPUT: data.x_cal[i:i + 1]} for i in range(100)]
    quantize_model(files["big"], target, mode, calibration=calibration)
    assert target.stat().st_size < (1 - smaller) * files["big"].stat().st_size
    test = _held_out()
    fp32 = top1_accuracy(predict_top1(files["big"], test), test.labels)
    quantised = top1_accuracy(predict_top1(target, test), test.labels)
    assert fp32 - quantised <= BUDGET


def test_int8_needs_calibration_data(files: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match="needs calibration data"):
        quantize_model(files["big"], tmp_path / "x.onnx", "int8")
    with pytest.raises(UserInputError, match="must be one of int8, fp16"):
        quantize_model(files["big"], tmp_path / "x.onnx", "int4")


@pytest.fixture(scope="module")
def plan(files: dict[str, Path]) -> Path:
    out = files["dir"] / "plan"
    code = main(["plan", str(files["big"]), "--cut", "3", "--cut", "6", "--input-shape",
                 "x=1x64", "--out", str(out), "--quantize", "int8", "--data", str(files["cal"]),
                 "--accuracy-budget", str(BUDGET)])
    assert code == 0
    return out


def test_plan_json_records_each_choice_and_its_measured_drop(plan: Path) -> None:
    doc = json.loads((plan / "plan.json").read_text())
    accuracy = doc["accuracy"]
    assert accuracy["budget"] == BUDGET and accuracy["samples"] > 400
    full = accuracy["quantized"]["int8"]
    assert full["file"] == "full.int8.onnx" and (plan / full["file"]).is_file()
    assert 0.25 <= full["size_ratio"] <= 0.5  # 50-75 % smaller
    for cut in doc["cuts"]:
        head = cut["quantized"]["int8"]
        assert (plan / head["file"]).is_file() and head["within_budget"]
        assert set(cut["codecs"]) == {"int8", "fp16"}
        for figures in cut["codecs"].values():
            assert figures["within_budget"] == (figures["accuracy_drop"] <= BUDGET)
        assert cut["codecs"]["int8"]["wire_ratio"] > cut["codecs"]["fp16"]["wire_ratio"] == 2.0
        assert cut["lossy_codec"] == "int8"


def test_plan_flags_without_data_fail_in_one_line(files: dict[str, Path], tmp_path: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    assert main(["plan", str(files["big"]), "--cut", "3", "--input-shape", "x=1x64", "--out",
                 str(tmp_path / "p"), "--quantize", "fp16"]) == 2
    assert "need --data EVAL" in capsys.readouterr().err


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory: pytest.TempPathFactory, plan: Path
             ) -> Iterator[tuple[str, Path]]:
    fleet = tmp_path_factory.mktemp("quantize-fleet")
    init_ca(fleet)
    issue_device_certificate(fleet, DEVICE)
    repository = tmp_path_factory.mktemp("quantize-repo")
    deploy_plan(plan, repository)
    server = create_server(repository, tls_dir=fleet, mutual_tls=True, workers=2,
                           intra_op_threads=1)
    server.start()
    yield f"localhost:{server.port}", fleet
    server.stop(grace_s=1.0)


def _accuracy(predictor: Predictor, test: EvalSet) -> float:
    answers = [int(np.argmax(predictor.run(None, feed)[0])) for feed in test.samples()]
    return top1_accuracy(np.array(answers), test.labels)


def test_a_quantised_head_and_the_int8_codec_stay_within_budget_over_the_endpoint(
        plan: Path, endpoint: tuple[str, Path]) -> None:
    address, fleet = endpoint
    test = _held_out().subset(np.arange(200))
    common = {"plan": plan, "mode": "split", "endpoint": address, "tls_dir": fleet,
              "device": DEVICE, "cut": 3, "intra_op_threads": 1, "timeout_s": 5.0}
    with Predictor(Config(**common, codec="raw")) as predictor:
        exact = _accuracy(predictor, test)
    # codec "plan": the lossy codec plan.json allows at the cut (int8 here).
    with Predictor(Config(**common, codec="plan", quantized="int8")) as predictor:
        lossy = _accuracy(predictor, test)
        run = predictor.last_run()
    assert run.codecs == {"h0": "int8"} and run.wire_bytes_up * 3 < run.raw_bytes_up
    assert exact - lossy <= BUDGET


def test_the_device_loads_quantised_models_only_when_they_exist(plan: Path) -> None:
    with Predictor(Config(plan=plan, mode="local", quantized="int8", intra_op_threads=1)) as p:
        test = _held_out().subset(np.arange(50))
        assert _accuracy(p, test) > 0.9
    with pytest.raises(BadPlanError, match=r"no fp16 version of full\.onnx"):
        Predictor(Config(plan=plan, mode="local", quantized="fp16"))
    with pytest.raises(BadProfileError, match="quantized must be 'int8', 'fp16' or None"):
        Config(plan=plan, mode="local", quantized="int4")


def test_a_lossy_codec_the_plan_does_not_know_is_a_bad_plan(plan: Path, tmp_path: Path,
                                                           endpoint: tuple[str, Path]) -> None:
    import shutil

    copy = Path(shutil.copytree(plan, tmp_path / "plan"))
    doc = json.loads((copy / "plan.json").read_text())
    doc["cuts"][0]["lossy_codec"] = "int4"
    (copy / "plan.json").write_text(json.dumps(doc))
    address, fleet = endpoint
    with pytest.raises(BadPlanError, match="lossy_codec must be one of fp16, int8 or null"):
        Predictor(Config(plan=copy, mode="split", endpoint=address, tls_dir=fleet,
                         device=DEVICE, codec="plan"))


# -- a real trained model from a package, where only agreement can be measured ------------

CLASSIFIER = "models/ch_ppocr_mobile_v2.0_cls_infer.onnx"  # PaddleOCR's 0/180 degree classifier


def _text_crops(n: int) -> np.ndarray:
    """48x192 crops of four held-out digits side by side (dark on light, PaddleOCR's
    normalisation), every other one turned by 180 degrees: what the classifier tells apart."""
    data, _ = trained()
    rng = np.random.default_rng(0)
    crops = []
    for k in range(n):
        tiles = [np.kron(data.x_test[i].reshape(8, 8), np.ones((6, 6)))
                 for i in rng.integers(0, len(data.x_test), 4)]
        image = np.repeat((1.0 - np.concatenate(tiles, axis=1))[None], 3, axis=0)
        if k % 2:
            image = image[:, ::-1, ::-1]
        crops.append((image - 0.5) / 0.5)
    return np.stack(crops).astype(np.float32)


# A small model: its graph and unquantised parameters weigh more than the digits MLP's do.
@pytest.mark.parametrize(("mode", "size_ratio"), [("fp16", 0.75), ("int8", 0.6)])
def test_a_packaged_classifier_quantised_agrees_with_itself(mode: str, size_ratio: float,
                                                            tmp_path: Path) -> None:
    from edgecut.accuracy import agreement, predict_scores
    from edgecut.zoo import find_packaged_model

    model = find_packaged_model(relative_path=CLASSIFIER)
    if model is None:
        pytest.skip("rapidocr-onnxruntime (the test extra) is not installed")
    crops = _text_crops(32)
    reference = predict_scores(model, EvalSet(inputs={"x": crops}), batch=True)
    # No labels: the metric is agreement with the fp32 model's top-1 (EvalSet.truth).
    data = EvalSet(inputs={"x": crops}, reference=reference)
    target = quantize_model(model, tmp_path / f"cls.{mode}.onnx", mode,
                            calibration=[{"x": crops[i:i + 1]} for i in range(8)])
    assert target.stat().st_size < size_ratio * model.stat().st_size
    scores = predict_scores(target, data, batch=True)
    assert agreement(scores, reference) >= 0.9
    assert top1_accuracy(predict_top1(target, data), data.truth) == agreement(scores, reference)
