"""The planner: candidates, choice, envelope, down-set cuts, plan.json, and its speed."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from edgecut.edge.plan import load_plan
from edgecut.partitioner import analyse_graph, cut_from_device_set, split_model, verify_split
from edgecut.partitioner.correction import MAX_RATIO, Correction, anchor_cuts
from edgecut.partitioner.cost import objective_key
from edgecut.partitioner.planner import cost_parameters, plan_model, write_planned
from edgecut.partitioner.shapes import sample_inputs
from edgecut.profiles import CloudProfile, load_cloud, load_device, load_network
from edgecut.profiles.model_profiler import model_sha256, node_names
from edgecut.zoo import fpn, multi_branch


def _slow(factor: float):
    pi = load_device("raspberry-pi-4")
    return dataclasses.replace(
        pi, name="slow", gflops_by_class={k: v * factor for k, v in pi.gflops_by_class.items()},
        default_gflops=pi.default_gflops * factor, memory_gbps=pi.memory_gbps * factor)


@pytest.fixture(scope="module")
def fpn_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("m") / "fpn.onnx"
    onnx.save(fpn(), str(path))
    return path



def test_envelope_agrees_with_direct_evaluation(fpn_path, tmp_path):
    planned = plan_model(fpn_path, device=_slow(0.01), network=load_network("up=10,down=20,rtt=1"),
                         cloud=load_cloud(), measure=False)
    assert len(planned.envelope) >= 3  # all-device, a split, all-cloud (codec switch included)
    plan = write_planned(planned, tmp_path / "plan")
    env = plan["envelope"]
    assert env[0]["min_mbps"] == 0 and env[-1]["max_mbps"] is None
    for left, right in itertools.pairwise(env):
        assert left["max_mbps"] == right["min_mbps"]
    device, network, cloud = (planned.plot_inputs[k] for k in ("device", "network", "cloud"))
    loaded = load_plan(tmp_path / "plan")
    for bw in np.geomspace(0.01, 1e5, 300):
        params = cost_parameters(device, network, cloud, uplink_mbps=float(bw))
        best = min(c.cost(params).latency_ms for c in planned.candidates)
        cut = loaded.cut_for_bandwidth(float(bw))
        got = planned.candidate(cut).cost(params).latency_ms
        assert got <= best * (1 + 1e-9) + 1e-9, (bw, cut)
    assert plan["chosen"] == loaded.cut_for_bandwidth(network.uplink_mbps)
    assert {c["id"] for c in plan["cuts"]} >= {s["cut"] for s in env}
    for c in plan["cuts"]:
        assert set(c["predicted"]["model"]) >= {"device_ms", "uplink_ms", "cloud_ms", "latency_ms"}
    assert plan["profiles"]["device"]["name"] == "slow"
    assert len(plan["profiles"]["network"]["sha256"]) == 64


@pytest.mark.parametrize("objective", ["latency", "energy", "throughput"])
def test_chosen_minimises_the_objective(fpn_path, objective):
    planned = plan_model(fpn_path, device=_slow(0.05), network=load_network("up=100,down=200,rtt=1"),
                         cloud=load_cloud(), objective=objective, measure=False)
    key = objective_key(planned.chosen.cost(planned.params), objective)
    for c in planned.candidates:
        assert key <= objective_key(c.cost(planned.params), objective)
    rows = planned.explain()
    assert [r["id"] for r in rows if r["chosen"]] == [planned.chosen.id]


def test_plans_are_deterministic(fpn_path, tmp_path):
    args = dict(device=_slow(0.01), network=load_network("lte"), cloud=load_cloud(), measure=False)
    a = write_planned(plan_model(fpn_path, **args), tmp_path / "a")
    b = write_planned(plan_model(fpn_path, **args), tmp_path / "b")
    assert a == b
    assert (tmp_path / "a" / "plan.json").read_bytes() == (tmp_path / "b" / "plan.json").read_bytes()


def _non_prefix_down_set(info) -> set[int]:
    """The ancestors of a late node of multi_branch (and the node): a down-set, no prefix."""
    last = info.order[-3]
    keep = {last}
    frontier = [last]
    while frontier:
        i = frontier.pop()
        for name in info.node_inputs[i]:
            p = info.producer.get(name)
            if p is not None and p in info.order and p not in keep:
                keep.add(p)
                frontier.append(p)
    assert set(info.order[: len(keep)]) != keep, "choose a non-prefix down-set"
    return keep


def test_down_set_cut_on_a_dag_verifies():
    model = multi_branch()
    info = analyse_graph(model)
    keep = _non_prefix_down_set(info)
    cut = cut_from_device_set(model, keep, cut_id=1000)
    head, tail = split_model(model, cut, graph=info)
    onnx.checker.check_model(head, full_check=True)
    onnx.checker.check_model(tail, full_check=True)
    assert verify_split(model, head, tail, sample_inputs(model)) < 1e-4


def test_planner_makes_the_min_cut_a_real_cut(tmp_path):
    """Per-node tables make a non-prefix down-set cheap on the device and the rest cheap in the
    cloud, over a fast link: the optimum is that down-set, and the plan holds it as a real cut."""
    path = tmp_path / "mb.onnx"
    model = multi_branch()
    onnx.save(model, str(path))
    info = analyse_graph(model)
    names = node_names(model.graph)
    sha = model_sha256(path)
    keep = _non_prefix_down_set(info)
    device_ms = {n: 1000.0 for n in names}
    cloud_ms = {n: 0.001 for n in names}
    for i in keep:
        device_ms[names[i]], cloud_ms[names[i]] = 0.001, 1000.0
    dev = dataclasses.replace(load_device("phone"), per_node_ms=device_ms, per_node_model_sha256=sha)
    cloud_dev = dataclasses.replace(load_device("gpu-server"), per_node_ms=cloud_ms,
                                    per_node_model_sha256=sha)
    cloud = CloudProfile(name="table", device=cloud_dev)
    planned = plan_model(path, device=dev, network=load_network("up=1000,down=1000,rtt=0"),
                         cloud=cloud, measure=False)
    assert planned.chosen.kind == "downset"
    assert len(planned.chosen.device_set) == len(keep)
    plan = write_planned(planned, tmp_path / "plan")
    kinds = {c["id"]: c["kind"] for c in plan["cuts"]}
    assert kinds[planned.chosen.id] == "downset"
    loaded = load_plan(tmp_path / "plan")
    assert loaded.cut(planned.chosen.id).kind == "downset"
    assert plan["cuts"][[c["id"] for c in plan["cuts"]].index(planned.chosen.id)]["max_abs_diff"] < 1e-4


def test_measured_correction_records_both_predictions(fpn_path, tmp_path):
    seen = []
    planned = plan_model(fpn_path, device=_slow(0.01), network=load_network("up=10,down=20,rtt=1"),
                         cloud=load_cloud(), measure=True, measure_budget_s=10,
                         progress=lambda *a: seen.append(a))
    assert seen and planned.measurement is not None
    record = planned.measurement
    assert record["anchors"] and record["rounds"] >= 1 and record["empty_run_ms"] > 0
    assert record["device_points"][-1][0] == 1.0  # the whole model is always an anchor
    for anchor in record["anchors"]:
        for part in ("head", "tail"):
            if part in anchor:
                assert 1 / MAX_RATIO <= anchor[part]["ratio"] <= MAX_RATIO
                shrunk = anchor[part]["ratio_measured"] ** anchor[part]["trust"]
                assert 0 <= anchor[part]["trust"] <= 1
                assert anchor[part]["limited"] == (anchor[part]["ratio"] != shrunk)
    assert set(record["effect"]) >= {"chosen_before", "chosen_after", "device_only_ms_after"}
    plan = write_planned(planned, tmp_path / "plan")
    measured = [c for c in plan["cuts"] if c["predicted"]["corrected"] is not None]
    assert len(measured) == len(plan["cuts"])  # every cut is corrected, not only the timed ones
    for c in measured:
        assert 1 / MAX_RATIO <= c["predicted"]["device_ratio"] <= MAX_RATIO
        assert 1 / MAX_RATIO <= c["predicted"]["cloud_ratio"] <= MAX_RATIO
    assert plan["planner"]["measured"] is True
    assert plan["measurement"]["anchors"] == record["anchors"]


def test_a_cuts_corrected_device_time_never_depends_on_the_network(fpn_path):
    correction = Correction(device_points=((0.3, 1.8), (0.6, 1.2), (1.0, 0.9)),
                            cloud_points=((0.5, 1.5), (1.0, 1.1)))
    by_network = {}
    for link in ("up=1,down=2,rtt=80", "up=10,down=20,rtt=20", "up=900,down=900,rtt=1"):
        planned = plan_model(fpn_path, device=_slow(0.01), network=load_network(link),
                             cloud=load_cloud(), correction=correction)
        by_network[link] = {c.device_set: (c.model_device_ms * c.device_ratio,
                                           c.model_cloud_ms * c.cloud_ratio)
                            for c in planned.candidates}
    first, *others = by_network.values()
    for other in others:
        for device_set in set(first) & set(other):
            assert first[device_set] == other[device_set]


def test_anchors_are_chosen_from_predictions_alone(fpn_path):
    anchors = []
    for link in ("up=1,down=2,rtt=80", "up=900,down=900,rtt=1"):
        planned = plan_model(fpn_path, device=_slow(0.01), network=load_network(link),
                             cloud=load_cloud(), measure=False)
        anchors.append([c.device_set for c in anchor_cuts(planned.candidates)])
    assert anchors[0] == anchors[1] and len(anchors[0]) >= 3
    assert len(anchors[0][-1]) == max(c.device_nodes for c in planned.candidates)  # whole model


def test_correction_interpolates_between_anchors():
    c = Correction(device_points=((0.25, 2.0), (0.5, 1.0), (1.0, 0.5)), cloud_points=())
    assert c.device_ratio(0.0) == 2.0 and c.device_ratio(0.375) == 1.5
    assert c.device_ratio(0.75) == 0.75 and c.device_ratio(2.0) == 0.5
    assert c.cloud_ratio(0.3) == 1.0


def test_the_same_plan_twice_with_a_given_correction_is_byte_identical(fpn_path, tmp_path):
    correction = Correction(device_points=((0.5, 1.3), (1.0, 0.8)), cloud_points=((1.0, 1.2),))
    args = dict(device=_slow(0.01), network=load_network("lte"), cloud=load_cloud(),
                correction=correction)
    write_planned(plan_model(fpn_path, **args), tmp_path / "a")
    write_planned(plan_model(fpn_path, **args), tmp_path / "b")
    assert (tmp_path / "a" / "plan.json").read_bytes() == (tmp_path / "b" / "plan.json").read_bytes()


def _chain_model(n: int) -> onnx.ModelProto:
    """A 5,000-node DAG: a chain of Add/Relu with a skip every 10 nodes."""
    nodes, prev, skip = [], "x", "x"
    for i in range(n):
        out = f"t{i}"
        if i % 10 == 9:
            nodes.append(helper.make_node("Add", [prev, skip], [out], name=f"n{i}"))
            skip = out
        elif i % 2:
            nodes.append(helper.make_node("Relu", [prev], [out], name=f"n{i}"))
        else:
            nodes.append(helper.make_node("Mul", [prev, "w"], [out], name=f"n{i}"))
        prev = out
    graph = helper.make_graph(
        nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info(prev, TensorProto.FLOAT, [1, 64])],
        initializer=[helper.make_tensor("w", TensorProto.FLOAT, [1], [0.5])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_planning_5000_nodes(tmp_path, record_property):
    path = tmp_path / "big.onnx"
    onnx.save(_chain_model(5000), str(path))
    t0 = time.perf_counter()
    planned = plan_model(path, device=load_device("raspberry-pi-4"), network=load_network("lte"),
                         cloud=load_cloud(), measure=False)
    seconds = time.perf_counter() - t0
    record_property("planning_5000_nodes_s", seconds)
    print(f"planning 5000 nodes: {seconds:.2f} s ({len(planned.candidates)} candidates)")
    assert planned.chosen in planned.candidates
    assert math.isinf(planned.envelope[-1].max_mbps)
    json.dumps(planned.explain())
