"""Fixtures for the cloud endpoint: a real model repository, real certificates, real servers.

Models are built here with onnx.helper so every test knows their exact shapes:

    tiny_cnn   v1, v2   x FP32 [1,3,32,32] -> logits FP32 [1,10], features FP32 [1,8]
    dyn_mlp    v1       x FP32 [batch,16]  -> y FP32 [batch,4]
    scale_by   v1       x FP32 [n,4], k INT64 [n,4] -> y = x * k FP32 [n,4], k2 = 2k INT64 [n,4]
                        (x and k must agree on n: the graph, not the metadata, rejects it)
    broken     v1       not an ONNX file: listed as not ready, the others still serve
    empty               no version folder

Servers listen on 127.0.0.1 port 0 with TLS (and mutual TLS) from edgecut.protocol.pki.
tests/ is not a package, so helpers reach test modules as fixtures.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgecut.cloud.native_server import available as native_available
from edgecut.cloud.native_server import unavailable_reason as native_unavailable_reason
from edgecut.cloud.server import EndpointServer, create_server
from edgecut.protocol import grpc_service_pb2 as pb
from edgecut.protocol.grpc_service_pb2_grpc import GRPCInferenceServiceStub
from edgecut.protocol.pki import init_ca, issue_device_certificate
from edgecut.protocol.tls import channel_credentials

DEVICE = "pi4-kitchen"
CALL_TIMEOUT_S = 10.0
CNN_SHAPE = (1, 3, 32, 32)


def _init(name: str, array: np.ndarray) -> TensorProto:
    return numpy_helper.from_array(array, name)


def _model(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def tiny_cnn(seed: int) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    f32 = np.float32
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c"], ["r"]),
            helper.make_node("GlobalAveragePool", ["r"], ["p"]),
            helper.make_node("Flatten", ["p"], ["features"]),
            helper.make_node("Gemm", ["features", "fc_w", "fc_b"], ["logits"], transB=1),
        ],
        "tiny_cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(CNN_SHAPE))],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10]),
            helper.make_tensor_value_info("features", TensorProto.FLOAT, [1, 8]),
        ],
        [
            _init("w", rng.normal(size=(8, 3, 3, 3)).astype(f32)),
            _init("fc_w", rng.normal(size=(10, 8)).astype(f32)),
            _init("fc_b", rng.normal(size=(10,)).astype(f32)),
        ],
    )
    return _model(graph)


def dyn_mlp() -> onnx.ModelProto:
    rng = np.random.default_rng(7)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["h"]),
            helper.make_node("Add", ["h", "b"], ["y"]),
        ],
        "dyn_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        [
            _init("w", rng.normal(size=(16, 4)).astype(np.float32)),
            _init("b", rng.normal(size=(4,)).astype(np.float32)),
        ],
    )
    return _model(graph)


def scale_by() -> onnx.ModelProto:
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["k"], ["kf"], to=TensorProto.FLOAT),
            helper.make_node("Mul", ["x", "kf"], ["y"]),
            helper.make_node("Add", ["k", "k"], ["k2"]),
        ],
        "scale_by",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4]),
            helper.make_tensor_value_info("k", TensorProto.INT64, ["m", 4]),
        ],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4]),
            helper.make_tensor_value_info("k2", TensorProto.INT64, ["m", 4]),
        ],
    )
    return _model(graph)


def _save(repo: Path, name: str, version: int, model: onnx.ModelProto) -> None:
    folder = repo / name / str(version)
    folder.mkdir(parents=True)
    onnx.save(model, folder / "model.onnx")


@pytest.fixture(scope="session")
def model_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("models")
    _save(repo, "tiny_cnn", 1, tiny_cnn(1))
    _save(repo, "tiny_cnn", 2, tiny_cnn(2))
    # Both versions served (Triton's default policy would serve only the latest), and a
    # non-version folder, which is ignored.
    (repo / "tiny_cnn" / "config.pbtxt").write_text(
        'platform: "onnxruntime_onnx"\nversion_policy: { all {} }\n')
    (repo / "tiny_cnn" / "notes").mkdir()
    _save(repo, "dyn_mlp", 1, dyn_mlp())
    _save(repo, "scale_by", 1, scale_by())
    (repo / "broken" / "1").mkdir(parents=True)
    (repo / "broken" / "1" / "model.onnx").write_bytes(b"this is not an onnx file")
    (repo / "empty").mkdir()
    return repo


@pytest.fixture(scope="session")
def reference(model_repo: Path) -> Callable[..., list[np.ndarray]]:
    """run(model, version, feeds, outputs=None): onnxruntime directly, for comparison."""
    sessions: dict[tuple[str, int], ort.InferenceSession] = {}

    def run(model: str, version: int, feeds: dict[str, np.ndarray],
            outputs: list[str] | None = None) -> list[np.ndarray]:
        key = (model, version)
        if key not in sessions:
            path = model_repo / model / str(version) / "model.onnx"
            sessions[key] = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return list(sessions[key].run(outputs, feeds))

    return run


@dataclass(frozen=True)
class Fleet:
    directory: Path
    device: str

    @property
    def ca(self) -> Path:
        return self.directory / "ca.crt"

    @property
    def cert(self) -> Path:
        return self.directory / f"{self.device}.crt"

    @property
    def key(self) -> Path:
        return self.directory / f"{self.device}.key"


@pytest.fixture(scope="session")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Fleet:
    directory = tmp_path_factory.mktemp("fleet")
    init_ca(directory)
    issue_device_certificate(directory, DEVICE)
    return Fleet(directory=directory, device=DEVICE)


@pytest.fixture(scope="session")
def other_fleet(tmp_path_factory: pytest.TempPathFactory) -> Fleet:
    """An unrelated CA with a device of the same name: its certificates must not pass."""
    directory = tmp_path_factory.mktemp("other-fleet")
    init_ca(directory)
    issue_device_certificate(directory, DEVICE)
    return Fleet(directory=directory, device=DEVICE)


@pytest.fixture(scope="session", params=["native", "core", "grpcio"])
def frontend(request: pytest.FixtureRequest) -> str:
    """The endpoint's transport (create_server's `frontend`): the shared server fixtures, and
    the tests that ask for it, run over each."""
    if request.param == "native" and not native_available():
        pytest.skip(f"the native transport is not built here: {native_unavailable_reason()}")
    return str(request.param)


def _running(server: EndpointServer) -> Iterator[EndpointServer]:
    server.start()
    try:
        yield server
    finally:
        server.stop(grace_s=1.0)


@pytest.fixture(scope="session")
def tls_server(model_repo: Path, fleet: Fleet, frontend: str) -> Iterator[EndpointServer]:
    """Server-authenticated TLS; any client that trusts the CA may call."""
    yield from _running(create_server(model_repo, tls_dir=fleet.directory, workers=4,
                                      frontend=frontend))


@pytest.fixture(scope="session")
def mtls_server(model_repo: Path, fleet: Fleet, frontend: str) -> Iterator[EndpointServer]:
    """Mutual TLS: only devices with a certificate from the fleet's CA."""
    yield from _running(create_server(model_repo, tls_dir=fleet.directory, mutual_tls=True,
                                      workers=4, frontend=frontend))


