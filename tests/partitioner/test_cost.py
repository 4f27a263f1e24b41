"""The cost model: each term of DESIGN.md's latency and energy, memory, and the cost graph."""

from __future__ import annotations

import doctest
import importlib
import math

import pytest

from edgecut.errors import BadProfileError, NoFeasibleCutError, UserInputError
from edgecut.partitioner.cost import (
    CostParameters,
    estimate_cut,
)
from edgecut.partitioner.costgraph import (
    CostGraph,
    CostNode,
    CostTensor,
    chain_costgraph,
    costgraph_from_model,
    node_names,
)

PARAMS = CostParameters(
    uplink_mbps=8, downlink_mbps=16, rtt_ms=20, encode_mbps=80, decode_mbps=160,
    compression_ratio=2, cloud_queue_ms=3, idle_w=0.5, compute_w=4, transmit_w=2, receive_w=1,
)


def fan_out() -> CostGraph:
    """x -> n0 -> h; h read by n1, n2, n3 (outputs o1, o2, o3)."""
    nodes = tuple(CostNode(index=i, name=f"n{i}", device_ms=10.0, cloud_ms=1.0, weight_bytes=100)
                  for i in range(4))
    tensors = (
        CostTensor(name="x", bytes=4000, producer=None, consumers=(0,)),
        CostTensor(name="h", bytes=1000, producer=0, consumers=(1, 2, 3)),
        *(CostTensor(name=f"o{i}", bytes=10, producer=i, is_graph_output=True) for i in (1, 2, 3)),
    )
    return CostGraph(nodes=nodes, tensors=tensors, order=(0, 1, 2, 3))


@pytest.mark.parametrize("name", ["edgecut.partitioner.cost", "edgecut.partitioner.costgraph"])
def test_docstring_examples_run(name: str) -> None:
    assert doctest.testmod(importlib.import_module(name)).failed == 0


def test_all_device_has_no_network_terms() -> None:
    cost = estimate_cut(fan_out(), frozenset(range(4)), PARAMS)
    assert (cost.encode_ms, cost.uplink_ms, cost.rtt_ms, cost.cloud_queue_ms, cost.cloud_ms,
            cost.downlink_ms, cost.decode_ms, cost.up_bytes, cost.down_bytes) == (0,) * 9
    assert cost.latency_ms == cost.device_ms == 40.0
    assert cost.energy_j == pytest.approx(4 * 40.0 / 1000)


def test_tensor_read_by_three_cloud_nodes_crosses_once() -> None:
    cost = estimate_cut(fan_out(), frozenset({0}), PARAMS)
    assert cost.up_bytes == 1000
    assert cost.down_bytes == 30
    assert cost.encode_ms == pytest.approx(1000 * 8 / 80_000)
    assert cost.uplink_ms == pytest.approx(500 * 8 / 8_000)  # compressed 2x on the wire
    assert cost.downlink_ms == pytest.approx(15 * 8 / 16_000)
    assert cost.decode_ms == pytest.approx(30 * 8 / 160_000)
    assert (cost.rtt_ms, cost.cloud_queue_ms, cost.cloud_ms, cost.device_ms) == (20, 3, 3.0, 10.0)
    parts = (cost.device_ms + cost.encode_ms + cost.uplink_ms + cost.rtt_ms + cost.cloud_queue_ms
             + cost.cloud_ms + cost.downlink_ms + cost.decode_ms)
    assert cost.latency_ms == pytest.approx(parts)


def test_energy_charges_each_state() -> None:
    c = estimate_cut(fan_out(), frozenset({0}), PARAMS)
    expected_mj = (4 * (c.device_ms + c.encode_ms + c.decode_ms) + 2 * c.uplink_ms + 1 * c.downlink_ms
                   + 0.5 * (c.rtt_ms + c.cloud_queue_ms + c.cloud_ms))
    assert c.energy_j == pytest.approx(expected_mj / 1000)


def test_all_cloud_sends_the_input_and_pays_the_round_trip() -> None:
    cost = estimate_cut(fan_out(), frozenset(), PARAMS)
    assert cost.up_bytes == 4000 and cost.down_bytes == 30 and cost.device_ms == 0
    assert cost.rtt_ms == 20 and cost.cloud_ms == 4.0
    assert cost.device_memory_bytes == 4000  # the input is held to be sent


