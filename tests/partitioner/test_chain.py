"""The k-hop chain planner: the programme against brute force and nested down-sets on random
DAGs, memory limits, throughput, and the slices of real models chained equal the full model."""

from __future__ import annotations

import dataclasses
import doctest
import importlib
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgecut.errors import NoFeasibleCutError, UserInputError
from edgecut.partitioner.chain import Hop, Link, _Model, best_chain, estimate_chain
from edgecut.partitioner.chain_downsets import cost_of_parts, position_sets
from edgecut.partitioner.costgraph import CostGraph, CostNode, CostTensor, chain_costgraph

REL = 1e-7


@st.composite
def random_dag(draw: Any, max_nodes: int = 9) -> CostGraph:
    """Nodes under a shuffled numbering, 1-2 inputs, tensors with 0..3 readers, outputs."""
    n = draw(st.integers(1, max_nodes))
    label = draw(st.permutations(range(n)))
    size = st.one_of(st.just(0), st.integers(1, 2_000_000))
    nodes = tuple(CostNode(index=i, name=f"n{i}", device_ms=1.0, cloud_ms=1.0,
                           weight_bytes=draw(st.integers(0, 100_000))) for i in range(n))
    tensors: list[CostTensor] = []
    for j in range(draw(st.integers(1, 2))):
        readers = draw(st.lists(st.integers(0, n - 1), max_size=3, unique=True))
        tensors.append(CostTensor(name=f"in{j}", bytes=draw(size), producer=None,
                                  consumers=tuple(label[k] for k in readers)))
    for k in range(n):
        later = (st.lists(st.integers(k + 1, n - 1), max_size=3, unique=True) if k + 1 < n
                 else st.just([]))
        readers = draw(later)
        tensors.append(CostTensor(name=f"t{k}", bytes=draw(size), producer=label[k],
                                  consumers=tuple(label[r] for r in readers),
                                  is_graph_output=not readers or draw(st.booleans())))
    return CostGraph(nodes=nodes, tensors=tuple(tensors), order=tuple(label))


@st.composite
def random_chain(draw: Any, graph: CostGraph, hops: int) -> tuple[list[Hop], list[Link]]:
    n = len(graph.nodes)
    ms = st.one_of(st.just(0.0), st.floats(0.01, 50, allow_nan=False))
    memory = st.one_of(st.none(), st.integers(0, 6_000_000))
    kinds = ["device", *["helper"] * (hops - 2), "cloud"][:hops]
    serialise = st.one_of(st.just(math.inf), st.floats(1, 5000, allow_nan=False))
    made = [Hop(name=f"h{j}", kind=kinds[j], node_ms=tuple(draw(ms) for _ in range(n)),
                memory_bytes=None if j == hops - 1 else draw(memory),
                run_overhead_ms=draw(st.floats(0, 3)), serve_ms=draw(st.floats(0, 5)),
                call_ms=draw(st.floats(0, 5)), serialise_mbps=draw(serialise))
            for j in range(hops)]
    speed = st.floats(0.5, 2000, allow_nan=False)
    links = [Link(name=f"l{i}", uplink_mbps=draw(speed), downlink_mbps=draw(speed),
                  rtt_ms=draw(st.floats(0, 50)), compression_ratio=draw(st.floats(1, 3)))
             for i in range(hops - 1)]
    return made, links


@st.composite
def problems(draw: Any, max_nodes: int = 9) -> tuple[CostGraph, list[Hop], list[Link]]:
    graph = draw(random_dag(max_nodes))
    hops, links = draw(random_chain(graph, draw(st.integers(1, 4))))
    return graph, hops, links


def _value(graph: CostGraph, hops: list[Hop], links: list[Link], objective: str,
           solver: str) -> float | None:
    try:
        result = best_chain(graph, hops, links, objective=objective, solver=solver)
    except NoFeasibleCutError:
        return None
    cost = result.cost
    assert cost.feasible
    return cost.latency_ms if objective == "latency" else cost.bottleneck_ms