@pytest.fixture(scope="session")
def small_limit_server(model_repo: Path, fleet: Fleet,
                       frontend: str) -> Iterator[EndpointServer]:
    """TLS with a 1 MiB message limit."""
    yield from _running(create_server(model_repo, tls_dir=fleet.directory,
                                      max_message_bytes=1 << 20, workers=2,
                                      frontend=frontend))


@pytest.fixture
def open_channel(fleet: Fleet) -> Iterator[Callable[..., grpc.Channel]]:
    """open_channel(server, credentials=None): a secure channel closed after the test."""
    channels: list[grpc.Channel] = []

    def open_(server: EndpointServer,
              credentials: grpc.ChannelCredentials | None = None) -> grpc.Channel:
        creds = credentials or channel_credentials(fleet.directory, device=fleet.device)
        options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
        channel = grpc.secure_channel(f"127.0.0.1:{server.port}", creds, options=options)
        channels.append(channel)
        return channel

    yield open_
    for channel in channels:
        channel.close()


@pytest.fixture
def tls_stub(tls_server: EndpointServer,
             open_channel: Callable[..., grpc.Channel]) -> GRPCInferenceServiceStub:
    return GRPCInferenceServiceStub(open_channel(tls_server))


@pytest.fixture(scope="session")
def cnn_input() -> np.ndarray:
    return np.random.default_rng(0).normal(size=CNN_SHAPE).astype(np.float32)


@pytest.fixture(scope="session")
def serves_good_request(
    cnn_input: np.ndarray, reference: Callable[..., list[np.ndarray]]
) -> Callable[[GRPCInferenceServiceStub], None]:
    """check(stub): a plain raw request to tiny_cnn still gets the right answer."""

    def check(stub: GRPCInferenceServiceStub) -> None:
        request = pb.ModelInferRequest(model_name="tiny_cnn")
        request.inputs.add(name="x", datatype="FP32", shape=CNN_SHAPE)
        request.raw_input_contents.append(cnn_input.tobytes())
        response = stub.ModelInfer(request, timeout=CALL_TIMEOUT_S)
        logits = np.frombuffer(response.raw_output_contents[0], np.float32).reshape(1, 10)
        np.testing.assert_allclose(logits, reference("tiny_cnn", 2, {"x": cnn_input})[0],
                                   rtol=1e-5, atol=1e-5)

    return check


@pytest.fixture(scope="session")
def call_timeout_s() -> float:
    return CALL_TIMEOUT_S


