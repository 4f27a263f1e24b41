"""Load, unload, polling, failed reloads and draining, on a repository the test writes."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgecut.cloud.repository import ModelRepository
from edgecut.errors import BadModelError, ModelNotFoundError, UserInputError

WAIT_S = 20.0


def scaled(factor: float, *, size: int = 4, repeat: int = 1) -> onnx.ModelProto:
    """y = x @ (factor * I), `repeat` times: each version answers with its own factor."""
    w = numpy_helper.from_array((np.eye(size) * factor ** (1 / repeat)).astype(np.float32), "w")
    nodes, cur = [], "x"
    for i in range(repeat):
        out = "y" if i == repeat - 1 else f"h{i}"
        nodes.append(helper.make_node("MatMul", [cur, "w"], [out]))
        cur = out
    graph = helper.make_graph(
        nodes, "scaled", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", size])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def put(repo: Path, name: str, version: int, model: onnx.ModelProto | bytes) -> None:
    folder = repo / name / str(version)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "model.onnx"
    tmp = folder / "model.onnx.tmp"
    tmp.write_bytes(model if isinstance(model, bytes) else model.SerializeToString())
    tmp.replace(target)  # atomic, as edgecut deploy writes


def answer(repo: ModelRepository, name: str, version: str = "") -> float:
    model = repo.route(name, version)
    (y,) = model.session.run(["y"], {"x": np.ones((1, 4), np.float32)})
    return float(y[0, 0])


@pytest.fixture
def repo_dir(tmp_path: Path) -> Path:
    put(tmp_path, "m", 1, scaled(1.0))
    put(tmp_path, "m", 2, scaled(2.0))
    return tmp_path


def test_default_policy_serves_latest_only(repo_dir: Path) -> None:
    repo = ModelRepository(repo_dir, intra_op_threads=1)
    assert repo.ready_versions("m") == (2,) and answer(repo, "m") == 2.0
    with pytest.raises(ModelNotFoundError, match="has no version 1; available versions: 2"):
        repo.get("m", "1")


@pytest.mark.parametrize(("policy", "served"), [
    ("version_policy: { latest: { num_versions: 2 } }", (2, 3)),
    ("version_policy: { all {} }", (1, 2, 3)),
    ("version_policy: { specific: { versions: [1, 3, 9] } }", (1, 3)),
])
def test_version_policies(repo_dir: Path, policy: str, served: tuple[int, ...]) -> None:
    put(repo_dir, "m", 3, scaled(3.0))
    (repo_dir / "m" / "config.pbtxt").write_text(policy)
    repo = ModelRepository(repo_dir, intra_op_threads=1)
    assert repo.ready_versions("m") == served
    assert answer(repo, "m") == 3.0
    if "specific" in policy:
        rows = {r.version: r for r in repo.models()}
        assert rows[9].state == "UNAVAILABLE" and "not on disk" in rows[9].reason


def test_unload_and_load_at_run_time(repo_dir: Path) -> None:
    repo = ModelRepository(repo_dir, intra_op_threads=1)
    repo.unload("m")
    with pytest.raises(ModelNotFoundError, match="'m' is unloaded"):
        repo.route("m")
    assert [(r.version, r.state) for r in repo.models()] == [(None, "UNAVAILABLE")]
    put(repo_dir, "m", 3, scaled(3.0))
    repo.poll()  # the poller leaves a model unloaded by request alone
    with pytest.raises(ModelNotFoundError):
        repo.route("m")
    repo.load("m")
    assert answer(repo, "m") == 3.0
    with pytest.raises(ModelNotFoundError, match="no model folder"):
        repo.load("nope")
    with pytest.raises(ModelNotFoundError, match="unknown model 'nope'"):
        repo.unload("nope")


def test_control_mode_none_refuses_changes(repo_dir: Path) -> None:
    repo = ModelRepository(repo_dir, control_mode="none")
    for call in (lambda: repo.load("m"), lambda: repo.unload("m"),
                 lambda: repo.start_canary("m", candidate=1, percent=5)):
        with pytest.raises(UserInputError, match="model control is off"):
            call()


def test_poll_picks_up_new_changed_and_removed(repo_dir: Path) -> None:
    repo = ModelRepository(repo_dir, intra_op_threads=1)
    put(repo_dir, "m", 3, scaled(3.0))
    put(repo_dir, "other", 1, scaled(5.0))
    repo.poll()
    assert answer(repo, "m") == 3.0 and answer(repo, "other") == 5.0
    put(repo_dir, "m", 3, scaled(4.0))  # same version, new file
    repo.poll()
    assert answer(repo, "m") == 4.0
    (repo_dir / "m" / "3" / "model.onnx").unlink()
    (repo_dir / "m" / "3").rmdir()
    repo.poll()
    assert answer(repo, "m") == 2.0


def test_broken_new_version_keeps_the_old_one_serving(
    repo_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    repo = ModelRepository(repo_dir, intra_op_threads=1)
    with caplog.at_level(logging.ERROR, logger="edgecut.cloud.repository"):
        put(repo_dir, "m", 3, b"not onnx")
        repo.poll()
        assert answer(repo, "m") == 2.0
        rows = {r.version: r for r in repo.models()}
        assert rows[3].state == "UNAVAILABLE" and "cannot be loaded" in rows[3].reason
        caplog.clear()
        repo.poll()  # the same broken file is not retried
        assert caplog.text == ""
        put(repo_dir, "m", 2, b"also not onnx")  # a broken reload of the serving version
        repo.poll()
        assert answer(repo, "m") == 2.0
        assert "previous copy keeps serving" in {r.version: r for r in repo.models()}[2].reason
        with pytest.raises(BadModelError, match="version 3 failed to load"):
            repo.load("m")
        assert answer(repo, "m") == 2.0
    put(repo_dir, "m", 3, scaled(3.0))
    repo.poll()
    assert answer(repo, "m") == 3.0


def test_broken_config_keeps_the_old_settings(repo_dir: Path) -> None:
    repo = ModelRepository(repo_dir, intra_op_threads=1)
    (repo_dir / "m" / "config.pbtxt").write_text("max_batch_size: {")
    repo.poll()
    assert answer(repo, "m") == 2.0
    assert "config not reloaded" in repo.models()[0].reason
    with pytest.raises(BadModelError, match=r"config.pbtxt:1:\d+"):
        repo.load("m")


def test_config_is_checked_against_the_model_as_read(repo_dir: Path) -> None:
    # The config on disk is the one each load checks: a wrong one refuses the first load, and
    # a fixed one loads on the first try (not one load later).
    config = repo_dir / "m" / "config.pbtxt"
    wrong = 'input [ { name: "x" data_type: TYPE_FP32 dims: [ -1, 5 ] } ]'
    config.write_text(wrong)
    repo = ModelRepository(repo_dir, intra_op_threads=1)
    with pytest.raises(ModelNotFoundError):
        repo.route("m", "")
    assert "[-1,5]" in repo.models()[0].reason.replace(" ", "")
    config.write_text(wrong.replace("5", "4"))
    repo.load("m")
    assert answer(repo, "m") == 2.0


def test_config_thread_count_is_the_sessions(repo_dir: Path) -> None:
    # Triton's onnxruntime backend reads intra_op_thread_count from parameters; so does
    # edgecut, over the server's own default.
    (repo_dir / "m" / "config.pbtxt").write_text(
        'parameters { key: "intra_op_thread_count" value: { string_value: "1" } }')
    repo = ModelRepository(repo_dir, intra_op_threads=0)
    options = repo.route("m", "").session.inner.get_session_options()
    assert options.intra_op_num_threads == 1


def test_version_folders_are_read_as_numbers(repo_dir: Path) -> None:
    # As Triton reads them: `003` is version 3; a folder that is no number is no version.
    (repo_dir / "m" / "2").rename(repo_dir / "m" / "003")
    (repo_dir / "m" / "v4").mkdir()
    repo = ModelRepository(repo_dir, intra_op_threads=1)
    assert [(r.version, r.state) for r in repo.models()] == [(3, "READY")]
    assert answer(repo, "m", "3") == 2.0


def test_background_poller(repo_dir: Path) -> None:
    repo = ModelRepository(repo_dir, intra_op_threads=1, control_mode="poll", poll_interval_s=0.05)
    try:
        put(repo_dir, "m", 3, scaled(3.0))
        deadline = time.monotonic() + WAIT_S
        while repo.ready_versions("m") != (3,) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert answer(repo, "m") == 3.0
    finally:
        repo.close()


def test_in_flight_requests_finish_during_unload(tmp_path: Path) -> None:
    put(tmp_path, "slow", 1, scaled(1.0, size=512, repeat=60))
    repo = ModelRepository(tmp_path, intra_op_threads=1)
    x = np.ones((512, 512), np.float32)
    started = time.perf_counter()
    repo.route("slow").session.run(["y"], {"x": x})
    one_run_s = time.perf_counter() - started
    results: list[object] = []

    def call() -> None:
        try:
            model = repo.route("slow")
            results.append(model.session.run(["y"], {"x": x})[0])
        except Exception as exc:  # recorded, asserted below
            results.append(exc)

    threads = [threading.Thread(target=call) for _ in range(3)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + WAIT_S
    model = repo.get("slow")
    while model.session.in_flight_count() == 0 and time.monotonic() < deadline:
        time.sleep(0.001)
    repo.unload("slow")
    states = {r.state for r in repo.models()}
    for t in threads:
        t.join(WAIT_S + 10 * one_run_s)
    assert len(results) == 3 and all(isinstance(r, np.ndarray) for r in results), results
    assert "UNLOADING" in states or one_run_s < 0.01  # too fast a machine to catch it mid-run
    assert {r.state for r in repo.models()} == {"UNAVAILABLE"}
    with pytest.raises(ModelNotFoundError):
        repo.route("slow")