@pytest.mark.parametrize("name", ["edgecut.partitioner.chain", "edgecut.partitioner.chain_downsets",
                                  "edgecut.partitioner.chain_extract",
                                  "edgecut.partitioner.chain_plan"])
def test_docstring_examples_run(name: str) -> None:
    assert doctest.testmod(importlib.import_module(name)).failed == 0


@settings(max_examples=120, deadline=None)
@given(problems(), st.sampled_from(["latency", "throughput"]))
def test_programme_equals_brute_force_on_random_dags(problem: Any, objective: str) -> None:
    graph, hops, links = problem
    dp = _value(graph, hops, links, objective, "dp")
    brute = _value(graph, hops, links, objective, "bruteforce")
    assert (dp is None) == (brute is None)
    if dp is not None and brute is not None:
        assert math.isclose(dp, brute, rel_tol=REL, abs_tol=1e-9)


@settings(max_examples=80, deadline=None)
@given(problems())
def test_tables_equal_the_set_based_cost_at_every_tuple(problem: Any) -> None:
    import itertools

    graph, hops, links = problem
    model = _Model(graph, hops, links)
    n = len(graph.nodes)
    for cuts in itertools.islice(itertools.combinations_with_replacement(range(n + 1),
                                                                         len(hops) - 1), 60):
        fast = model.cost(cuts)
        unlimited = [dataclasses.replace(h, memory_bytes=None) for h in hops]
        slow = cost_of_parts(graph, unlimited, links, position_sets(graph, cuts))
        assert slow is not None
        assert math.isclose(fast.latency_ms, slow.latency_ms, rel_tol=REL, abs_tol=1e-9)
        assert math.isclose(fast.bottleneck_ms, slow.bottleneck_ms, rel_tol=REL, abs_tol=1e-9)
        for f, s in zip(fast.hops, slow.hops, strict=True):
            assert math.isclose(f.serve_ms, s.serve_ms, rel_tol=REL, abs_tol=1e-9)
            assert f.serialised_bytes == s.serialised_bytes
        assert [h.memory_bytes for h in fast.hops] == [h.memory_bytes for h in slow.hops]
        assert [(c.up_bytes, c.down_bytes) for c in fast.links] == \
               [(c.up_bytes, c.down_bytes) for c in slow.links]


@settings(max_examples=40, deadline=None)
@given(problems(max_nodes=6))
def test_down_sets_are_never_worse_than_positions(problem: Any) -> None:
    graph, hops, links = problem
    # memory follows the run order, which differs for down-sets
    hops = [dataclasses.replace(h, memory_bytes=None) for h in hops]
    if len(hops) > 3:
        hops, links = hops[:3], links[:2]
    dp = _value(graph, hops, links, "latency", "dp")
    downset = _value(graph, hops, links, "latency", "downset")
    assert dp is not None and downset is not None
    assert downset <= dp * (1 + REL) + 1e-9


def test_three_hops_put_each_node_where_it_is_fast() -> None:
    g = chain_costgraph(device_ms=[1] * 6, cloud_ms=[1] * 6, tensor_bytes=[10**6] + [100] * 6)
    hops = [Hop(name="device", node_ms=(1, 1, 50, 50, 50, 50)),
            Hop(name="helper", node_ms=(50, 50, 1, 1, 50, 50)),
            Hop(name="cloud", node_ms=(50, 50, 50, 50, 1, 1))]
    links = [Link(name="wifi", uplink_mbps=100, downlink_mbps=100, rtt_ms=1),
             Link(name="wan", uplink_mbps=10, downlink_mbps=10, rtt_ms=20)]
    result = best_chain(g, hops, links)
    assert result.cuts == (2, 4)
    assert [h.nodes for h in result.cost.hops] == [2, 2, 2]
    assert result.cost.links[1].up_bytes == 100


