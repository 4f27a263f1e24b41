"""The measured correction times parts at the threads the profiles' figures are for."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import onnx
import pytest

from edgecut.partitioner.planner import measuring_threads, plan_model
from edgecut.profiles import CloudProfile, load_device, load_network
from edgecut.profiles.device_profiler import default_threads
from edgecut.zoo import fpn


@pytest.fixture(scope="module")
def fpn_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("m") / "fpn.onnx"
    onnx.save(fpn(), str(path))
    return path


def _device(threads: int | None):
    pi = load_device("raspberry-pi-4")
    return dataclasses.replace(
        pi, name=f"slow-{threads}", threads=threads,
        gflops_by_class={k: v * 0.01 for k, v in pi.gflops_by_class.items()},
        default_gflops=pi.default_gflops * 0.01, memory_gbps=pi.memory_gbps * 0.01)


def test_measuring_threads_are_the_profiles_capped_at_this_machines_cores():
    assert measuring_threads(_device(None)) == 0  # not recorded: onnxruntime's default
    assert measuring_threads(_device(1)) == 1
    assert measuring_threads(_device(10_000)) == default_threads()


def test_heads_and_tails_are_timed_at_their_profiles_threads(fpn_path):
    cloud_threads = min(2, default_threads())
    cloud = CloudProfile(name="two-threads", device=dataclasses.replace(
        _device(cloud_threads), name="cloud"))
    planned = plan_model(fpn_path, device=_device(1), network=load_network("lte"), cloud=cloud,
                         measure=True, measure_budget_s=0.1)
    record = planned.measurement
    assert record is not None and record["complete"]
    assert (record["device_threads"], record["cloud_threads"]) == (1, cloud_threads)
    whole = next(a for a in record["anchors"] if "whole_model" in a)
    # tails are judged against the whole model at the cloud's threads, where those differ
    assert ("whole_model_cloud_threads" in whole) == (cloud_threads != 1)
