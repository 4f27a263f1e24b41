"""Early exits in the plan: the exit rate measured on held-out digits, each cut costed with its
tail skipped that often, and the Predictor reading the threshold from cascade.json over the
real mTLS endpoint."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edgecut.accuracy import save_eval_set, top1_accuracy
from edgecut.cli import main
from edgecut.cloud.server import create_server
from edgecut.deploy import deploy_plan
from edgecut.digits import EXIT_OUTPUT, INPUT, OUTPUT, trained
from edgecut.early_exit import expected_exit_cost
from edgecut.edge import Config, Predictor
from edgecut.protocol.pki import init_ca, issue_device_certificate

DEVICE = "exit-test"


def test_expected_cost_by_hand() -> None:
    predicted = {"device_ms": 2.0, "latency_ms": 62.0, "energy_j": 0.2}
    assert expected_exit_cost(predicted, exit_rate=0.0, compute_w=5.0) == {
        "latency_ms": 62.0, "energy_j": 0.2}
    # 90 % stop at the head: 0.9 * 2 + 0.1 * 62 ms; 0.9 * 5 W * 2 ms + 0.1 * 0.2 J.
    assert expected_exit_cost(predicted, exit_rate=0.9, compute_w=5.0) == {
        "latency_ms": 8.0, "energy_j": 0.029}
    with pytest.raises(ValueError, match="exit rate must be in"):
        expected_exit_cost(predicted, exit_rate=1.5, compute_w=5.0)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    data, models = trained()
    directory = tmp_path_factory.mktemp("exit")
    (directory / "exits.onnx").write_bytes(models["exits"])
    return {"model": directory / "exits.onnx", "dir": directory,
            "cal": save_eval_set(directory / "cal.npz", {INPUT: data.x_cal}, labels=data.y_cal)}


def test_the_planner_costs_each_cut_with_the_exit(files: dict[str, Path]) -> None:
    out = files["dir"] / "chosen"
    assert main(["plan", str(files["model"]), "--device", "raspberry-pi-4", "--network", "lte",
                 "--input-shape", "x=1x64", "--no-measure", "--out", str(out), "--data",
                 str(files["cal"]), "--exit", EXIT_OUTPUT]) == 0
    plan = json.loads((out / "plan.json").read_text())
    early = plan["early_exit"]
    assert early["output"] == EXIT_OUTPUT and early["final_output"] == OUTPUT
    assert 0.5 < early["exit_rate"] < 1 and early["accuracy"] >= early["full_accuracy"] - 0.01
    for cut in plan["cuts"]:
        entry = cut["early_exit"]
        figures = cut["predicted"]["model"]
        assert entry["exit_rate"] == (early["exit_rate"] if entry["exit_on_device"] else 0.0)
        assert entry["expected"]["latency_ms"] <= figures["latency_ms"] + 1e-9
        if entry["exit_on_device"] and cut["tail"]:
            assert entry["expected"]["latency_ms"] < figures["latency_ms"]
    best = min(plan["cuts"], key=lambda c: c["early_exit"]["expected"]["latency_ms"])
    assert early["cut"] == best["id"]
    assert json.loads((out / "cascade.json").read_text())["exit"] == EXIT_OUTPUT


@pytest.fixture(scope="module")
def served(files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[tuple[Path, str, Path]]:
    out = files["dir"] / "given"
    assert main(["plan", str(files["model"]), "--cut", "6", "--input-shape", "x=1x64", "--out",
                 str(out), "--data", str(files["cal"]), "--exit", EXIT_OUTPUT]) == 0
    fleet = tmp_path_factory.mktemp("exit-fleet")
    init_ca(fleet)
    issue_device_certificate(fleet, DEVICE)
    repository = tmp_path_factory.mktemp("exit-repo")
    deploy_plan(out, repository)
    server = create_server(repository, tls_dir=fleet, mutual_tls=True, workers=2,
                           intra_op_threads=1)
    server.start()
    yield out, f"localhost:{server.port}", fleet
    server.stop(grace_s=1.0)


def test_the_device_exits_at_the_measured_rate_on_held_out_data(served) -> None:
    plan, endpoint, fleet = served
    early = json.loads((plan / "plan.json").read_text())["early_exit"]
    data, _ = trained()
    n = 200
    config = Config(plan=plan, mode="cascade", endpoint=endpoint, tls_dir=fleet, device=DEVICE,
                    intra_op_threads=1, timeout_s=5.0)
    with Predictor(config) as predictor:  # the exit and its threshold from cascade.json
        answers = [int(np.argmax(predictor.run([OUTPUT], {INPUT: data.x_test[i:i + 1]})[0]))
                   for i in range(n)]
        stats = predictor.statistics()
    exited = stats.answered_by.get("exit", 0) / n
    assert abs(exited - early["exit_rate"]) < 0.1
    assert top1_accuracy(np.array(answers), data.y_test[:n]) >= early["full_accuracy"] - 0.03