def test_memory_limit_moves_work_to_the_next_hop() -> None:
    g = chain_costgraph(device_ms=[1] * 3, cloud_ms=[1] * 3, tensor_bytes=[1000, 10, 10, 10])
    heavy = CostGraph(nodes=tuple(CostNode(index=i, name=f"n{i}", device_ms=1, cloud_ms=1,
                                           weight_bytes=10**6 if i == 1 else 0) for i in range(3)),
                      tensors=g.tensors, order=g.order)
    hops = [Hop(name="device", node_ms=(1, 1, 1), memory_bytes=10**5),
            Hop(name="cloud", node_ms=(5, 5, 5))]
    links = [Link(name="lan", uplink_mbps=1000, downlink_mbps=1000)]
    assert best_chain(g, hops, links).cuts == (3,)
    assert best_chain(heavy, hops, links).cuts == (1,)
    tiny = [Hop(name="device", node_ms=(1, 1, 1), memory_bytes=0), hops[1]]
    assert best_chain(heavy, tiny, links).cuts == (0,)
    with pytest.raises(NoFeasibleCutError, match="memory"):
        best_chain(heavy, [tiny[0], Hop(name="c", node_ms=(1, 1, 1), memory_bytes=10)], links)


def test_throughput_balances_the_hops() -> None:
    g = chain_costgraph(device_ms=[1] * 4, cloud_ms=[1] * 4, tensor_bytes=[8] * 5)
    hops = [Hop(name=f"h{j}", node_ms=(10, 10, 10, 10)) for j in range(2)]
    links = [Link(name="lan", uplink_mbps=1000, downlink_mbps=1000, rtt_ms=100)]
    latency = best_chain(g, hops, links)
    throughput = best_chain(g, hops, links, objective="throughput")
    assert latency.cuts == (4,)  # one machine: no round trip
    assert throughput.cuts == (2,) and math.isclose(throughput.cost.bottleneck_ms, 20)
    assert throughput.cost.throughput_rps == pytest.approx(50)


def test_bad_chains_say_what_is_wrong() -> None:
    g = chain_costgraph(device_ms=[1], cloud_ms=[1], tensor_bytes=[8, 8])
    with pytest.raises(UserInputError, match="2 hops need 1 links"):
        best_chain(g, [Hop(name="a", node_ms=(1,)), Hop(name="b", node_ms=(1,))], [])
    with pytest.raises(UserInputError, match="times 2 nodes"):
        best_chain(g, [Hop(name="a", node_ms=(1, 2))], [])
    with pytest.raises(UserInputError, match="non-decreasing"):
        estimate_chain(g, [Hop(name="a", node_ms=(1,)), Hop(name="b", node_ms=(1,))],
                       [Link(name="l", uplink_mbps=1, downlink_mbps=1)], [2])
    with pytest.raises(UserInputError, match="uplink_mbps must be > 0"):
        Link(name="l", uplink_mbps=0, downlink_mbps=1)
    with pytest.raises(UserInputError, match="solver"):
        best_chain(g, [Hop(name="a", node_ms=(1,))], [], solver="magic")


def test_single_hop_is_the_whole_model() -> None:
    g = chain_costgraph(device_ms=[1, 2], cloud_ms=[1, 2], tensor_bytes=[8, 8, 8])
    result = best_chain(g, [Hop(name="device", node_ms=(1, 2))], [])
    assert result.cuts == () and result.cost.latency_ms == 3


