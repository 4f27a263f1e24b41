"""Served slices that forward: every 2-cut chain of two zoo models, as three real processes.

The device is this process (stage 0 in onnxruntime, then one ModelInfer to the helper);
the helper and the cloud are `python -m edgecut serve` processes over mutual TLS. The
helper's repository holds stage 1 of every chain with its forward.json (written by
`write_forward_spec`, as `edgecut chain deploy` writes it), the cloud's stage 2. Every
answer must equal the full model's outputs.

Then what a hop carries on: the request's id and the caller's deadline. The helper and the
cloud are endpoints in this process (each transport for the helper, gRPC and HTTP), the
device a client over mutual TLS; what reached the last hop is read from the endpoints'
request logs (edgecut.cloud.requests). A cloud model whose batch waits 20 s for company
stands for a slow next hop.
"""

from __future__ import annotations

import http.client
import itertools
import json
import logging
import ssl
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.harness.endpoint import EndpointProcess  # noqa: E402
from edgecut.cloud.batching import SchedulingPolicy  # noqa: E402
from edgecut.cloud.forwarding import (  # noqa: E402
    FORWARD_FILE,
    ForwardSpec,
    NextHop,
    load_forward_spec,
    oip_spec,
    write_forward_spec,
)
from edgecut.cloud.loaded_model import TensorSpec  # noqa: E402
from edgecut.cloud.logs import REQUEST_LOGGER  # noqa: E402
from edgecut.cloud.native_server import available as native_available  # noqa: E402
from edgecut.cloud.server import EndpointServer, create_server  # noqa: E402
from edgecut.edge.client import CloudClient  # noqa: E402
from edgecut.errors import (  # noqa: E402
    BadModelError,
    CloudUnavailableError,
    DeadlineExceededError,
)
from edgecut.partitioner.chain_extract import chain_slices  # noqa: E402
from edgecut.partitioner.graph import analyse_graph  # noqa: E402
from edgecut.partitioner.runtime import compare_outputs, tolerance_for  # noqa: E402
from edgecut.partitioner.shapes import resolve_tensors, run_on_samples  # noqa: E402
from edgecut.protocol.pki import init_ca, issue_device_certificate  # noqa: E402
from edgecut.zoo import ZOO  # noqa: E402

MODELS = ("if_model", "fpn")  # an If reading outer values; outputs made by every hop
DEVICE, HELPER = "device-0", "helper-1"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("chain-fleet")
    init_ca(directory)
    for name in (DEVICE, HELPER):
        issue_device_certificate(directory, name)
    return directory


def _dtype(vi: onnx.ValueInfoProto) -> str:
    return str(onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type))


def _shape(vi: onnx.ValueInfoProto) -> list[int]:
    return [d.dim_value if d.HasField("dim_value") else -1 for d in vi.type.tensor_type.shape.dim]


def _save(repository: Path, name: str, model: onnx.ModelProto) -> Path:
    folder = repository / name
    (folder / "1").mkdir(parents=True)
    onnx.save(model, str(folder / "1" / "model.onnx"))
    (folder / "config.pbtxt").write_text(f'name: "{name}"\nplatform: "onnxruntime_onnx"\n')
    return folder


