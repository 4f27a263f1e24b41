"""Settled timing: a session is timed only after it has run for SETTLE_MS untimed."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper

from edgecut.profiles.timing import SETTLE_MS, settled_ms


def test_runs_untimed_for_the_settle_window_then_times_the_median() -> None:
    now = [0.0]
    calls = []

    def clock() -> float:
        return now[0]

    def run() -> None:  # each run takes 0.1 ms of this clock, the third 1 ms
        calls.append(len(calls))
        now[0] += (1.0 if len(calls) == 3 + int(SETTLE_MS / 0.1) else 0.1) / 1e3

    ms = settled_ms(run, clock=clock, timed=3)
    untimed = len(calls) - 3
    assert untimed >= 1 and untimed * 0.1 >= SETTLE_MS - 1e-9
    assert abs(ms - 0.1) < 1e-9  # the median of 0.1, 1.0, 0.1 (or of three 0.1)


def test_a_real_session_is_timed_after_at_least_one_untimed_run() -> None:
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feed = {"x": np.ones((1, 16), np.float32)}
    runs = []

    def run() -> None:
        runs.append(session.run(None, feed))

    ms = settled_ms(run, timed=2)
    assert ms > 0 and len(runs) >= 3
    np.testing.assert_array_equal(runs[-1][0], feed["x"])
