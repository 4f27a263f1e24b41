"""Predictor: the InferenceSession surface, input checks, and the three modes for real."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from edgecut.edge import Config, Predictor, load_plan
from edgecut.errors import (
    BadInputError,
    BadModelError,
    CloudUnavailableError,
    EdgecutError,
    UnknownCutError,
)


def _reference(model_path: Path, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feed),
                    strict=True))


def _local(plan_dir: Path) -> Predictor:
    return Predictor(Config(plan=plan_dir, mode="local", intra_op_threads=1))


def test_local_mode_matches_onnxruntime(plan_dir: Path, model_path: Path, feed: dict) -> None:
    reference = _reference(model_path, feed)
    with _local(plan_dir) as predictor:
        outputs = predictor.run(None, feed)
    assert len(outputs) == len(reference)
    for got, want in zip(outputs, reference.values(), strict=True):
        np.testing.assert_array_equal(got, want)


def test_inputs_and_outputs_describe_like_onnxruntime(plan_dir: Path, model_path: Path) -> None:
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    with _local(plan_dir) as predictor:
        for ours, theirs in ((predictor.get_inputs(), session.get_inputs()),
                             (predictor.get_outputs(), session.get_outputs())):
            assert [(a.name, a.type, a.shape) for a in ours] == \
                   [(b.name, b.type, b.shape) for b in theirs]


def test_outputs_come_in_the_requested_order(plan_dir: Path, feed: dict) -> None:
    with _local(plan_dir) as predictor:
        p1, _, p3 = predictor.run(None, feed)
        got = predictor.run(["p3", "p1"], feed)
    np.testing.assert_array_equal(got[0], p3)
    np.testing.assert_array_equal(got[1], p1)


@pytest.mark.parametrize(("change", "message"), [
    (lambda f: {**f, "z": f["x"]}, r"unknown input names \['z'\]; the model's inputs are \['x'\]"),
    (lambda f: {}, r"missing inputs \['x'\]"),
    (lambda f: {"x": f["x"].astype(np.float64)}, r"input 'x' must be float32, got float64"),
    (lambda f: {"x": f["x"][:, :2]}, r"input 'x' must have shape \[1, 3, 32, 32\]"),
    (lambda f: {"x": f["x"].tolist()}, r"input 'x' must be a numpy array, got list"),
])
def test_bad_inputs_are_refused_before_any_work(plan_dir: Path, feed: dict, change, message
                                                ) -> None:
    with _local(plan_dir) as predictor:
        with pytest.raises(BadInputError, match=message):
            predictor.run(None, change(feed))
        assert predictor.statistics().runs == 0


def test_unknown_output_name(plan_dir: Path, feed: dict) -> None:
    with _local(plan_dir) as predictor, pytest.raises(
            BadInputError, match=r"unknown output names \['q'\]; the model's outputs are"):
        predictor.run(["q"], feed)


def test_output_names_must_be_a_list(plan_dir: Path, feed: dict) -> None:
    with _local(plan_dir) as predictor, pytest.raises(BadInputError, match=r"write \['p1'\]"):
        predictor.run("p1", feed)  # type: ignore[arg-type]


def test_unknown_cut(plan_dir: Path) -> None:
    with pytest.raises(UnknownCutError, match="no cut with id 999"):
        Predictor(Config(plan=plan_dir, mode="split", endpoint="localhost:1", cut=999))


def test_unloadable_head_is_a_bad_model(plan_copy: Path) -> None:
    (plan_copy / "cuts" / "3" / "head.onnx").write_bytes(b"not onnx")
    with pytest.raises(BadModelError, match="onnxruntime cannot load it"):
        Predictor(Config(plan=plan_copy, mode="split", endpoint="localhost:1", cut=3))


def test_local_statistics(plan_dir: Path, feed: dict) -> None:
    with _local(plan_dir) as predictor:
        assert predictor.last_run() is None
        predictor.run(None, feed)
        predictor.run(None, feed)
        last = predictor.last_run()
        stats = predictor.statistics()
    assert last is not None and last.mode == "local" and last.total_ms > 0
    assert last.cloud_calls == 0 and last.wire_bytes_up == 0
    assert stats.runs == 2 and stats.failures == 0 and stats.last == last


def test_closed_predictor_refuses_to_run(plan_dir: Path, feed: dict) -> None:
    predictor = _local(plan_dir)
    predictor.close()
    with pytest.raises(EdgecutError, match="closed"):
        predictor.run(None, feed)


def _split(plan_dir: Path, endpoint: str, fleet: Path, cut: int | None,
           codec: str = "raw") -> Predictor:
    return Predictor(Config(plan=plan_dir, endpoint=endpoint, tls_dir=fleet, cut=cut,
                            codec=codec, intra_op_threads=1, timeout_s=10.0))


def test_split_every_cut_matches_full_model(plan_dir: Path, model_path: Path, feed: dict,
                                            endpoint: str, fleet: Path) -> None:
    reference = _reference(model_path, feed)
    for cut_id in load_plan(plan_dir).cut_ids:
        with _split(plan_dir, endpoint, fleet, cut_id) as predictor:
            outputs = predictor.run(None, feed)
        for got, want in zip(outputs, reference.values(), strict=True):
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-5, err_msg=f"cut {cut_id}")


def test_split_statistics(plan_dir: Path, feed: dict, endpoint: str, fleet: Path) -> None:
    plan = load_plan(plan_dir)
    cut = plan.cut(plan.chosen)
    with _split(plan_dir, endpoint, fleet, None, codec="shuffle_zstd") as predictor:
        predictor.run(None, feed)
        run = predictor.last_run()
    assert run is not None and run.cut == plan.chosen and run.cloud_calls == 1
    assert run.raw_bytes_up == cut.bytes
    assert run.wire_bytes_up > 0 and run.wire_bytes_down > 0
    assert set(run.codecs) == set(cut.crossing)
    assert set(run.codecs.values()) == {"shuffle_zstd"}
    assert run.head_ms > 0 and run.rpc_ms > 0
    assert run.total_ms >= run.head_ms + run.encode_ms + run.rpc_ms + run.decode_ms


def test_device_outputs_need_no_cloud_call(plan_dir: Path, feed: dict, endpoint: str,
                                           fleet: Path) -> None:
    plan = load_plan(plan_dir)
    cut = next(c for c in plan.cuts if c.device_outputs and c.cloud_outputs)
    with _split(plan_dir, endpoint, fleet, cut.id) as predictor:
        predictor.run([cut.device_outputs[0]], feed)
        assert predictor.last_run().cloud_calls == 0  # type: ignore[union-attr]
        predictor.run(None, feed)
        assert predictor.last_run().cloud_calls == 1  # type: ignore[union-attr]


def test_offload_matches_full_model(plan_dir: Path, model_path: Path, feed: dict,
                                    endpoint: str, fleet: Path) -> None:
    reference = _reference(model_path, feed)
    config = Config(plan=plan_dir, mode="offload", endpoint=endpoint, tls_dir=fleet,
                    codec="zstd")
    with Predictor(config) as predictor:
        outputs = predictor.run(["p2"], feed)
        run = predictor.last_run()
    np.testing.assert_allclose(outputs[0], reference["p2"], rtol=0, atol=1e-5)
    assert run is not None and run.mode == "offload" and run.cut is None
    assert run.raw_bytes_up == feed["x"].nbytes


def test_split_fails_typed_when_the_cloud_is_down(plan_dir: Path, feed: dict, fleet: Path,
                                                  free_port) -> None:
    config = Config(plan=plan_dir, endpoint=f"localhost:{free_port()}", tls_dir=fleet,
                    cut=3, timeout_s=2.0)
    with Predictor(config) as predictor:
        with pytest.raises(CloudUnavailableError):
            predictor.run(None, feed)
        assert predictor.statistics().failures == 1