class Chains:
    """Every chain 0 < p1 < p2 < N of the models, split into device, helper and cloud parts."""

    def __init__(self, root: Path) -> None:
        self.helper_repo, self.cloud_repo = root / "helper", root / "cloud"
        self.cases: list[tuple[str, ort.InferenceSession, list, dict, dict, list[str],
                               tuple[str, ...]]] = []
        self.pending: list[tuple[str, object, tuple[str, ...], tuple]] = []
        for model_name in MODELS:
            model = ZOO[model_name]()
            info = analyse_graph(model)
            tensors = resolve_tensors(model, None)
            feeds, full = run_on_samples(model, None, seed=1)
            outputs = {vi.name: vi for vi in model.graph.output}
            n = len(info.order)
            for p1, p2 in itertools.combinations(range(1, n), 2):
                name = f"{model_name}_{p1}_{p2}"
                device, helper, cloud = chain_slices(model, (p1, p2), graph=info,
                                                     tensors=tensors)
                _save(self.cloud_repo, f"{name}.s2", cloud.model)
                helper_dir = _save(self.helper_repo, f"{name}.s1", helper.model)
                answered = [*helper.returns, *cloud.returns]
                specs = tuple(oip_spec(o, _dtype(outputs[o]), _shape(outputs[o]))
                              for o in answered)
                self.pending.append((name, helper_dir, helper.sends, (helper.returns, specs)))
                session = ort.InferenceSession(device.model.SerializeToString(),
                                               providers=["CPUExecutionProvider"])
                self.cases.append((name, session, list(device.returns), feeds, full, answered,
                                   helper.receives))

    def write_forwards(self, cloud_address: str, tls_dir: Path) -> None:
        for name, helper_dir, sends, (returns, specs) in self.pending:
            write_forward_spec(helper_dir, ForwardSpec(  # type: ignore[arg-type]
                next_endpoints=(cloud_address,), next_model=f"{name}.s2", sends=sends,
                returns=returns, outputs=specs, tls_dir=tls_dir, device=HELPER,
                codec="shuffle_zstd", timeout_s=10.0))


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, fleet: Path
           ) -> Iterator[tuple[Chains, EndpointProcess]]:
    root = tmp_path_factory.mktemp("chains")
    chains = Chains(root)
    logs = root / "logs"
    logs.mkdir()
    cloud = EndpointProcess(chains.cloud_repo, fleet, log_dir=logs, device=DEVICE, name="cloud",
                            extra_args=["--frontend", "grpcio"])
    cloud.start()
    try:
        chains.write_forwards(cloud.address, fleet)
        helper = EndpointProcess(chains.helper_repo, fleet, log_dir=logs, device=DEVICE,
                                 name="helper", extra_args=["--frontend", "grpcio"])
        helper.start()
        try:
            yield chains, helper
        finally:
            helper.stop()
    finally:
        cloud.stop()