def test_pinned_input_read_in_the_cloud_is_infeasible() -> None:
    g = fan_out()
    pinned = CostGraph(
        nodes=g.nodes,
        tensors=(CostTensor(name="x", bytes=4000, producer=None, consumers=(0,),
                            pinned_on_device=True), *g.tensors[1:]),
        order=g.order,
    )
    with pytest.raises(NoFeasibleCutError, match=r"'x' is pinned.*'n0'"):
        estimate_cut(pinned, frozenset(), PARAMS)
    assert estimate_cut(pinned, frozenset({0}), PARAMS).up_bytes == 1000


def test_device_set_must_be_closed_under_predecessors() -> None:
    with pytest.raises(UserInputError, match="'n1' is on the device but reads from node 'n0'"):
        estimate_cut(fan_out(), frozenset({1}), PARAMS)
    with pytest.raises(UserInputError, match="not a node index"):
        estimate_cut(fan_out(), frozenset({7}), PARAMS)


def test_memory_is_weights_plus_peak_live_activations() -> None:
    g = fan_out()
    # Head {n0}: x (4000) and h (1000) are live together at step 1; h stays until it is sent.
    assert estimate_cut(g, frozenset({0}), PARAMS).device_memory_bytes == 100 + 5000
    # Head {n0, n1}: step 2 holds h (still needed by the cloud) and o1 (an output): 1010.
    assert estimate_cut(g, frozenset({0, 1}), PARAMS).device_memory_bytes == 200 + 5000
    # A chain frees each tensor after its reader: peak is the largest adjacent pair.
    chain = chain_costgraph(device_ms=[1, 1, 1], cloud_ms=[1, 1, 1], tensor_bytes=[10, 500, 20, 5])
    assert estimate_cut(chain, frozenset({0, 1, 2}), PARAMS).device_memory_bytes == 520


def test_parameters_report_every_problem() -> None:
    with pytest.raises(BadProfileError) as info:
        CostParameters(uplink_mbps=0, downlink_mbps=-1, rtt_ms=math.nan, encode_mbps=0)
    message = str(info.value)
    for key in ("uplink_mbps", "downlink_mbps", "rtt_ms", "encode_mbps"):
        assert key in message


def test_cost_graph_rejects_cycles_and_bad_indices() -> None:
    nodes = tuple(CostNode(index=i, name=f"n{i}", device_ms=1, cloud_ms=1) for i in range(2))
    with pytest.raises(UserInputError, match="does not come later"):
        CostGraph(nodes=nodes, order=(0, 1), tensors=(
            CostTensor(name="a", bytes=1, producer=0, consumers=(1,)),
            CostTensor(name="b", bytes=1, producer=1, consumers=(0,)),
        ))
    with pytest.raises(UserInputError, match="outside"):
        CostGraph(nodes=nodes, order=(0, 1), tensors=(CostTensor(name="a", bytes=1, producer=5),))
    with pytest.raises(UserInputError, match="order must list"):
        CostGraph(nodes=nodes, order=(0,), tensors=())
    with pytest.raises(UserInputError, match="only graph inputs"):
        CostTensor(name="a", bytes=1, producer=0, pinned_on_device=True)


@pytest.mark.parametrize("name", ["chain_cnn", "residual_dag", "multi_branch", "fpn",
                                  "transformer_block", "stateful_rnn", "if_model", "loop_model"])
def test_costgraph_from_model_matches_list_cuts(name: str) -> None:
    from edgecut import zoo
    from edgecut.partitioner.cuts import list_cuts

    model = getattr(zoo, name)()
    cuts = list_cuts(model)
    times = {name: 1.0 for name in node_names(model)}
    graph = costgraph_from_model(model, None, times, times, pinned_inputs=())
    assert [n.model_index for n in graph.nodes] == list(cuts[0].order)
    for cut in cuts:
        cost = estimate_cut(graph, graph.prefix(cut.position), PARAMS)
        assert cost.up_bytes == cut.bytes
        assert cost.down_bytes == cut.down_bytes
    with pytest.raises(BadProfileError, match="no time for node"):
        costgraph_from_model(model, None, {}, times)
    with pytest.raises(UserInputError, match="not graph inputs"):
        costgraph_from_model(model, None, times, times, pinned_inputs=["nope"])
