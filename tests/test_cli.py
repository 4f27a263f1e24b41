"""The `edgecut` command as scripts use it: exit codes, one-line errors, JSON and files."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from edgecut import zoo
from edgecut.cli import main

COMMANDS = ["cuts", "plan", "verify", "certs", "certs init", "certs device", "serve", "deploy",
            "run", "demo", "models", "models index", "models canary"]


def edgecut(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the real console entry point in a child process, as a script would."""
    return subprocess.run([sys.executable, "-m", "edgecut", *args], capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("model") / "chain_cnn.onnx"
    onnx.save(zoo.ZOO["chain_cnn"](), path)
    return path


@pytest.fixture(scope="module")
def dynamic_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("model") / "dynamic_cnn.onnx"
    onnx.save(zoo.ZOO["dynamic_cnn"](), path)
    return path


def assert_one_line_error(result: subprocess.CompletedProcess[str], code: int, *words: str) -> None:
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for word in words:
        assert word in lines[0], lines[0]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([*command.split(), "--help"])
    assert exit_info.value.code == 0
    assert "usage: edgecut" in capsys.readouterr().out


def test_cuts_json_is_the_documented_contract(model_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cuts", str(model_path), "--json"]) == 0
    cuts = json.loads(capsys.readouterr().out)
    assert [c["id"] for c in cuts] == list(range(len(cuts)))
    assert len(cuts) > 5
    for cut in cuts:
        assert {"id", "crossing", "bytes", "device_nodes"} <= cut.keys()
        assert all(isinstance(name, str) for name in cut["crossing"])
    device_nodes = [c["device_nodes"] for c in cuts]
    assert device_nodes == sorted(device_nodes) and device_nodes[0] == 0
    # Cut 0 sends the raw input: 1x3x32x32 fp32.
    assert cuts[0]["crossing"] == ["x"] and cuts[0]["bytes"] == 3 * 32 * 32 * 4


def test_cuts_bytes_follow_input_shape(dynamic_model_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    main(["cuts", str(dynamic_model_path), "--json", "--input-shape", "x=1x3x16x16"])
    small = json.loads(capsys.readouterr().out)
    main(["cuts", str(dynamic_model_path), "--json", "--input-shape", "x=2x3x32x32"])
    large = json.loads(capsys.readouterr().out)
    assert [c["crossing"] for c in small] == [c["crossing"] for c in large]
    ratios = [b["bytes"] / s["bytes"] for s, b in zip(small, large, strict=True) if s["bytes"]]
    # Feature maps grow with batch x height x width (8x); pooled vectors only with batch (2x).
    assert ratios[0] == 8 and set(ratios) == {8, 2}


def test_cuts_table(model_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cuts", str(model_path)]) == 0
    assert "candidate cuts" in capsys.readouterr().out


def test_plan_writes_the_documented_folder(model_path: Path, tmp_path: Path) -> None:
    assert main(["plan", str(model_path), "--cut", "3", "--out", str(tmp_path / "plan")]) == 0
    plan = json.loads((tmp_path / "plan" / "plan.json").read_text())
    assert (tmp_path / "plan" / plan["model"]["file"]).is_file()
    (cut,) = plan["cuts"]
    assert cut["id"] == 3 and plan["chosen"] == 3
    assert {"id", "crossing", "bytes", "head", "tail"} <= cut.keys()
    for part in ("head", "tail"):
        onnx.checker.check_model(str(tmp_path / "plan" / cut[part]), full_check=True)


def test_verify_locally_with_and_without_input_files(model_path: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    main(["plan", str(model_path), "--cut", "all", "--out", str(tmp_path / "plan")])
    assert main(["verify", str(tmp_path / "plan"), "--json"]) == 0
    checks = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert len(checks) > 5 and all(c["ok"] for c in checks)
    np.save(tmp_path / "x.npy", np.ones((1, 3, 32, 32), np.float32))
    assert main(["verify", str(tmp_path / "plan"), "--input", f"x={tmp_path / 'x.npy'}",
                 "--cut", "2"]) == 0
    assert "1 of 1 cuts within tolerance" in capsys.readouterr().out


def test_missing_model_file(tmp_path: Path) -> None:
    assert_one_line_error(edgecut("cuts", str(tmp_path / "nope.onnx")), 2, "nope.onnx")


def test_file_that_is_not_onnx(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.onnx"
    bogus.write_text("this is not a model")
    assert_one_line_error(edgecut("cuts", str(bogus)), 2, "bogus.onnx")


def test_unknown_cut(model_path: Path, tmp_path: Path) -> None:
    result = edgecut("plan", str(model_path), "--cut", "999", "--out", str(tmp_path / "p"))
    assert_one_line_error(result, 2, "999")
    assert not (tmp_path / "p" / "plan.json").exists()


def test_bad_shape_string(model_path: Path) -> None:
    assert_one_line_error(edgecut("cuts", str(model_path), "--input-shape", "x=1xAx3"), 2, "x=1xAx3")


def test_unknown_argument_is_one_line(model_path: Path) -> None:
    assert_one_line_error(edgecut("cuts", str(model_path), "--frobnicate"), 2, "--frobnicate")


@pytest.mark.parametrize(("flag", "value", "said"), [
    ("--address", "127.0.0.1:99999", "a port in 0..65535"),
    ("--workers", "0", "whole number >= 1"),
    ("--metrics-port", "70000", "a port in 0..65535"),
    ("--http-address", "8000", "HOST:PORT"),
    ("--grace-secs", "-1", "seconds > 0"),
])
def test_serve_flags_are_checked_before_any_model_loads(tmp_path: Path, flag: str, value: str,
                                                        said: str) -> None:
    # The repository does not even exist: the flag is refused first, by its own name.
    result = edgecut("serve", "--repository", str(tmp_path / "none"), flag, value)
    assert_one_line_error(result, 2, f"argument {flag}: must be", said)


def test_input_file_missing(model_path: Path, tmp_path: Path) -> None:
    main(["plan", str(model_path), "--cut", "1", "--out", str(tmp_path / "plan")])
    result = edgecut("run", str(tmp_path / "plan"), "--mode", "local", "--input",
                     f"x={tmp_path / 'missing.npy'}", "--output", str(tmp_path / "o.npz"))
    assert_one_line_error(result, 2, "missing.npy")


def test_plan_folder_missing(tmp_path: Path) -> None:
    assert_one_line_error(edgecut("verify", str(tmp_path / "no-plan")), 2, "no-plan")


def test_endpoint_down_is_one_line_exit_1(model_path: Path, tmp_path: Path) -> None:
    main(["plan", str(model_path), "--cut", "1", "--out", str(tmp_path / "plan")])
    np.save(tmp_path / "x.npy", np.ones((1, 3, 32, 32), np.float32))
    result = edgecut("run", str(tmp_path / "plan"), "--endpoint", "127.0.0.1:1", "--input",
                     f"x={tmp_path / 'x.npy'}", "--output", str(tmp_path / "o.npz"))
    assert_one_line_error(result, 1, "127.0.0.1:1")


def test_deploy_is_idempotent_and_versions_changes(model_path: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    main(["plan", str(model_path), "--cut", "2", "--out", str(tmp_path / "plan")])
    assert main(["deploy", str(tmp_path / "plan"), "--repository", str(repo)]) == 0
    plan = json.loads((tmp_path / "plan" / "plan.json").read_text())
    tail_model = plan["cuts"][0]["endpoint_model"]
    assert (repo / plan["model"]["name"] / "1" / "model.onnx").is_file()
    assert (repo / tail_model / "1" / "model.onnx").is_file()
    main(["deploy", str(tmp_path / "plan"), "--repository", str(repo)])
    assert not (repo / tail_model / "2").exists()
    main(["plan", str(model_path), "--cut", "2", "--out", str(tmp_path / "plan2"),
          "--input-shape", "x=2x3x32x32"])
    # Same model name and cut, different input shapes: same bytes in the tail, so unchanged.
    main(["deploy", str(tmp_path / "plan2"), "--repository", str(repo)])
    assert sorted(p.name for p in (repo / tail_model).iterdir() if p.is_dir()) == ["1"]


def test_certs_serve_run_and_verify_through_the_endpoint(model_path: Path, tmp_path: Path) -> None:
    tls, repo, plan_dir = tmp_path / "tls", tmp_path / "repo", tmp_path / "plan"
    assert main(["certs", "init", str(tls), "--host", "edge.example"]) == 0
    assert main(["certs", "device", "pi-1", "--dir", str(tls)]) == 0
    assert {p.name for p in tls.iterdir()} >= {"ca.crt", "server.crt", "server.key", "pi-1.crt",
                                                "pi-1.key"}
    # 'all' mixed with ids is ambiguous: rejected as a user error.
    assert main(["plan", str(model_path), "--cut", "4", "--cut", "all", "--out",
                 str(plan_dir)]) == 2
    main(["plan", str(model_path), "--cut", "all", "--out", str(plan_dir)])
    assert main(["deploy", str(plan_dir), "--repository", str(repo)]) == 0

    server = subprocess.Popen(
        [sys.executable, "-m", "edgecut", "serve", "--repository", str(repo), "--address",
         "127.0.0.1:0", "--tls", str(tls), "--mtls"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL,
    )
    try:
        port = _wait_for_port(server)
        endpoint = f"127.0.0.1:{port}"
        x = np.random.default_rng(1).standard_normal((1, 3, 32, 32)).astype(np.float32)
        np.save(tmp_path / "x.npy", x)
        for mode in ("split", "offload", "local"):
            out = tmp_path / f"{mode}.npz"
            assert main(["run", str(plan_dir), "--endpoint", endpoint, "--tls", str(tls),
                         "--mode", mode, "--input", f"x={tmp_path / 'x.npy'}",
                         "--output", str(out)]) == 0
            assert out.is_file()
        import onnxruntime as ort

        full = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
        expected = full.run(None, {"x": x})[0]
        with np.load(tmp_path / "split.npz") as got:
            np.testing.assert_allclose(got[full.get_outputs()[0].name], expected, atol=1e-5)
        assert main(["verify", str(plan_dir), "--endpoint", endpoint, "--tls", str(tls),
                     "--codec", "zstd"]) == 0
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
        assert server.stdout is not None
        server.stdout.close()
    assert server.returncode == 0


def _wait_for_port(server: subprocess.Popen[str]) -> int:
    """Read the server's output until it says where it listens (bounded by the read timeout)."""
    assert server.stdout is not None
    os.set_blocking(server.stdout.fileno(), True)
    for _ in range(50):
        line = server.stdout.readline()
        if not line:
            break
        match = re.search(r"listening on [^\s:]+:(\d+)", line)
        if match:
            return int(match.group(1))
    server.kill()
    raise AssertionError(f"serve did not report its port; output: {server.stdout.read()}")


def test_demo_runs_and_checks_every_mode() -> None:
    result = edgecut("demo", timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    for mode in ("split", "offload", "local"):
        assert mode in result.stdout
    assert "all modes match the full model" in result.stdout