def test_slices_of_the_trained_text_detector_chain_to_the_full_model() -> None:
    """PP-OCRv4's detector (672 nodes, an FPN: skip connections over every hop)."""
    import onnx

    from edgecut.partitioner.chain_extract import chain_slices, verify_chain
    from edgecut.partitioner.graph import analyse_graph
    from edgecut.partitioner.plan import check_model
    from edgecut.partitioner.shapes import resolve_tensors, run_on_samples
    from edgecut.zoo import find_packaged_model

    path = find_packaged_model()
    if path is None:
        pytest.skip("rapidocr-onnxruntime (the test extra) is not installed")
    model = onnx.load(str(path))
    shapes = {model.graph.input[0].name: (1, 3, 96, 96)}
    info = analyse_graph(model)
    tensors = resolve_tensors(model, shapes)
    feeds, _ = run_on_samples(model, shapes)
    n = len(info.order)
    for cuts in ((n // 4, n // 2), (n // 3, 2 * n // 3), (1, n - 1)):
        slices = chain_slices(model, cuts, graph=info, tensors=tensors)
        for s in slices:
            assert s.model is not None
            check_model(s.model, f"slice at {cuts}")
        assert len(slices[1].receives) >= 1
        assert verify_chain(model, [s.model for s in slices], feeds=feeds) <= 1e-3


@settings(max_examples=60, deadline=None)
@given(problems(max_nodes=7))
def test_layered_min_cut_equals_nested_down_sets(problem: Any) -> None:
    graph, hops, links = problem
    hops = [dataclasses.replace(h, memory_bytes=None, run_overhead_ms=0.0) for h in hops][:3]
    links = links[: len(hops) - 1]
    downset = _value(graph, hops, links, "latency", "downset")
    mincut = best_chain(graph, hops, links, solver="mincut")
    assert downset is not None
    assert math.isclose(mincut.cost.latency_ms, downset, rel_tol=1e-6, abs_tol=1e-4)
    assert mincut.device_sets is not None
    assert all(graph.is_down_set(d) for d in mincut.device_sets)
    assert all(a <= b for a, b in zip(mincut.device_sets, mincut.device_sets[1:], strict=False))


def test_min_cut_refuses_memory_limits() -> None:
    g = chain_costgraph(device_ms=[1], cloud_ms=[1], tensor_bytes=[8, 8])
    hops = [Hop(name="d", node_ms=(1,), memory_bytes=10), Hop(name="c", node_ms=(1,))]
    with pytest.raises(UserInputError, match="without memory limits"):
        best_chain(g, hops, [Link(name="l", uplink_mbps=1, downlink_mbps=1)], solver="mincut")


# --------------------------------------------------------------------------- serving

def _served_world(helper_serving: dict[str, float]) -> tuple[CostGraph, list[Hop], list[Link]]:
    """2 nodes; input, middle and output 1000 bytes each (1 ms at 8 Mbps). The device is slow,
    the helper fast at n0, the cloud fast at n1."""
    g = chain_costgraph(device_ms=[1, 1], cloud_ms=[1, 1], tensor_bytes=[1000, 1000, 1000])
    hops = [Hop(name="device", kind="device", node_ms=(30, 30)),
            Hop(name="helper", node_ms=(2, 30), **helper_serving),
            Hop(name="cloud", kind="cloud", node_ms=(10, 2))]
    links = [Link(name="lan", uplink_mbps=8, downlink_mbps=8),
             Link(name="wan", uplink_mbps=8, downlink_mbps=8, rtt_ms=10)]
    return g, hops, links


def test_a_helpers_serving_cost_makes_the_single_cut_win() -> None:
    # Without serving, cuts (0, 1): lan 1 + 1, helper n0 2, wan 1 + 1 + rtt 10, cloud n1 2 = 18;
    # the best single cut (0): wan 1 + 1 + 10, cloud 10 + 2 = 24.
    g, hops, links = _served_world({})
    single = best_chain(g, [hops[0], hops[2]], [links[1]])
    assert single.cuts == (0,) and math.isclose(single.cost.latency_ms, 24)
    free = best_chain(g, hops, links)
    assert free.cuts == (0, 1) and math.isclose(free.cost.latency_ms, 18)
    # Served: 4 ms to take the request, 3 to call the cloud, and 4000 bytes (lan's up and down,
    # wan's up and down) at 8 Mbps = 4 ms: (0, 1) costs 18 + 11 = 29 > 24. Relaying at (0, 0)
    # costs 26 + 11 = 37, running both nodes at (0, 2) 34 + 4 + 2 (lan's bytes only) = 40.
    g, hops, links = _served_world({"serve_ms": 4, "call_ms": 3, "serialise_mbps": 8})
    served = best_chain(g, hops, links)
    assert served.cuts == (0, 1) and math.isclose(served.cost.latency_ms, 29)
    helper = served.cost.hops[1]
    assert math.isclose(helper.serve_ms, 11) and helper.serialised_bytes == 4000
    assert math.isclose(helper.stage_ms, 13) and math.isclose(served.cost.bottleneck_ms, 13)
    assert served.cost.latency_ms > single.cost.latency_ms
    assert math.isclose(estimate_chain(g, hops, links, (0, 0)).latency_ms, 37)
    assert math.isclose(estimate_chain(g, hops, links, (0, 2)).latency_ms, 40)
    shown = served.cost.to_json()["hops"][1]  # type: ignore[index]
    assert (shown["serve_ms"], shown["serialised_bytes"], shown["stage_ms"]) == (11, 4000, 13)


def test_serving_is_charged_only_where_a_request_arrives_or_leaves() -> None:
    g, hops, links = _served_world({"serve_ms": 4, "call_ms": 3, "serialise_mbps": 8})
    hops[0] = dataclasses.replace(hops[0], call_ms=1.5, serialise_mbps=16)
    hops[2] = dataclasses.replace(hops[2], serve_ms=0.5, serialise_mbps=8000)
    at = estimate_chain(g, hops, links, (0, 2))  # the chain ends at the helper
    assert [h.serve_ms for h in at.hops] == [1.5 + 1.0, 4 + 2.0, 0.0]
    assert [h.serialised_bytes for h in at.hops] == [2000, 2000, 0]
    alone = estimate_chain(g, hops, links, (2, 2))  # device only: nobody is served or called
    assert [h.serve_ms for h in alone.hops] == [0.0, 0.0, 0.0]
    assert math.isclose(alone.latency_ms, 60)
    with pytest.raises(UserInputError, match="serve_ms must be finite and >= 0"):
        Hop(name="h", node_ms=(1,), serve_ms=-1)
    with pytest.raises(UserInputError, match="serialise_mbps must be > 0"):
        Hop(name="h", node_ms=(1,), serialise_mbps=0)


def test_throughput_counts_a_hops_serving_in_its_stage() -> None:
    # Two hops, 10 ms a node each: unserved, the even split (2,) has stages of 20 and 20.
    # With 12 ms of serving on the second: (2,) has stages 20 and 32, (3,) 30 and 22: (3,).
    g = chain_costgraph(device_ms=[1] * 4, cloud_ms=[1] * 4, tensor_bytes=[8] * 5)
    hops = [Hop(name="h0", node_ms=(10, 10, 10, 10)),
            Hop(name="h1", node_ms=(10, 10, 10, 10), serve_ms=12)]
    links = [Link(name="lan", uplink_mbps=1000, downlink_mbps=1000, rtt_ms=100)]
    free = best_chain(g, [hops[0], dataclasses.replace(hops[1], serve_ms=0)], links,
                      objective="throughput")
    assert free.cuts == (2,) and math.isclose(free.cost.bottleneck_ms, 20)
    served = best_chain(g, hops, links, objective="throughput")
    assert served.cuts == (3,) and math.isclose(served.cost.bottleneck_ms, 30)
    assert math.isclose(served.cost.hops[1].stage_ms, 22)
    assert math.isclose(estimate_chain(g, hops, links, (2,)).bottleneck_ms, 32)


def test_profile_serving_fields_load_save_and_leave_digests_alone(tmp_path: Path) -> None:
    from edgecut.errors import BadProfileError
    from edgecut.partitioner.chain_plan import serialise_mbps_of, serve_ms_of
    from edgecut.partitioner.planner import profile_digest
    from edgecut.profiles import load_device, save_device

    pi = load_device("raspberry-pi-4")
    assert pi.serve_ms is None and pi.serialise_mbps is None
    # 0.6 ms and 8000 Mbps on the reference machine (memory_gbps 17), slower in proportion
    assert math.isclose(serve_ms_of(pi), 0.6 * 17 / 3.2)
    assert math.isclose(serialise_mbps_of(pi), 8000 * 3.2 / 17)
    given = dataclasses.replace(pi, serve_ms=2.5, serialise_mbps=900.0)
    back = load_device(save_device(given, tmp_path / "pi.toml"))
    assert back == given and (serve_ms_of(back), serialise_mbps_of(back)) == (2.5, 900.0)
    assert "serve_ms" not in (save_device(pi, tmp_path / "plain.toml")).read_text()
    assert profile_digest(given) != profile_digest(pi)
    # An unset field is not in the digest: the digest is the one plans recorded before it.
    import hashlib
    import json

    old = {k: v for k, v in dataclasses.asdict(pi).items()
           if k not in ("serve_ms", "serialise_mbps")}
    assert profile_digest(pi) == hashlib.sha256(
        json.dumps(old, sort_keys=True, default=str).encode()).hexdigest()
    bad = tmp_path / "bad.toml"
    bad.write_text(save_device(given, tmp_path / "g.toml").read_text()
                   .replace("serialise_mbps = 900.0", "serialise_mbps = 0"))
    with pytest.raises(BadProfileError, match=r"device\.serialise_mbps must be > 0, got 0"):
        load_device(bad)


def test_plan_chain_charges_each_hop_its_profiles_serving(tmp_path: Path) -> None:
    import onnx

    from edgecut.partitioner.chain_plan import CALL_SHARE, plan_chain
    from edgecut.profiles import load_device, load_network
    from edgecut.profiles.schema import CloudProfile
    from edgecut.zoo import ZOO

    path = tmp_path / "m.onnx"
    onnx.save(ZOO["dynamic_cnn"](), str(path))
    shapes = {onnx.load(str(path)).graph.input[0].name: (1, 3, 32, 32)}
    device, jetson = load_device("raspberry-pi-4"), load_device("jetson-nano")
    wifi, lte = load_network("wifi"), load_network("lte")
    cloud = CloudProfile(name="c", device=load_device("gpu-server"))

    def plan(helper: Any) -> Any:
        return plan_chain(path, device=device, network=lte, cloud=cloud,
                          helpers=[(helper, wifi)], input_shapes=shapes, cuts=[0, 0])

    slow = dataclasses.replace(jetson, serve_ms=40.0, serialise_mbps=10_000.0)
    quick, costly = plan(jetson), plan(slow)
    assert costly.hops[1].serve_ms == 40.0 and costly.hops[1].call_ms == 40.0 * CALL_SHARE
    assert costly.hops[1].serialise_mbps == 10_000.0
    helper = costly.result.cost.hops[1]
    assert helper.nodes == 0 and helper.serve_ms > 40.0 + 20.0  # a relay still serves
    assert costly.result.cost.latency_ms > quick.result.cost.latency_ms + 50.0
    # The single cut skips the helper: its figures do not change it.
    assert costly.single_cut.cost.latency_ms == quick.single_cut.cost.latency_ms
    assert costly.explain()[2]["serve_ms"] == helper.serve_ms


def test_chain_plan_explain_shows_serving_and_says_when_the_single_cut_wins(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    import onnx

    from edgecut.cli import main
    from edgecut.profiles import load_device, save_device
    from edgecut.zoo import ZOO

    path = tmp_path / "m.onnx"
    onnx.save(ZOO["dynamic_cnn"](), str(path))
    costly = save_device(dataclasses.replace(load_device("jetson-nano"), serve_ms=500.0),
                         tmp_path / "costly.toml")
    common = ["chain", "plan", str(path), "--device", "raspberry-pi-4", "--network", "lte",
              "--input-shape", f"{onnx.load(str(path)).graph.input[0].name}=1x3x32x32",
              "--explain", "--cuts", "0,0"]
    assert main([*common, "--helper", f"{costly}@wifi", "--json"]) == 0
    captured = capsys.readouterr()
    shown = json.loads(captured.out)
    helper = next(r for r in shown["hops"] if r["name"] == "helper1")
    # a relay: no compute, served (500 ms), calling the cloud (250 ms), bytes both ways
    assert helper["nodes"] == 0 and helper["serve_ms"] > 750.0
    assert helper["stage_ms"] == helper["serve_ms"] and helper["serialised_bytes"] > 0
    assert "note: the best single cut" in captured.err and "helpers cost more" in captured.err
    assert shown["summary"]["single_cut"]["latency_ms"] < shown["summary"]["chain"]["latency_ms"]
    monkeypatch.setenv("COLUMNS", "160")  # rich's width off a terminal
    assert main([*common, "--helper", "jetson-nano@wifi"]) == 0
    table = capsys.readouterr().out
    assert "serve ms" in table and "helper1" in table


# --------------------------------------------------------------------------- min-cut plans

@settings(max_examples=60, deadline=None)
@given(problems(max_nodes=7))
def test_min_cut_sets_are_prefixes_of_the_order_they_give(problem: Any) -> None:
    from edgecut.partitioner.chain_downsets import order_of_sets

    graph, hops, links = problem
    hops = [dataclasses.replace(h, memory_bytes=None) for h in hops]
    found = best_chain(graph, hops, links[: len(hops) - 1], solver="mincut")
    assert found.device_sets is not None
    order, cuts = order_of_sets(graph, found.device_sets)
    reordered = CostGraph(nodes=graph.nodes, tensors=graph.tensors, order=order)  # checks it
    assert sorted(order) == list(range(len(graph.nodes)))
    assert all(reordered.position[u] < reordered.position[v]
               for v in range(len(graph.nodes)) for u in graph.predecessors[v])
    assert [frozenset(order[:c]) for c in cuts] == list(found.device_sets)
    assert position_sets(reordered, cuts)[0] == (found.device_sets[0] if cuts
                                                 else frozenset(range(len(graph.nodes))))
    # The positions along the new order cost what the sets cost.
    along = estimate_chain(reordered, hops, links[: len(hops) - 1], cuts)
    assert math.isclose(along.latency_ms, found.cost.latency_ms, rel_tol=1e-6, abs_tol=1e-6)


def test_order_of_sets_refuses_sets_that_are_not_nested_down_sets() -> None:
    from edgecut.partitioner.chain_downsets import order_of_sets

    g = chain_costgraph(device_ms=[1, 1, 1], cloud_ms=[1, 1, 1], tensor_bytes=[8, 8, 8, 8])
    assert order_of_sets(g, [frozenset({0}), frozenset({0, 1})]) == ((0, 1, 2), (1, 2))
    with pytest.raises(UserInputError, match="nested down-sets"):
        order_of_sets(g, [frozenset({1})])  # reads node 0
    with pytest.raises(UserInputError, match="nested down-sets"):
        order_of_sets(g, [frozenset({0, 1}), frozenset({0})])


def side_branch_model() -> Any:
    """Two branches, the heavy one listed first: Expand(z) -> MatMul (2048 x 256 x 256) ->
    ReduceSum -> MatMul, from a small input; and MatMul(x, Wa), a wide input made small. Over
    slow links the device should only narrow x: a down-set that is no prefix of the order."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)

    def w(name: str, *shape: int) -> Any:
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.05).astype(np.float32),
                                       name)

    inits = [w("Wm", 256, 256), w("Wr", 256, 16), w("Wa", 16384, 16),
             numpy_helper.from_array(np.array([2048, 256], np.int64), "shape"),
             numpy_helper.from_array(np.array([0], np.int64), "axes")]
    nodes = [helper.make_node("Expand", ["z", "shape"], ["e"], name="expand"),
             helper.make_node("MatMul", ["e", "Wm"], ["m"], name="heavy"),
             helper.make_node("ReduceSum", ["m", "axes"], ["r"], name="reduce", keepdims=1),
             helper.make_node("MatMul", ["r", "Wr"], ["b"], name="narrow_b"),
             helper.make_node("MatMul", ["x", "Wa"], ["a"], name="narrow_a"),
             helper.make_node("Add", ["a", "b"], ["y"], name="join")]
    graph = helper.make_graph(
        nodes, "side_branch",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16384]),
         helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 256])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model)
    return model


SLOW = "up=10,down=10,rtt=1"


def test_chain_slices_follow_a_given_order_and_refuse_a_wrong_one() -> None:
    from edgecut.errors import UnknownCutError
    from edgecut.partitioner.chain_extract import chain_slices, verify_chain
    from edgecut.partitioner.graph import analyse_graph

    model = side_branch_model()
    assert analyse_graph(model).order == (0, 1, 2, 3, 4, 5)
    slices = chain_slices(model, (1, 3), order=(4, 0, 1, 2, 3, 5))
    assert slices[0].receives == ("x", "z") and slices[0].sends == ("a", "z")
    assert [n.name for n in slices[0].model.graph.node] == ["narrow_a"]
    assert verify_chain(model, [s.model for s in slices], seed=0) <= 1e-3
    with pytest.raises(UnknownCutError, match="topological"):
        chain_slices(model, (1,), order=(1, 0, 2, 3, 4, 5))
    with pytest.raises(UnknownCutError, match="once"):
        chain_slices(model, (1,), order=(0, 1, 2, 3, 4))


def test_chain_plan_mincut_writes_a_reordered_plan_that_verifies_and_deploys(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    import onnx

    from edgecut.chain_deploy import deploy_stage
    from edgecut.cli import main
    from edgecut.cloud.forwarding import FORWARD_FILE
    from edgecut.edge.plan import load_plan
    from edgecut.partitioner.chain_extract import chain_slices, verify_chain

    path = tmp_path / "m.onnx"
    model = side_branch_model()
    onnx.save(model, str(path))
    common = ["chain", "plan", str(path), "--device", "raspberry-pi-4",
              "--helper", f"jetson-nano@{SLOW}", "--network", SLOW]
    assert main([*common, "--out", str(tmp_path / "dp")]) == 0
    assert main([*common, "--solver", "mincut", "--out", str(tmp_path / "mc")]) == 0
    assert "of a reordered order" in capsys.readouterr().out
    dp = json.loads((tmp_path / "dp" / "plan.json").read_text())["chain"]
    mc = json.loads((tmp_path / "mc" / "plan.json").read_text())["chain"]
    assert "order" not in dp and dp["solver"] == "dp"
    # The device narrows x (node 4, listed after the heavy branch): no prefix of the order.
    assert mc["solver"] == "mincut" and mc["order"][: mc["cuts"][0]] == [4]
    assert mc["predicted"]["latency_ms"] < dp["predicted"]["latency_ms"] / 2
    # The recorded order and cuts slice the model again into the chain written.
    again = chain_slices(model, mc["cuts"], order=mc["order"])
    assert verify_chain(model, [s.model for s in again], seed=1) <= 1e-3
    plan = load_plan(tmp_path / "mc")
    assert [s.nodes for s in plan.stages if s.nodes] == [1, 5]
    assert [onnx.load(str(plan.path(s.model))).graph.node[0].name
            for s in plan.stages if s.nodes] == ["narrow_a", "expand"]
    assert tuple(again[0].sends) == plan.stages[0].sends == ("a", "z")
    deployed = deploy_stage(tmp_path / "mc", tmp_path / "cloud", len(plan.stages) - 1)
    assert {d.name for d in deployed} >= {"m", f"m.stage{len(plan.stages) - 1}"}
    deploy_stage(tmp_path / "mc", tmp_path / "helper", 1, next_endpoints=["127.0.0.1:9"])
    assert (tmp_path / "helper" / "m.stage1" / FORWARD_FILE).is_file()


def test_chain_plan_mincut_says_what_it_cannot_do(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import onnx

    from edgecut.cli import main

    path = tmp_path / "m.onnx"
    onnx.save(side_branch_model(), str(path))
    common = ["chain", "plan", str(path), "--device", "raspberry-pi-4", "--network", SLOW,
              "--solver", "mincut", "--explain"]
    for extra, message in ((["--objective", "throughput"], "latency only"),
                           (["--cuts", "1"], "go with --solver dp"),
                           (["--device-memory-mib", "0.01"], "does not fit a hop's memory")):
        assert main([*common, *extra]) != 0
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1