# --- Scheduling and operations (batching, back-pressure, drain, metrics, auth) -------------
#
#   wide_mlp    v1   x FP32 [batch,256] -> y FP32 [batch,512]      (row-independent)
#   batch_cnn   v1   x FP32 [batch,3,16,16] -> y FP32 [batch,8,16,16], pooled [batch,8]
#   batch_sum   v1   x FP32 [batch,4] -> total FP32 [1,4]           (NOT row-independent)
#   slow        v1   x FP32 [n,64], iterations INT64 [] -> y: `iterations` rounds of tanh(xW)
#
# `slow` is a real model whose run time the caller sets: back-pressure and drain tests need
# runs that last while other requests arrive.


def wide_mlp() -> onnx.ModelProto:
    rng = np.random.default_rng(11)
    f32 = np.float32
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h"]),
            helper.make_node("Relu", ["h"], ["r"]),
            helper.make_node("MatMul", ["r", "w2"], ["y"]),
        ],
        "wide_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 256])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 512])],
        [_init("w1", rng.normal(size=(256, 1024)).astype(f32) / 16),
         _init("w2", rng.normal(size=(1024, 512)).astype(f32) / 32)],
    )
    return _model(graph)


def batch_cnn() -> onnx.ModelProto:
    rng = np.random.default_rng(12)
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c"], ["y"]),
            helper.make_node("GlobalAveragePool", ["y"], ["p"]),
            helper.make_node("Flatten", ["p"], ["pooled"]),
        ],
        "batch_cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8, 16, 16]),
         helper.make_tensor_value_info("pooled", TensorProto.FLOAT, ["batch", 8])],
        [_init("w", rng.normal(size=(8, 3, 3, 3)).astype(np.float32))],
    )
    return _model(graph)


def batch_sum() -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["x", "axes"], ["total"], keepdims=1)],
        "batch_sum",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("total", TensorProto.FLOAT, [1, 4])],
        [_init("axes", np.array([0], np.int64))],
    )
    return _model(graph)


def slow_model() -> onnx.ModelProto:
    rng = np.random.default_rng(13)
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("MatMul", ["state", "w"], ["m"]),
            helper.make_node("Tanh", ["m"], ["state_out"]),
        ],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("state", TensorProto.FLOAT, ["n", 64])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("state_out", TensorProto.FLOAT, ["n", 64])],
    )
    graph = helper.make_graph(
        [helper.make_node("Loop", ["iterations", "", "x"], ["y"], body=body)],
        "slow",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 64]),
         helper.make_tensor_value_info("iterations", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 64])],
        [_init("w", rng.normal(size=(64, 64)).astype(np.float32) / 8)],
    )
    return _model(graph)


@pytest.fixture(scope="session")
def ops_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("ops-models")
    _save(repo, "wide_mlp", 1, wide_mlp())
    _save(repo, "batch_cnn", 1, batch_cnn())
    _save(repo, "batch_sum", 1, batch_sum())
    _save(repo, "slow", 1, slow_model())
    return repo


@pytest.fixture(scope="module")
def ops_reference(ops_repo: Path) -> Callable[[str, dict[str, np.ndarray]], list[np.ndarray]]:
    """run(model, feeds): the outputs of one of ops_repo's models in onnxruntime, unsplit and
    unbatched, to compare an endpoint's answers with."""
    sessions: dict[str, ort.InferenceSession] = {}

    def run(model: str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        if model not in sessions:
            sessions[model] = ort.InferenceSession(str(ops_repo / model / "1" / "model.onnx"),
                                                   providers=["CPUExecutionProvider"])
        return list(sessions[model].run(None, feeds))

    return run


@pytest.fixture(scope="session")
def slow_iterations(ops_repo: Path) -> Callable[[float], int]:
    """iterations(seconds): how many Loop rounds make `slow` run about that long here, timed
    with the intra-op threads the endpoint gives it (edgecut.cpu_budget): one thread
    runs its small rounds 1.5-3x faster than onnxruntime's default of one per core."""
    from edgecut.cloud.model_config import DEFAULT_CPU_INSTANCES
    from edgecut.cpu_budget import intra_op_threads_for, read_cpu_budget

    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads_for(read_cpu_budget(),
                                                        instances=DEFAULT_CPU_INSTANCES)
    session = ort.InferenceSession(str(ops_repo / "slow" / "1" / "model.onnx"),
                                   sess_options=options, providers=["CPUExecutionProvider"])
    x = np.ones((1, 64), np.float32)
    rounds = 2000
    session.run(None, {"x": x, "iterations": np.array(rounds, np.int64)})
    started = time.perf_counter()
    session.run(None, {"x": x, "iterations": np.array(rounds, np.int64)})
    per_round_s = max((time.perf_counter() - started) / rounds, 1e-7)
    return lambda seconds: max(1, int(seconds / per_round_s))


@pytest.fixture(scope="session")
def two_devices(tmp_path_factory: pytest.TempPathFactory) -> Fleet:
    """A fleet of its own with devices `pi-a` (the Fleet's device) and `pi-b`."""
    directory = tmp_path_factory.mktemp("fleet-two")
    init_ca(directory)
    issue_device_certificate(directory, "pi-a")
    issue_device_certificate(directory, "pi-b")
    return Fleet(directory=directory, device="pi-a")
