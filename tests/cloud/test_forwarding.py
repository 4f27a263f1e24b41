"""Served slices that forward: every 2-cut chain of two zoo models, as three real processes.

The device is this process (stage 0 in onnxruntime, then one ModelInfer to the helper);
the helper and the cloud are `python -m edgecut serve` processes over mutual TLS. The
helper's repository holds stage 1 of every chain with its forward.json (written by
`write_forward_spec`, as `edgecut chain deploy` writes it), the cloud's stage 2. Every
answer must equal the full model's outputs.
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.harness.endpoint import EndpointProcess  # noqa: E402
from edgecut.cloud.forwarding import (  # noqa: E402
    FORWARD_FILE,
    ForwardSpec,
    load_forward_spec,
    oip_spec,
    write_forward_spec,
)
from edgecut.edge.client import CloudClient  # noqa: E402
from edgecut.errors import BadModelError, CloudUnavailableError  # noqa: E402
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