def test_every_two_cut_chain_equals_the_full_model(served: tuple[Chains, EndpointProcess],
                                                   fleet: Path) -> None:
    chains, helper = served
    assert len(chains.cases) == sum(
        (n - 1) * (n - 2) // 2 for n in (len(analyse_graph(ZOO[m]()).order) for m in MODELS))
    with CloudClient(helper.address, tls_dir=fleet, device=DEVICE, timeout_s=10.0) as client:
        for name, session, device_returns, feeds, full, answered, receives in chains.cases:
            wanted = [i.name for i in session.get_inputs()]
            values = dict(zip([o.name for o in session.get_outputs()],
                              session.run(None, {n: feeds[n] for n in wanted}), strict=True))
            request = {n: values[n] for n in receives}
            result = client.infer(f"{name}.s1", request, outputs=answered, codec="shuffle_zstd")
            got = {**{n: values[n] for n in device_returns}, **result.outputs}
            diffs = compare_outputs(full, got)
            assert max(diffs.values()) <= tolerance_for(full), (name, diffs)


def test_a_next_hop_that_is_down_answers_unavailable(served: tuple[Chains, EndpointProcess],
                                                     fleet: Path, tmp_path: Path) -> None:
    chains, _ = served
    name, helper_dir, sends, (returns, specs) = chains.pending[0]
    repo = tmp_path / "repo"
    target = repo / f"{name}.s1"
    (target / "1").mkdir(parents=True)
    (target / "1" / "model.onnx").write_bytes(
        (Path(str(helper_dir)) / "1" / "model.onnx").read_bytes())
    write_forward_spec(target, ForwardSpec(next_endpoints=("127.0.0.1:1",),
                                           next_model=f"{name}.s2", sends=sends, returns=returns,
                                           outputs=specs, tls_dir=fleet, device=HELPER,
                                           timeout_s=2.0))
    _, session, _, feeds, _, answered, receives = chains.cases[0]
    wanted = [i.name for i in session.get_inputs()]
    values = dict(zip([o.name for o in session.get_outputs()],
                      session.run(None, {n: feeds[n] for n in wanted}), strict=True))
    with EndpointProcess(repo, fleet, log_dir=tmp_path, device=DEVICE, name="lonely",
                         extra_args=["--frontend", "grpcio"]) as lonely, \
            CloudClient(lonely.address, tls_dir=fleet, device=DEVICE, timeout_s=10.0) as client, \
            pytest.raises(CloudUnavailableError, match="next hop"):
        client.infer(f"{name}.s1", {n: values[n] for n in receives}, outputs=answered)


def test_a_forward_file_that_is_not_one_says_so(tmp_path: Path) -> None:
    (tmp_path / FORWARD_FILE).write_text('{"format": "other"}')
    with pytest.raises(BadModelError, match="edgecut chain deploy"):
        load_forward_spec(tmp_path)
    assert load_forward_spec(tmp_path / "absent") is None
    with pytest.raises(BadModelError, match="next endpoints"):
        ForwardSpec(next_endpoints=("nowhere",), next_model="m", sends=(), returns=(),
                    outputs=())


def test_oip_specs_from_plan_dtypes() -> None:
    spec = oip_spec("y", "float32", [1, "N", None])
    assert (spec.datatype, spec.shape) == ("FP32", (1, -1, -1))
    assert np.dtype("float32").name == "float32"


# --- What a hop carries on: the request's id and the caller's deadline ----------------------

HOP_TIMEOUT_S = 30.0  # forward.json's timeout_s: what a hop waited before ids and deadlines
SLOW_DELAY_US = 20_000_000  # a lone request's wait for a batch on the slow last hop
WAIT_S = 10.0  # how long a test waits for a log line (well under the slow hop's 20 s)


def _graph(name: str, op: str, x: str, y: str, k: float) -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node(op, [x, "k"], [y])], name,
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info(y, TensorProto.FLOAT, ["n", 4])],
        [onnx.numpy_helper.from_array(np.array(k, dtype=np.float32), "k")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _hop_repos(root: Path) -> tuple[Path, Path]:
    """The helper's slices (x -> y = x + 1, sent on) and the cloud's (y -> z = 2 y)."""
    helper_repo, cloud_repo = root / "helper", root / "cloud"
    for name in ("last", "last_slow"):
        _save(cloud_repo, name, _graph(name, "Mul", "y", "z", 2.0))
    for name in ("hop", "hop_slow", "hop_pair"):
        _save(helper_repo, name, _graph(name, "Add", "x", "y", 1.0))
    return helper_repo, cloud_repo


def _forward_all(helper_repo: Path, cloud_address: str, tls_dir: Path) -> None:
    for name, after in (("hop", "last"), ("hop_slow", "last_slow"), ("hop_pair", "last_slow")):
        write_forward_spec(helper_repo / name, ForwardSpec(
            next_endpoints=(cloud_address,), next_model=after, sends=("y",), returns=(),
            outputs=(TensorSpec(name="z", datatype="FP32", shape=(-1, 4)),), tls_dir=tls_dir,
            device=HELPER, timeout_s=HOP_TIMEOUT_S))


class RequestLines(logging.Handler):
    """Every request log line of this process's endpoints, as its fields."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        fields = getattr(record, "edgecut_fields", None)
        if isinstance(fields, dict):
            with self._lock:
                self.lines.append(dict(fields))

    def count(self) -> int:
        with self._lock:
            return len(self.lines)

    def matching(self, what: Callable[[dict[str, Any]], bool], *, after: int = 0
                 ) -> list[dict[str, Any]]:
        """The lines from the `after`-th on that `what` holds for."""
        with self._lock:
            return [line for line in self.lines[after:] if what(line)]

    def wait_for(self, what: Callable[[dict[str, Any]], bool], *, after: int = 0
                 ) -> dict[str, Any]:
        """The first line from the `after`-th on that `what` holds for, waited for up to
        WAIT_S."""
        deadline = time.monotonic() + WAIT_S
        while True:
            found = self.matching(what, after=after)
            if found:
                return found[0]
            if time.monotonic() > deadline:
                with self._lock:
                    raise AssertionError(f"no such request log line within {WAIT_S} s; "
                                         f"lines: {self.lines}")
            time.sleep(0.02)


@pytest.fixture(scope="module")
def request_lines() -> Iterator[RequestLines]:
    logger = logging.getLogger(REQUEST_LOGGER)
    handler, level = RequestLines(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


@pytest.fixture(scope="module")
def hop_repos(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return _hop_repos(tmp_path_factory.mktemp("hops"))


@pytest.fixture(scope="module")
def last_hop(hop_repos: tuple[Path, Path], fleet: Path,
             request_lines: RequestLines) -> Iterator[EndpointServer]:
    slow = SchedulingPolicy(max_batch_size=8, dynamic_batching=True, preferred_batch_sizes=(8,),
                            max_queue_delay_us=SLOW_DELAY_US)
    with create_server(hop_repos[1], tls_dir=fleet, mutual_tls=True, workers=8,
                       frontend="grpcio", scheduling={"last_slow": slow}) as server:
        yield server


@pytest.fixture(scope="module", params=["native", "grpcio"])
def helper_hop(request: pytest.FixtureRequest, hop_repos: tuple[Path, Path], fleet: Path,
               last_hop: EndpointServer) -> Iterator[EndpointServer]:
    """The helper endpoint over each gRPC transport (the native one groups plain calls in
    its infer lane), with HTTP beside it."""
    if request.param == "native" and not native_available():
        pytest.skip("the native transport is not built here")
    _forward_all(hop_repos[0], last_hop.address, fleet)
    pair = SchedulingPolicy(max_batch_size=2, dynamic_batching=True, preferred_batch_sizes=(2,),
                            max_queue_delay_us=10_000_000)
    with create_server(hop_repos[0], tls_dir=fleet, mutual_tls=True, workers=8,
                       frontend=request.param, scheduling={"hop_pair": pair},
                       http_address="127.0.0.1:0") as server:
        yield server


@pytest.fixture
def device(helper_hop: EndpointServer, fleet: Path) -> Iterator[CloudClient]:
    with CloudClient(helper_hop.address, tls_dir=fleet, device=DEVICE,
                     timeout_s=HOP_TIMEOUT_S) as client:
        yield client


def _x(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((1, 4)).astype(np.float32)


def _at(model: str, request_id: str | None) -> Callable[[dict[str, Any]], bool]:
    """Lines of `model`'s calls with `request_id` (None: calls without one)."""
    return lambda line: line.get("model") == model and line.get("id") == request_id


def test_the_request_id_reaches_the_last_hop(helper_hop: EndpointServer, device: CloudClient,
                                             request_lines: RequestLines) -> None:
    request_id = f"abc-1-{helper_hop.frontend}"
    x = _x(1)
    result = device.infer("hop", {"x": x}, outputs=["z"], request_id=request_id)
    np.testing.assert_allclose(result.outputs["z"], 2 * (x + 1), rtol=1e-6)
    assert request_lines.wait_for(_at("hop", request_id))["status"] == "OK"
    last = request_lines.wait_for(_at("last", request_id))
    assert last["status"] == "OK" and last["device"] == HELPER
    # Without an id, none is made up on the way.
    before = request_lines.count()
    device.infer("hop", {"x": _x(2)}, outputs=["z"])
    assert request_lines.wait_for(_at("last", None), after=before)["status"] == "OK"


def test_the_request_id_of_an_http_call_reaches_the_last_hop(
        helper_hop: EndpointServer, fleet: Path, request_lines: RequestLines) -> None:
    request_id = f"http-7-{helper_hop.frontend}"
    x = _x(3)
    body = json.dumps({"id": request_id, "outputs": [{"name": "z"}],
                       "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4],
                                   "data": x.ravel().tolist()}]}).encode()
    context = ssl.create_default_context(cafile=str(fleet / "ca.crt"))
    context.load_cert_chain(str(fleet / f"{DEVICE}.crt"), str(fleet / f"{DEVICE}.key"))
    connection = http.client.HTTPSConnection("127.0.0.1", helper_hop.http_port,
                                             context=context, timeout=HOP_TIMEOUT_S)
    try:
        connection.request("POST", "/v2/models/hop/infer", body=body,
                           headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        status, answer = response.status, json.loads(response.read())
    finally:
        connection.close()
    assert status == 200, answer
    assert answer["id"] == request_id
    np.testing.assert_allclose(answer["outputs"][0]["data"], (2 * (x + 1)).ravel(), rtol=1e-6)
    assert request_lines.wait_for(_at("last", request_id))["status"] == "OK"


def test_a_short_deadline_is_kept_by_every_hop(helper_hop: EndpointServer, device: CloudClient,
                                               request_lines: RequestLines) -> None:
    """The last hop holds a lone request 20 s for a batch: a caller that gives 1 s is
    answered DEADLINE_EXCEEDED by then, and the last hop gave up by then too (it got the
    deadline), where forward.json's 30 s would have kept it waiting for its batch."""
    request_id = f"slow-{helper_hop.frontend}"
    started = time.monotonic()
    with pytest.raises(DeadlineExceededError):
        device.infer("hop_slow", {"x": _x(4)}, outputs=["z"], request_id=request_id,
                     timeout_s=1.0)
    assert time.monotonic() - started < HOP_TIMEOUT_S / 2
    last = request_lines.wait_for(_at("last_slow", request_id))
    assert last["status"] != "OK" and last["request_ms"] < HOP_TIMEOUT_S * 1000 / 2, last
    hop = request_lines.wait_for(_at("hop_slow", request_id))
    assert hop["status"] == "DEADLINE_EXCEEDED", hop
    assert "caller's deadline" in hop["message"] and hop["request_ms"] < HOP_TIMEOUT_S * 1000 / 2


def test_a_batch_goes_on_without_an_id_within_its_earliest_deadline(
        helper_hop: EndpointServer, fleet: Path, request_lines: RequestLines) -> None:
    """Two requests the helper runs as one batch (hop_pair waits for a pair): the next hop
    gets one request of two rows, with no id, and the shorter caller's deadline, so the
    longer caller hears within that too."""
    tag = helper_hop.frontend
    ids, timeouts = (f"pair-short-{tag}", f"pair-long-{tag}"), (2.0, HOP_TIMEOUT_S)

    def call(i: int) -> tuple[BaseException | None, float]:
        with CloudClient(helper_hop.address, tls_dir=fleet, device=DEVICE) as client:
            started = time.monotonic()
            try:
                client.infer("hop_pair", {"x": _x(10 + i)}, outputs=["z"], request_id=ids[i],
                             timeout_s=timeouts[i])
            except Exception as exc:
                return exc, time.monotonic() - started
            return None, time.monotonic() - started

    before = request_lines.count()
    with ThreadPoolExecutor(2) as pool:
        outcomes = list(pool.map(call, range(2)))
    for error, took in outcomes:
        assert isinstance(error, DeadlineExceededError), outcomes
        assert took < HOP_TIMEOUT_S / 2, outcomes  # the long caller's 30 s were not waited
    for request_id in ids:
        hop = request_lines.wait_for(_at("hop_pair", request_id), after=before)
        assert hop["status"] == "DEADLINE_EXCEEDED", hop
    last = request_lines.wait_for(_at("last_slow", None), after=before)
    assert last["status"] != "OK" and last["request_ms"] < HOP_TIMEOUT_S * 1000 / 2, last
    # One call for the pair, named by neither id.
    assert len(request_lines.matching(lambda line: line.get("model") == "last_slow",
                                      after=before)) == 1


def test_a_deadline_passed_already_does_not_call_the_next_hop(fleet: Path) -> None:
    """Nothing listens on port 1: a call fails UNAVAILABLE; with a deadline passed already
    the call fails DEADLINE_EXCEEDED before it is made."""
    hop = NextHop(ForwardSpec(next_endpoints=("127.0.0.1:1",), next_model="last", sends=("y",),
                              returns=(), outputs=(), tls_dir=fleet, device=HELPER,
                              timeout_s=HOP_TIMEOUT_S))
    try:
        y = {"y": _x(5)}
        with pytest.raises(DeadlineExceededError, match="not called"):
            hop.infer(y, ["z"], request_id="late-1", deadline=time.monotonic() - 0.1)
        with pytest.raises(CloudUnavailableError, match="UNAVAILABLE"):
            hop.infer(y, ["z"], request_id="late-1")  # called: nobody there
    finally:
        hop.close()


def test_every_instance_of_a_stage_forwards_with_sessions_of_their_own(
        hop_repos: tuple[Path, Path], fleet: Path, last_hop: EndpointServer) -> None:
    """separate_sessions gives each instance a session of its own: each must forward as the
    model's own does, else a run on a second instance lacks the next hop's outputs."""
    _forward_all(hop_repos[0], last_hop.address, fleet)
    two = SchedulingPolicy(instance_count=2)
    with create_server(hop_repos[0], tls_dir=fleet, mutual_tls=True, workers=8,
                       frontend="grpcio", scheduling={"hop": two}, separate_sessions=True
                       ) as server, CloudClient(server.address, tls_dir=fleet, device=DEVICE,
                                                timeout_s=HOP_TIMEOUT_S) as client:
        xs = [_x(seed) for seed in range(24)]
        with ThreadPoolExecutor(max_workers=8) as pool:
            results = list(pool.map(
                lambda x: client.infer("hop", {"x": x}, outputs=["z"]).outputs["z"], xs))
    for x, z in zip(xs, results, strict=True):
        np.testing.assert_allclose(z, 2 * (x + 1), rtol=1e-6)
