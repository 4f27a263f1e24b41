"""Shared fixtures: a real plan (fpn, every cut), a fleet's certificates, a real mTLS endpoint.

The partitioner, the zoo and the cloud endpoint are imported here, by the tests, never by
edgecut.edge itself.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import onnx
import pytest

from edgecut.cloud.server import EndpointServer, create_server
from edgecut.deploy import deploy_plan
from edgecut.partitioner import write_plan
from edgecut.protocol.pki import init_ca, issue_device_certificate
from edgecut.zoo import ZOO, sample_inputs

DEVICE = "edge-test"
MODEL = "fpn"  # three outputs, so cuts with outputs on both sides exist


@pytest.fixture(scope="session")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("model") / f"{MODEL}.onnx"
    onnx.save(ZOO[MODEL](), str(path))
    return path


@pytest.fixture(scope="session")
def feed(model_path: Path) -> dict:
    return sample_inputs(onnx.load(str(model_path)))


@pytest.fixture(scope="session")
def plan_dir(tmp_path_factory: pytest.TempPathFactory, model_path: Path) -> Path:
    directory = tmp_path_factory.mktemp("plan")
    write_plan(model_path, directory, chosen=3)
    return directory


@pytest.fixture
def plan_copy(plan_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the plan folder for tests that break it."""
    return Path(shutil.copytree(plan_dir, tmp_path / "plan"))


@pytest.fixture(scope="session")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("fleet")
    init_ca(directory)
    issue_device_certificate(directory, DEVICE)
    return directory


@pytest.fixture(scope="session")
def endpoint_server(tmp_path_factory: pytest.TempPathFactory, plan_dir: Path,
                    fleet: Path) -> Iterator[EndpointServer]:
    repository = tmp_path_factory.mktemp("repo")
    deploy_plan(plan_dir, repository)
    server = create_server(repository, tls_dir=fleet, mutual_tls=True, workers=2,
                           intra_op_threads=1)
    server.start()
    yield server
    server.stop(grace_s=1.0)


@pytest.fixture(scope="session")
def endpoint(endpoint_server: EndpointServer) -> str:
    return f"localhost:{endpoint_server.port}"


@pytest.fixture(scope="session")
def free_port() -> Callable[[], int]:
    def pick() -> int:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])
    return pick
