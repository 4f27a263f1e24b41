"""`edgecut plan` choosing a cut from profiles, and `edgecut profile`: the CLI contract."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest

from edgecut.cli import main
from edgecut.zoo import fpn


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cli") / "fpn.onnx"
    onnx.save(fpn(), str(path))
    return path


def test_plan_with_catalogue_names(model, tmp_path, capsys):
    assert main(["plan", str(model), "--device", "raspberry-pi-4", "--network", "lte",
                 "--out", str(tmp_path / "p")]) == 0
    plan = json.loads((tmp_path / "p" / "plan.json").read_text())
    env = plan["envelope"]
    assert env[0]["min_mbps"] == 0 and env[-1]["max_mbps"] is None
    assert any(s["min_mbps"] <= 6.0 and (s["max_mbps"] is None or s["max_mbps"] > 6.0)
               and s["cut"] == plan["chosen"] for s in env)
    assert plan["profiles"]["cloud"]["name"] == "gpu-server"
    assert "wrote" in capsys.readouterr().out


def test_plan_inline_network_explain_json(model, capsys):
    assert main(["plan", str(model), "--device", "phone", "--network", "up=5,down=20,rtt=40",
                 "--explain", "--json", "--no-measure"]) == 0
    rows = json.loads(capsys.readouterr().out)
    keys = {"id", "bytes", "device_ms", "uplink_ms", "cloud_ms", "downlink_ms", "latency_ms",
            "energy_j", "chosen"}
    assert all(keys <= set(r) for r in rows)
    assert sum(r["chosen"] for r in rows) == 1


def test_plot_writes_a_png(model, tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "env.png"
    assert main(["plan", str(model), "--device", "phone", "--network", "wifi", "--no-measure",
                 "--plot", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("flags, word", [
    (["--device-memory-mib", "0.001"], "memory"),
    (["--energy-budget-j", "1e-9"], "energy"),
])
def test_constraint_errors_are_one_line(model, tmp_path, capsys, flags, word):
    assert main(["plan", str(model), "--device", "phone", "--network", "lte", "--no-measure",
                 "--out", str(tmp_path / "p"), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and word in err


def test_plan_needs_profiles_or_a_cut(model, tmp_path, capsys):
    assert main(["plan", str(model), "--out", str(tmp_path / "p")]) == 2
    assert "--device" in capsys.readouterr().err


def test_profile_device_round_trip_into_plan(model, tmp_path, capsys):
    profile = tmp_path / "me.toml"
    assert main(["profile", "device", "--quick", "--name", "me", "--out", str(profile)]) == 0
    assert main(["plan", str(model), "--device", str(profile), "--network", "lte",
                 "--no-measure", "--out", str(tmp_path / "p")]) == 0
    plan = json.loads((tmp_path / "p" / "plan.json").read_text())
    assert plan["profiles"]["device"]["name"] == "me"


def test_profile_model_output(model, tmp_path):
    out = tmp_path / "prof.json"
    assert main(["profile", "model", str(model), "--device", "phone", "--out", str(out),
                 "--runs", "3"]) == 0
    doc = json.loads(out.read_text())
    assert doc["this_machine"]["node_ms"] and doc["this_machine"]["peak_memory_mib"] >= 0
    assert set(doc["predicted"]["node_ms"]) == set(doc["this_machine"]["node_ms"])


def test_the_same_plan_command_twice(model, tmp_path):
    """--no-measure: byte-identical. Measured: the same anchors, and every ratio within the
    correction's limits (no timing is asserted: the machine is shared and noisy)."""
    common = ["plan", str(model), "--device", "raspberry-pi-4", "--network", "lte"]
    for name in ("a", "b"):
        assert main([*common, "--no-measure", "--out", str(tmp_path / name)]) == 0
    assert (tmp_path / "a" / "plan.json").read_bytes() == (tmp_path / "b" / "plan.json").read_bytes()
    plans = []
    for name in ("m1", "m2"):
        assert main([*common, "--measure-budget-s", "2", "--out", str(tmp_path / name)]) == 0
        plans.append(json.loads((tmp_path / name / "plan.json").read_text()))
    anchors = [[a["cut"] for a in p["measurement"]["anchors"]] for p in plans]
    assert anchors[0] == anchors[1]
    unmeasured = json.loads((tmp_path / "a" / "plan.json").read_text())
    last = max(c["id"] for c in unmeasured["cuts"])
    for plan in plans:
        assert plan["measurement"]["device_points"][-1] == [1.0, 1.0]
        for cut in plan["cuts"]:
            ratio = cut["predicted"]["device_ratio"]
            assert 0.5 <= ratio <= 2.0
            if cut["id"] == last:  # the device-only cut keeps the profile's prediction
                assert cut["predicted"]["corrected"]["device_ms"] == cut["predicted"]["model"]["device_ms"]
