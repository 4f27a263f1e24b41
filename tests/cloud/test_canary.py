"""Canary traffic split: exact shares, promote, rollback, and no failed request while switching."""

from __future__ import annotations

import doctest
import importlib.util
import shutil
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from edgecut.cloud import canary
from edgecut.cloud.canary import CanaryRoute
from edgecut.cloud.repository import ModelRepository
from edgecut.cloud.server import create_server
from edgecut.errors import ModelNotFoundError, UserInputError
from edgecut.protocol import grpc_service_pb2 as pb
from edgecut.protocol.grpc_service_pb2_grpc import GRPCInferenceServiceStub

_spec = importlib.util.spec_from_file_location(
    "lifecycle_helpers", Path(__file__).with_name("test_repository_lifecycle.py"))
helpers = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("lifecycle_helpers", helpers)
_spec.loader.exec_module(helpers)
put, scaled, answer = helpers.put, helpers.scaled, helpers.answer


@pytest.fixture
def repo(tmp_path: Path) -> ModelRepository:
    put(tmp_path, "m", 1, scaled(1.0))
    put(tmp_path, "m", 2, scaled(2.0))
    put(tmp_path, "m", 3, scaled(3.0))
    (tmp_path / "m" / "config.pbtxt").write_text("version_policy: { specific: { versions: [1] } }")
    return ModelRepository(tmp_path, intra_op_threads=1)


@pytest.mark.parametrize("percent", [0, 1, 10, 25, 50, 99, 100])
def test_route_shares_are_exact(percent: int) -> None:
    route = CanaryRoute(stable=1, candidate=2, percent=percent)
    assert [route.pick() for _ in range(1000)].count(2) == 10 * percent


def test_docstring_examples() -> None:
    assert doctest.testmod(canary).failed == 0


def test_bad_routes() -> None:
    with pytest.raises(UserInputError, match=r"0\.\.100"):
        CanaryRoute(stable=1, candidate=2, percent=101)
    with pytest.raises(UserInputError, match="already the stable"):
        CanaryRoute(stable=1, candidate=1, percent=5)


def test_canary_promote(repo: ModelRepository) -> None:
    status = repo.start_canary("m", candidate=3, percent=20)
    assert (status.stable, status.candidate, status.percent) == (1, 3, 20)
    answers = [answer(repo, "m") for _ in range(50)]
    assert answers.count(3.0) == 10 and answers.count(1.0) == 40
    assert answer(repo, "m", "1") == 1.0 and answer(repo, "m", "3") == 3.0  # explicit: no split
    assert repo.get("m").version == 1  # metadata sees the stable version
    status = repo.canary_status("m")
    assert status.candidate_traffic.executions == 11 and status.stable_traffic.executions == 41
    repo.poll()  # the poller keeps the canary's versions
    assert repo.ready_versions("m") == (1, 3)
    repo.promote("m")
    assert repo.ready_versions("m") == (3,) and repo.canary_status("m") is None
    assert {answer(repo, "m") for _ in range(10)} == {3.0}
    repo.poll()
    assert repo.ready_versions("m") == (3,)
    repo.load("m")  # an explicit load goes back to the policy
    assert repo.ready_versions("m") == (1,)


def test_canary_rollback_and_change(repo: ModelRepository) -> None:
    repo.start_canary("m", candidate=3, percent=50)
    repo.start_canary("m", candidate=2, percent=50)  # another candidate replaces the first
    assert repo.ready_versions("m") == (1, 2)
    assert sorted(answer(repo, "m") for _ in range(4)) == [1.0, 1.0, 2.0, 2.0]
    repo.rollback("m")
    assert repo.ready_versions("m") == (1,)
    assert {answer(repo, "m") for _ in range(10)} == {1.0}
    with pytest.raises(UserInputError, match="has no canary"):
        repo.promote("m")


def test_rollback_keeps_a_candidate_the_policy_served(tmp_path: Path) -> None:
    """A canary of a version already served (policy `all`) only routes to it: rolling back,
    or moving the canary to another candidate, leaves it served."""
    for v in (1, 2, 3):
        put(tmp_path, "m", v, scaled(float(v)))
    (tmp_path / "m" / "config.pbtxt").write_text("version_policy: { all {} }")
    repo = ModelRepository(tmp_path, intra_op_threads=1)
    repo.start_canary("m", candidate=2, percent=20)
    repo.rollback("m")
    assert repo.ready_versions("m") == (1, 2, 3)
    repo.start_canary("m", candidate=2, percent=20)
    repo.start_canary("m", candidate=1, percent=20)
    assert repo.ready_versions("m") == (1, 2, 3)
    assert answer(repo, "m", "2") == 2.0


