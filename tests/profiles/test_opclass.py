"""FLOPs, bytes and classes of nodes against hand computation; the roofline."""

from __future__ import annotations

import pytest
from onnx import helper

from edgecut.profiles import classify_node, estimate_node_ms, load_device, op_class_of


def test_conv_flops_match_hand_computation() -> None:
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[1, 1, 1, 1])
    shapes = {"x": (1, 3, 32, 32), "w": (16, 3, 3, 3), "b": (16,), "y": (1, 16, 32, 32)}
    cost = classify_node(node, shapes)
    assert cost.op_class == "conv"
    assert cost.flops == 2 * (16 * 32 * 32) * 3 * 3 * 3 + 16 * 32 * 32
    assert cost.bytes_moved == 4 * (3 * 32 * 32 + 16 * 27 + 16 + 16 * 32 * 32)


def test_grouped_conv_counts_input_channels_per_group() -> None:
    node = helper.make_node("Conv", ["x", "w"], ["y"], group=8, strides=[2, 2])
    shapes = {"x": (2, 8, 16, 16), "w": (8, 1, 3, 3), "y": (2, 8, 7, 7)}
    assert classify_node(node, shapes).flops == 2 * (2 * 8 * 7 * 7) * 1 * 9


def test_a_conv_with_fewer_filters_than_a_block_does_a_blocks_work() -> None:
    """MLAS computes CONV_FILTER_BLOCK filters at a time (measured: 8 filters ran at 46 % of
    16 filters' rate); depthwise and grouped convolutions are counted as they are."""
    from edgecut.profiles.opclass import CONV_FILTER_BLOCK

    node = helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])
    narrow = {"x": (1, 16, 8, 8), "w": (8, 16, 3, 3), "y": (1, 8, 8, 8)}
    full = {"x": (1, 16, 8, 8), "w": (CONV_FILTER_BLOCK, 16, 3, 3),
            "y": (1, CONV_FILTER_BLOCK, 8, 8)}
    assert classify_node(node, narrow).flops == classify_node(node, full).flops
    wide = {"x": (1, 16, 8, 8), "w": (24, 16, 3, 3), "y": (1, 24, 8, 8)}
    assert classify_node(node, wide).flops == 2 * (24 * 8 * 8) * 16 * 9
    depthwise = helper.make_node("Conv", ["x", "w"], ["y"], group=8, pads=[1, 1, 1, 1])
    shapes = {"x": (1, 8, 8, 8), "w": (8, 1, 3, 3), "y": (1, 8, 8, 8)}
    assert classify_node(depthwise, shapes).flops == 2 * (8 * 8 * 8) * 9


def test_conv_transpose_flops() -> None:
    node = helper.make_node("ConvTranspose", ["x", "w"], ["y"], strides=[2, 2])
    shapes = {"x": (1, 4, 5, 5), "w": (4, 6, 2, 2), "y": (1, 6, 10, 10)}
    assert classify_node(node, shapes).flops == 2 * (4 * 5 * 5) * 6 * 4


def test_gemm_flops_with_transpose_and_bias() -> None:
    node = helper.make_node("Gemm", ["a", "b", "c"], ["y"], transA=1)
    shapes = {"a": (64, 8), "b": (64, 10), "c": (10,), "y": (8, 10)}
    cost = classify_node(node, shapes)
    assert (cost.op_class, cost.flops) == ("gemm", 2 * 8 * 10 * 64 + 8 * 10)


def test_batched_matmul_flops() -> None:
    node = helper.make_node("MatMul", ["a", "b"], ["y"])
    shapes = {"a": (4, 12, 16, 32), "b": (4, 12, 32, 16), "y": (4, 12, 16, 16)}
    assert classify_node(node, shapes).flops == 2 * 4 * 12 * 16 * 16 * 32


def test_einsum_flops() -> None:
    node = helper.make_node("Einsum", ["a", "b"], ["y"], equation="bij,bjk->bik")
    shapes = {"a": (2, 3, 5), "b": (2, 5, 7), "y": (2, 3, 7)}
    assert classify_node(node, shapes).flops == 2 * 2 * 3 * 5 * 7


@pytest.mark.parametrize("op,expected", [
    ("Relu", "elementwise"), ("MaxPool", "pool"), ("ReduceMean", "pool"),
    ("LayerNormalization", "norm"), ("Softmax", "softmax"), ("Resize", "elementwise"),
    ("Concat", "data"), ("Transpose", "data"), ("Reshape", "data"), ("NonMaxSuppression", "other"),
])
def test_op_classes(op: str, expected: str) -> None:
    assert op_class_of(op) == expected


def test_view_ops_move_nothing() -> None:
    node = helper.make_node("Reshape", ["x", "s"], ["y"])
    assert classify_node(node, {"x": (1, 100), "s": (2,), "y": (10, 10)})[:3] == ("data", 0, 0)


def test_pool_flops_count_the_window() -> None:
    node = helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2])
    assert classify_node(node, {"x": (1, 4, 9, 9), "y": (1, 4, 4, 4)}).flops == 4 * 4 * 4 * 9


def test_if_takes_its_costlier_branch_and_unknown_shapes_fall_back() -> None:
    then_branch = helper.make_graph([helper.make_node("MatMul", ["a", "a"], ["t"])], "then", [], [])
    else_branch = helper.make_graph([helper.make_node("Relu", ["a"], ["e"])], "else", [], [])
    node = helper.make_node("If", ["cond"], ["y"], then_branch=then_branch, else_branch=else_branch)
    shapes = {"a": (4, 4), "t": (4, 4), "e": (4, 4), "y": (4, 4), "cond": ()}
    assert classify_node(node, shapes).flops == 2 * 4 * 4 * 4
    fallback = classify_node(node, {"y": (4, 4), "cond": ()})
    assert fallback.op_class == "other" and fallback.flops == 16


def test_loop_multiplies_its_body_by_a_known_trip_count() -> None:
    body = helper.make_graph([helper.make_node("Add", ["v", "v"], ["w"])], "body", [], [])
    node = helper.make_node("Loop", ["M", "", "v0"], ["out"], body=body)
    shapes = {"v": (10,), "w": (10,), "out": (10,)}
    assert classify_node(node, shapes, constants={"M": 5}).flops == 5 * 10
    assert classify_node(node, shapes).flops == 10


def test_roofline_takes_the_slower_of_compute_and_memory() -> None:
    pi = load_device("raspberry-pi-4")
    compute_bound = estimate_node_ms("conv", 1e9, 1e3, pi)
    assert compute_bound == pytest.approx(1e9 / (pi.gflops_for("conv") * 1e9) * 1e3)
    memory_bound = estimate_node_ms("data", 0, 1e9, pi)
    assert memory_bound == pytest.approx(1e9 / (pi.memory_gbps * 1e9) * 1e3)
    assert estimate_node_ms("other", 0, 0, pi) == 0.0
