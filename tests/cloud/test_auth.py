"""Per-device authorisation: the rules file, and allow / deny on a real mTLS server."""

from __future__ import annotations

import os
from pathlib import Path

import grpc
import numpy as np
import pytest

from edgecut.cloud.auth import load_authorization, parse_authorization
from edgecut.cloud.server import create_server
from edgecut.errors import BadProfileError, PermissionDeniedError, UserInputError
from edgecut.protocol import grpc_service_pb2 as pb
from edgecut.protocol.grpc_service_pb2_grpc import GRPCInferenceServiceStub
from edgecut.protocol.tls import channel_credentials

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