def test_poll_after_rollback_takes_a_new_release_and_outlives_the_pinned_version(
        tmp_path: Path) -> None:
    """In poll mode the versions a rollback or promote pinned stay until a version folder
    not seen then appears (a release: the policy applies again), or none of them is left
    on disk; a pinned version's removal never leaves the model without versions."""
    for v in (1, 2, 3):
        put(tmp_path, "m", v, scaled(float(v)))
    repo = ModelRepository(tmp_path, intra_op_threads=1, control_mode="poll",
                           poll_interval_s=3600)
    try:
        assert repo.ready_versions("m") == (3,)
        repo.start_canary("m", candidate=2, percent=20)
        repo.rollback("m")
        repo.poll()
        assert repo.ready_versions("m") == (3,)  # the rolled-back version is not picked up
        put(tmp_path, "m", 4, scaled(4.0))
        repo.poll()
        assert repo.ready_versions("m") == (4,)
        repo.start_canary("m", candidate=1, percent=20)
        repo.promote("m")
        assert repo.ready_versions("m") == (1,)
        shutil.rmtree(tmp_path / "m" / "1")
        repo.poll()
        assert repo.ready_versions("m") == (4,)
        assert answer(repo, "m") == 4.0
    finally:
        repo.close()


def test_load_takes_only_folder_names_in_the_repository(tmp_path: Path) -> None:
    put(tmp_path / "repo", "m", 1, scaled(1.0))
    put(tmp_path, "outside", 1, scaled(7.0))
    repo = ModelRepository(tmp_path / "repo", intra_op_threads=1)
    for name in ("../outside", str(tmp_path / "outside"), "m/../m", "m/1", "..", ""):
        with pytest.raises(UserInputError, match="must be a folder name in the repository"):
            repo.load(name)
    assert [r.name for r in repo.models()] == ["m"]


def test_broken_candidate_changes_nothing(repo: ModelRepository, tmp_path: Path) -> None:
    put(tmp_path, "m", 4, b"broken")
    with pytest.raises(Exception, match="cannot be loaded"):
        repo.start_canary("m", candidate=4, percent=10)
    with pytest.raises(ModelNotFoundError,
                       match=r"'m' has no version 9 on disk \(version folders: 1, 2, 3, 4\)"):
        repo.start_canary("m", candidate=9, percent=10)
    assert repo.canary_status("m") is None and repo.ready_versions("m") == (1,)


def test_no_failed_request_while_switching_under_load(repo: ModelRepository,
                                                      frontend: str) -> None:
    server = create_server(repo, workers=8, frontend=frontend)
    server.start()
    stop = threading.Event()
    failures: list[str] = []
    seen: set[str] = set()
    counts = [0]
    lock = threading.Lock()

    def client() -> None:
        with grpc.insecure_channel(server.address) as channel:
            stub = GRPCInferenceServiceStub(channel)
            request = pb.ModelInferRequest(model_name="m")
            request.inputs.add(name="x", datatype="FP32", shape=[1, 4])
            request.raw_input_contents.append(np.ones((1, 4), np.float32).tobytes())
            while not stop.is_set():
                try:
                    response = stub.ModelInfer(request, timeout=10)
                    with lock:
                        seen.add(response.model_version)
                        counts[0] += 1
                except grpc.RpcError as exc:
                    with lock:
                        failures.append(f"{exc.code()}: {exc.details()}")

    threads = [threading.Thread(target=client) for _ in range(4)]
    try:
        for t in threads:
            t.start()
        for _ in range(5):
            repo.start_canary("m", candidate=3, percent=30)
            time.sleep(0.05)
            repo.start_canary("m", candidate=2, percent=60)
            time.sleep(0.05)
            repo.rollback("m")
            time.sleep(0.05)
            repo.start_canary("m", candidate=3, percent=50)
            time.sleep(0.05)
            repo.promote("m")
            time.sleep(0.05)
            repo.load("m")
            time.sleep(0.05)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
        server.stop(grace_s=1.0)
    assert failures == []
    assert counts[0] > 20 and seen == {"1", "2", "3"}
