"""The reference network and the fit of launch cost and bandwidth (pure: no timing here)."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import pytest

from edgecut.partitioner import run_model
from edgecut.profiles import load_device, profile_device
from edgecut.profiles.calibration import fit_to_reference, predict_total_ms, reference_network
from edgecut.profiles.opclass import SMALL_KERNEL_BYTES, classify_node, estimate_node_ms


def test_reference_network_is_valid_mobile_style_and_runs() -> None:
    model = reference_network(32)
    onnx.checker.check_model(model, full_check=True)
    ops = {n.op_type for n in model.graph.node}
    assert {"Conv", "BatchNormalization", "Clip", "GlobalAveragePool", "HardSigmoid", "Resize",
            "Concat", "Add", "Mul", "Div"} <= ops
    assert any(a.name == "group" and a.i > 1 for n in model.graph.node for a in n.attribute)
    out = run_model(model, {"x": np.zeros((1, 3, 32, 32), np.float32)})
    assert next(iter(out.values())).shape == (1, 1, 8, 8)
    with pytest.raises(ValueError, match="multiple of 16"):
        reference_network(40)


@pytest.mark.parametrize(("overhead_ms", "fraction"), [(0.004, 0.5), (0.0, 1.0), (0.02, 0.2)])
def test_fit_recovers_the_launch_cost_and_bandwidth_it_was_made_with(
        overhead_ms: float, fraction: float) -> None:
    stream = dataclasses.replace(load_device("laptop"), run_overhead_ms=0.01,
                                 small_node_overhead_ms=0.0005, node_overhead_ms=0.0)
    truth = dataclasses.replace(stream, memory_gbps=stream.memory_gbps * fraction,
                                node_overhead_ms=overhead_ms)
    models = [reference_network(64), reference_network(256)]
    measured = [predict_total_ms(m, truth) for m in models]
    fitted_overhead, fitted_gbps = fit_to_reference(stream, models, measured)
    fitted = dataclasses.replace(stream, memory_gbps=fitted_gbps, node_overhead_ms=fitted_overhead)
    for m, ms in zip(models, measured, strict=True):
        assert predict_total_ms(m, fitted) == pytest.approx(ms, rel=0.05)


def test_launch_costs_split_by_kernel_size() -> None:
    from onnx import helper

    relu = helper.make_node("Relu", ["x"], ["y"])
    small = classify_node(relu, {"x": (1, 16), "y": (1, 16)})
    large = classify_node(relu, {"x": (1, 64, 32, 32), "y": (1, 64, 32, 32)})
    assert (small.kernels, small.small_kernels) == (0, 1)
    assert (large.kernels, large.small_kernels) == (1, 0)
    assert large.bytes_moved >= SMALL_KERNEL_BYTES > small.bytes_moved
    device = dataclasses.replace(load_device("laptop"), node_overhead_ms=0.01,
                                 small_node_overhead_ms=0.001)
    base = estimate_node_ms("elementwise", 16, 128, device)
    assert estimate_node_ms("elementwise", 16, 128, device, 0, 1) == pytest.approx(base + 0.001)
    constant = classify_node(helper.make_node("Constant", [], ["c"]), {})
    assert constant.kernels == constant.small_kernels == 0


def test_profile_device_records_threads_and_launch_costs() -> None:
    profile = profile_device(name="quick", quick=True)
    assert profile.threads is not None and profile.threads >= 1
    assert profile.run_overhead_ms > 0
    assert profile.node_overhead_ms >= 0 and profile.small_node_overhead_ms >= 0
    assert profile.memory_gbps > 0
