"""Per-device authorisation and operators: the rules file, and allow / deny on a real mTLS server."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgecut.cli import EXIT_FAILED, main
from edgecut.cloud.auth import load_authorization, parse_authorization
from edgecut.cloud.management import ModelControl
from edgecut.cloud.server import create_server
from edgecut.errors import BadProfileError, PermissionDeniedError, RemoteError, UserInputError
from edgecut.protocol import grpc_service_pb2 as pb
from edgecut.protocol.grpc_service_pb2_grpc import GRPCInferenceServiceStub
from edgecut.protocol.pki import init_ca, issue_device_certificate
from edgecut.protocol.tls import channel_credentials

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

WAIT_S = 10.0


def test_rules_match_fnmatch_patterns_and_default() -> None:
    rules = parse_authorization(
        {"default": {"models": ["public_*"]},
         "devices": {"pi-a": {"models": ["tiny_cnn*", "dyn_mlp"]}}},
        source="auth.toml")
    assert rules.allows("pi-a", "tiny_cnn.cut3") and rules.allows("pi-a", "dyn_mlp")
    assert not rules.allows("pi-a", "public_x")  # a listed device gets only its own list
    assert rules.allows("pi-z", "public_x") and not rules.allows("pi-z", "dyn_mlp")
    with pytest.raises(PermissionDeniedError) as info:
        rules.check("pi-a", "scale_by")
    assert str(info.value) == (
        "device 'pi-a' may not use model 'scale_by': auth.toml [devices.pi-a] allows "
        "'tiny_cnn*', 'dyn_mlp'")


def test_every_problem_of_a_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "auth.toml"
    path.write_text('[default]\nmodels = "x"\n[devices.pi]\nmodel = ["a"]\n[extra]\n')
    with pytest.raises(BadProfileError) as info:
        load_authorization(path)
    message = str(info.value)
    assert f"{path}: unknown key 'extra'" in message
    assert f"{path}: default.models must be a list of model name patterns" in message
    assert f"{path}: devices.pi.model is not a known key; expected models" in message
    path.write_text("[default\n")
    with pytest.raises(BadProfileError, match=f"{path}: not valid TOML"):
        load_authorization(path)
    assert isinstance(info.value, UserInputError)


def _infer(channel: grpc.Channel, model: str) -> None:
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name="x", datatype="FP32", shape=[1, 16])
    request.raw_input_contents.append(np.zeros((1, 16), np.float32).tobytes())
    GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=WAIT_S)


def test_allow_deny_and_reload_on_a_real_server(model_repo: Path, two_devices: object,
                                                tmp_path: Path) -> None:
    fleet_dir: Path = two_devices.directory  # type: ignore[attr-defined]
    auth = tmp_path / "auth.toml"
    auth.write_text('[default]\nmodels = []\n[devices.pi-a]\nmodels = ["dyn_*"]\n')
    with pytest.raises(UserInputError, match="auth_file needs mutual_tls"):
        create_server(model_repo, auth_file=auth)
    server = create_server(model_repo, tls_dir=fleet_dir, mutual_tls=True, workers=2,
                           auth_file=auth)
    with server, \
            grpc.secure_channel(server.address, channel_credentials(fleet_dir, device="pi-a")) as a, \
            grpc.secure_channel(server.address, channel_credentials(fleet_dir, device="pi-b")) as b:
        _infer(a, "dyn_mlp")
        with pytest.raises(grpc.RpcError) as info:
            _infer(b, "dyn_mlp")
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED  # type: ignore[attr-defined]
        assert info.value.details() == (  # type: ignore[attr-defined]
            f"device 'pi-b' may not use model 'dyn_mlp': {auth} [default] allows no models")
        with pytest.raises(grpc.RpcError) as info:
            GRPCInferenceServiceStub(b).ModelMetadata(pb.ModelMetadataRequest(name="dyn_mlp"),
                                                      timeout=WAIT_S)
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED  # type: ignore[attr-defined]
        # Changed on disk: in force after the next refresh (every poll_interval_s).
        auth.write_text('[default]\nmodels = ["*"]\n')
        os.utime(auth, ns=(1, 1))  # a new mtime even on a coarse clock
        server.refresh()
        _infer(b, "dyn_mlp")
        # A broken edit keeps the rules in force.
        auth.write_text("[default\n")
        server.refresh()
        _infer(b, "dyn_mlp")


# --- Operators: who may load, unload and canary -------------------------------------------

ROOT = Path(__file__).resolve().parents[2]
OPERATOR, DEVICE = "ops-alice", "pi-b"


def test_operators_match_certificate_names_by_pattern() -> None:
    rules = parse_authorization(
        {"devices": {"pi-b": {"models": ["m"]}}, "operators": {"names": ["ops-*", "ci"]}},
        source="auth.toml")
    assert rules.is_operator("ops-alice") and rules.is_operator("ci")
    assert not rules.is_operator("pi-b") and not rules.is_operator("ci-2")
    assert not rules.is_operator(None)
    rules.check_control("ops-alice", "m", "unload")
    rules.check_read("ops-alice", "m")  # an operator reads config and statistics ...
    assert not rules.allows("ops-alice", "m")  # ... but is no device: it may not infer
    with pytest.raises(PermissionDeniedError) as info:
        rules.check_control("pi-b", "m", "roll back")
    assert str(info.value) == (
        "device 'pi-b' may not roll back model 'm': only operators control the repository, "
        "and auth.toml [operators] names 'ops-*', 'ci'")
    with pytest.raises(PermissionDeniedError, match=r"auth\.toml names no operators"):
        parse_authorization({}, source="auth.toml").check_control("pi-b", "m", "load")


def test_every_problem_of_an_operators_section_is_named(tmp_path: Path) -> None:
    path = tmp_path / "auth.toml"
    path.write_text('[operators]\nnames = "ops-*"\nname = ["ops-*"]\n')
    with pytest.raises(BadProfileError) as info:
        load_authorization(path)
    message = str(info.value)
    assert f"{path}: operators.name is not a known key; expected names" in message
    assert (f"{path}: operators.names must be a list of certificate name patterns, e.g. "
            f"[\"ops-*\"] (strings, fnmatch syntax), got 'ops-*'") in message
    path.write_text('[operators]\nnames = ["ops-*", "", 3]\n')
    with pytest.raises(BadProfileError, match=f"{path}: operators.names must be a list"):
        load_authorization(path)
    path.write_text('operators = ["ops-*"]\n')
    with pytest.raises(BadProfileError, match=rf"{path}: operators must be a table with names = \["):
        load_authorization(path)
    path.write_text('[operators]\nnames = ["CN=ops-alice"]\n')
    with pytest.raises(BadProfileError) as info:
        load_authorization(path)
    assert str(info.value) == (
        f"{path}: operators.names: 'CN=ops-alice' can match no certificate name (it has '='; "
        "names are letters, digits, '_', '.' and '-', as `edgecut certs device NAME` writes them)")


def test_readme_auth_file_is_valid() -> None:
    (block,) = re.findall(r"```toml\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.DOTALL)
    rules = parse_authorization(tomllib.loads(block), source="README.md")
    assert rules.is_operator("ops-alice") and rules.allows("pi-kitchen", "chain_cnn.cut3")
    with pytest.raises(PermissionDeniedError):
        rules.check_control("pi-kitchen", "chain_cnn", "unload")


def _scaled(factor: float) -> onnx.ModelProto:
    """y = x * factor: each version of `m` answers with its own factor."""
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "k"], ["y"])], "scaled",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])],
        [numpy_helper.from_array(np.array(factor, np.float32), "k")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.fixture(scope="module")
def ops_fleet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("fleet-ops")
    init_ca(directory)
    for name in (OPERATOR, DEVICE):
        issue_device_certificate(directory, name)
    return directory


@pytest.fixture
def control_repo(tmp_path: Path) -> Path:
    """`m` v1 served, v2 on disk for a canary; a fresh copy per test (they unload it)."""
    repo = tmp_path / "models"
    for version, factor in ((1, 1.0), (2, 2.0)):
        (repo / "m" / str(version)).mkdir(parents=True)
        onnx.save(_scaled(factor), repo / "m" / str(version) / "model.onnx")
    (repo / "m" / "config.pbtxt").write_text("version_policy: { specific: { versions: [1] } }\n")
    return repo


def _answer(channel: grpc.Channel) -> tuple[str, float]:
    request = pb.ModelInferRequest(model_name="m")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    request.raw_input_contents.append(np.ones((1, 4), np.float32).tobytes())
    response = GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=WAIT_S)
    return response.model_version, float(np.frombuffer(response.raw_output_contents[0], np.float32)[0])


def _denied(call: Callable[[], object], action: str, who: str = DEVICE) -> str:
    with pytest.raises(RemoteError) as info:
        call()
    assert info.value.code == "PERMISSION_DENIED"
    message = str(info.value)
    assert message.startswith(f"device {who!r} may not {action} model 'm': only operators control")
    return message


def test_only_operators_control_the_repository(control_repo: Path, ops_fleet: Path,
                                               tmp_path: Path) -> None:
    auth = tmp_path / "auth.toml"
    auth.write_text('[devices.pi-b]\nmodels = ["m"]\n[operators]\nnames = ["ops-*"]\n')
    server = create_server(control_repo, tls_dir=ops_fleet, mutual_tls=True, workers=4,
                           auth_file=auth)
    with server, \
            ModelControl(server.address, tls_dir=ops_fleet, device=DEVICE) as device, \
            ModelControl(server.address, tls_dir=ops_fleet, device=OPERATOR) as operator, \
            grpc.secure_channel(server.address, channel_credentials(ops_fleet, device=DEVICE)) as pi:
        message = _denied(lambda: device.unload("m"), "unload")
        assert message.endswith(f"{auth} [operators] names 'ops-*'")
        _denied(lambda: device.load("m"), "load")
        _denied(lambda: device.canary("m", version=2, percent=50), "start a canary of")
        _denied(lambda: device.promote("m"), "promote")
        _denied(lambda: device.rollback("m"), "roll back")
        # Nothing changed, the server goes on serving, and reading stays open.
        assert _answer(pi) == ("1", 1.0)
        assert [(r.version, r.state) for r in device.index()] == [("1", "READY")]
        assert [s.version for s in device.statistics("m")] == ["1"]

        operator.canary("m", version=2, percent=50)
        assert sorted(_answer(pi)[0] for _ in range(4)) == ["1", "1", "2", "2"]
        assert {s.version for s in operator.statistics("m")} == {"1", "2"}
        operator.rollback("m")
        assert {_answer(pi) for _ in range(2)} == {("1", 1.0)}
        operator.canary("m", version=2, percent=10)
        operator.promote("m")
        assert _answer(pi) == ("2", 2.0)
        operator.unload("m")
        assert [r.state for r in device.index()] == ["UNAVAILABLE"]
        operator.load("m")
        assert _answer(pi) == ("1", 1.0)
        # An operator is no device: using a model still needs [devices] or [default].
        with grpc.secure_channel(server.address, channel_credentials(ops_fleet, device=OPERATOR)
                                 ) as ops, pytest.raises(grpc.RpcError) as info:
            _answer(ops)
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED  # type: ignore[attr-defined]
        # ... but it reads what a rollout checks: readiness and metadata.
        with grpc.secure_channel(server.address, channel_credentials(ops_fleet, device=OPERATOR)
                                 ) as ops:
            stub = GRPCInferenceServiceStub(ops)
            assert stub.ModelReady(pb.ModelReadyRequest(name="m", version="1"),
                                   timeout=WAIT_S).ready
            assert stub.ModelMetadata(pb.ModelMetadataRequest(name="m"),
                                      timeout=WAIT_S).versions == ["1"]

        # Malformed parameters from a non-operator: refused for who it is, not for what it sent.
        request = pb.RepositoryModelLoadRequest(model_name="m")
        request.parameters["config"].string_param = "{}"
        _denied(lambda: device._call("RepositoryModelLoad", request), "load")

        # The file changed: pi-b is the operator now, ops-alice is not.
        auth.write_text('[devices.pi-b]\nmodels = ["m"]\n[operators]\nnames = ["pi-b"]\n')
        os.utime(auth, ns=(1, 1))
        server.refresh()
        device.unload("m")
        device.load("m")
        _denied(lambda: operator.unload("m"), "unload", who=OPERATOR)
        # A broken operators section keeps the rules in force.
        auth.write_text('[devices.pi-b]\nmodels = ["m"]\n[operators]\nnames = "ops-*"\n')
        os.utime(auth, ns=(2, 2))
        server.refresh()
        device.load("m")
        assert _answer(pi) == ("1", 1.0)


def test_control_stays_open_without_an_auth_file(control_repo: Path, ops_fleet: Path) -> None:
    server = create_server(control_repo, tls_dir=ops_fleet, mutual_tls=True, workers=2)
    with server, ModelControl(server.address, tls_dir=ops_fleet, device=DEVICE) as device:
        device.canary("m", version=2, percent=50)
        device.rollback("m")
        device.unload("m")
        device.load("m")


def test_models_cli_presents_the_operator_certificate(
        control_repo: Path, ops_fleet: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    auth = tmp_path / "auth.toml"
    auth.write_text('[operators]\nnames = ["ops-*"]\n')
    server = create_server(control_repo, tls_dir=ops_fleet, mutual_tls=True, workers=2,
                           auth_file=auth)
    with server:
        common = ["--endpoint", server.address, "--tls", str(ops_fleet)]
        assert main(["models", "unload", "m", *common, "--device", DEVICE]) == EXIT_FAILED
        err = capsys.readouterr().err
        assert err == (f"edgecut models: error: endpoint answered PERMISSION_DENIED: device "
                       f"'pi-b' may not unload model 'm': only operators control the repository, "
                       f"and {auth} [operators] names 'ops-*'\n")
        assert main(["models", "unload", "m", *common, "--device", OPERATOR]) == 0
        assert main(["models", "index", *common, "--device", DEVICE, "--json"]) == 0
        assert '"state": "UNAVAILABLE"' in capsys.readouterr().out
        # Without --device, a folder of several certificates sends none: the error says so.
        assert main(["models", "index", *common]) == EXIT_FAILED
        err = capsys.readouterr().err
        assert "cannot reach the endpoint" in err
        assert f"choose it with --device: {OPERATOR}, {DEVICE}" in err
