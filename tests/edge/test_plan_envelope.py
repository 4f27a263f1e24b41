"""The device's plan reader: the envelope and `Plan.cut_for_bandwidth`."""

from __future__ import annotations

import json
import math

import pytest

from edgecut.edge.plan import load_plan
from edgecut.errors import BadPlanError
from edgecut.partitioner import write_plan
from edgecut.partitioner.envelope import cut_for_bandwidth, lower_envelope


@pytest.fixture()
def plan_dir(tmp_path):
    import onnx

    from edgecut.zoo import chain_cnn

    onnx.save(chain_cnn(), str(tmp_path / "m.onnx"))
    env = lower_envelope([(0, 50.0, 800.0), (1, 20.0, 2000.0), (2, 90.0, 0.0)])
    write_plan(tmp_path / "m.onnx", tmp_path / "p", cut_ids=[0, 1, 2], chosen=1,
               fields={"envelope": [s.to_json() for s in env]})
    return tmp_path / "p", env


def test_cut_for_bandwidth_agrees_with_the_envelope(plan_dir):
    folder, env = plan_dir
    plan = load_plan(folder)
    assert math.isinf(plan.envelope[-1].max_mbps)
    for bw in [0.0, 1.0, 19.9, 20.0, 30.0, 40.0, 41.0, 1e9]:
        assert plan.cut_for_bandwidth(bw) == cut_for_bandwidth(env, bw)


def test_a_broken_envelope_is_reported(plan_dir):
    folder, _ = plan_dir
    doc = json.loads((folder / "plan.json").read_text())
    doc["envelope"][1]["min_mbps"] = 25.0
    (folder / "plan.json").write_text(json.dumps(doc))
    with pytest.raises(BadPlanError, match="envelope"):
        load_plan(folder)
