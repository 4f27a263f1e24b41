"""Loading profiles: files, inline networks, clouds, fleets, and every kind of bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgecut.errors import BadProfileError
from edgecut.profiles import (
    CloudProfile,
    NetworkProfile,
    PowerModel,
    load_cloud,
    load_device,
    load_fleet,
    load_network,
    save_device,
)

GOOD_DEVICE = """
[device]
name = "pi4"
cores = 4
memory_mib = 4096
default_gflops = 1.0
memory_gbps = 3.0
[device.gflops_by_class]
conv = 10.0
[device.power]
idle_w = 2.7
compute_w = 6.4
transmit_w = 3.5
receive_w = 3.3
"""


def _write(tmp_path: Path, text: str, name: str = "pi4.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _error(loader, ref) -> str:
    with pytest.raises(BadProfileError) as info:
        loader(ref)
    return str(info.value)


def test_a_good_device_file_loads(tmp_path: Path) -> None:
    device = load_device(_write(tmp_path, GOOD_DEVICE))
    assert device.gflops_for("conv") == 10.0 and device.gflops_for("pool") == 1.0


def test_a_device_without_per_class_speeds_uses_its_default_for_all(tmp_path: Path) -> None:
    text = GOOD_DEVICE.replace("[device.gflops_by_class]\nconv = 10.0\n", "")
    device = load_device(_write(tmp_path, text))
    assert device.gflops_by_class == {} and device.gflops_for("conv") == 1.0


def test_negative_value_names_file_key_and_expectation(tmp_path: Path) -> None:
    path = _write(tmp_path, GOOD_DEVICE.replace("memory_gbps = 3.0", "memory_gbps = -5"))
    assert _error(load_device, path) == f"{path}: device.memory_gbps must be > 0, got -5"


def test_network_uplink_message_matches_the_style_guide(tmp_path: Path) -> None:
    path = _write(tmp_path, '[network]\nname = "x"\nuplink_mbps = -5\ndownlink_mbps = 1\nrtt_ms = 1\n')
    assert _error(load_network, path) == f"{path}: network.uplink_mbps must be > 0, got -5"


def test_wrong_type_is_reported(tmp_path: Path) -> None:
    path = _write(tmp_path, GOOD_DEVICE.replace("cores = 4", 'cores = "four"'))
    assert "device.cores must be an integer >= 1, got 'four'" in _error(load_device, path)


def test_missing_key_is_reported(tmp_path: Path) -> None:
    path = _write(tmp_path, GOOD_DEVICE.replace("memory_mib = 4096\n", ""))
    assert "device.memory_mib is missing (expected a number > 0)" in _error(load_device, path)


def test_missing_power_table_is_reported(tmp_path: Path) -> None:
    text = GOOD_DEVICE.split("[device.power]")[0]
    assert "device.power is missing" in _error(load_device, _write(tmp_path, text))


def test_unknown_key_suggests_the_right_one(tmp_path: Path) -> None:
    path = _write(tmp_path, GOOD_DEVICE.replace("memory_gbps", "memory_gpbs"))
    message = _error(load_device, path)
    assert "device.memory_gpbs is not a known key" in message
    assert "did you mean device.memory_gbps?" in message


def test_unknown_operator_class_suggests_one(tmp_path: Path) -> None:
    path = _write(tmp_path, GOOD_DEVICE.replace("conv = 10.0", "convv = 10.0"))
    assert "did you mean 'conv'?" in _error(load_device, path)


def test_compute_power_below_idle_is_an_error(tmp_path: Path) -> None:
    path = _write(tmp_path, GOOD_DEVICE.replace("compute_w = 6.4", "compute_w = 1.0"))
    assert "device.power.compute_w must be >= device.power.idle_w" in _error(load_device, path)


def test_per_node_table_needs_the_model_hash(tmp_path: Path) -> None:
    path = _write(tmp_path, GOOD_DEVICE + "[device.per_node_ms]\nconv1 = 1.5\n")
    assert "device.per_node_model_sha256 is missing" in _error(load_device, path)


def test_all_problems_are_reported_together(tmp_path: Path) -> None:
    text = (GOOD_DEVICE.replace("cores = 4", "cores = 0").replace("memory_gbps = 3.0", "memory_gbps = -1")
            .replace("idle_w = 2.7", "idle_w = -2").replace("default_gflops", "defualt_gflops"))
    lines = _error(load_device, _write(tmp_path, text)).splitlines()
    assert len(lines) == 5, lines
    assert all(line.startswith(str(tmp_path / "pi4.toml") + ": ") for line in lines)
    joined = "\n".join(lines)
    for key in ("device.cores", "device.memory_gbps", "device.power.idle_w", "device.defualt_gflops",
                "device.default_gflops is missing"):
        assert key in joined


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    path = _write(tmp_path, "[device\nname=")
    assert _error(load_device, path).startswith(f"{path}: not a valid TOML file")


def test_missing_file_names_the_file(tmp_path: Path) -> None:
    assert "cannot read device profile" in _error(load_device, tmp_path / "nope.toml")


def test_unknown_catalogue_name_lists_the_known_ones() -> None:
    message = _error(load_device, "raspberry-pi4")
    assert "unknown device 'raspberry-pi4'" in message
    assert "did you mean 'raspberry-pi-4'?" in message
    assert "jetson-nano" in message and "gpu-server" in message


def test_unknown_network_lists_the_known_ones() -> None:
    message = _error(load_network, "4g")
    assert "known networks: 3g, 5g, ethernet, lte, wifi" in message


def test_network_trace_loads_and_is_checked(tmp_path: Path) -> None:
    base = '[network]\nname = "t"\nuplink_mbps = 5\ndownlink_mbps = 10\nrtt_ms = 50\n'
    net = load_network(_write(tmp_path, base + "trace = [[0, 5, 10, 50], [2.5, 1, 2, 80]]\n", "t.toml"))
    assert net.conditions_at(1.0) == (5.0, 10.0, 50.0) and net.conditions_at(3.0) == (1.0, 2.0, 80.0)
    bad = _write(tmp_path, base + "trace = [[0, 5, 10, 50], [0, -1, 2, 80]]\n", "bad.toml")
    message = _error(load_network, bad)
    assert "network.trace[1] t_s must be >= 0 and greater" in message
    assert "network.trace[1] uplink_mbps and downlink_mbps must be > 0" in message


# ---------------------------------------------------------------- inline networks

def test_inline_network_parses() -> None:
    net = load_network("up=5,down=20,rtt=50")
    assert (net.uplink_mbps, net.downlink_mbps, net.rtt_ms, net.loss) == (5.0, 20.0, 50.0, 0.0)


def test_inline_network_optional_keys_and_spaces() -> None:
    net = load_network(" up=1.5 , down=3, rtt=100, jitter=20, loss=0.01 ")
    assert (net.jitter_ms, net.loss) == (20.0, 0.01)


def test_inline_network_reports_every_problem() -> None:
    lines = _error(load_network, "up=-1,down=x,rtt=10,speed=3").splitlines()
    assert lines == [
        "network 'up=-1,down=x,rtt=10,speed=3': 'speed' is not a known key (expected up, down, rtt, jitter, "
        "loss)",
        "network 'up=-1,down=x,rtt=10,speed=3': up must be > 0, got -1.0",
        "network 'up=-1,down=x,rtt=10,speed=3': down must be a number > 0, got 'x'",
    ]


def test_inline_network_missing_key() -> None:
    assert "rtt is missing (expected a number >= 0)" in _error(load_network, "up=1,down=2")


def test_inline_network_duplicate_and_malformed_parts() -> None:
    message = _error(load_network, "up=1,up=2,down=2,rtt=1,fast")
    assert "up is given twice" in message and "'fast' must be KEY=NUMBER" in message


def test_inline_loss_must_be_a_fraction() -> None:
    assert "loss must be in [0, 1), got 5.0" in _error(load_network, "up=1,down=2,rtt=3,loss=5")


# ---------------------------------------------------------------- clouds and fleets

def test_cloud_file_with_speedup(tmp_path: Path) -> None:
    path = _write(tmp_path, '[cloud]\nname = "k8"\nspeedup = 8.0\nreference = "laptop"\nreplicas = 3\n',
                  "cloud.toml")
    cloud = load_cloud(path)
    assert cloud == CloudProfile(name="k8", speedup=8.0, reference="laptop", replicas=3)
    fast = cloud.as_device(load_device("laptop"))
    assert fast.gflops_for("conv") == 8 * load_device("laptop").gflops_for("conv")


def test_cloud_file_needs_exactly_one_speed(tmp_path: Path) -> None:
    path = _write(tmp_path, '[cloud]\nname = "k8"\nreplicas = 0\n', "cloud.toml")
    message = _error(load_cloud, path)
    assert "cloud.replicas must be >= 1, got 0" in message
    assert "give exactly one (got neither)" in message


def test_cloud_from_device_file(tmp_path: Path) -> None:
    assert load_cloud(_write(tmp_path, GOOD_DEVICE)).device == load_device(tmp_path / "pi4.toml")


def test_fleet_file_loads_and_checks_refs(tmp_path: Path) -> None:
    _write(tmp_path, GOOD_DEVICE)
    fleet_text = """
[fleet]
name = "homes"
cloud = "gpu-server"
cloud_replicas = 2
[[fleet.device_classes]]
name = "pis"
count = 20
device = "pi4.toml"
network = "wifi"
arrival_rate_hz = 2.0
[[fleet.device_classes]]
name = "phones"
count = 100
device = "phone"
network = "up=6,down=13,rtt=60"
arrival_rate_hz = 0.5
"""
    fleet = load_fleet(_write(tmp_path, fleet_text, "fleet.toml"))
    assert [c.count for c in fleet.device_classes] == [20, 100] and fleet.cloud_replicas == 2
    bad = fleet_text.replace('"wifi"', '"wiif"').replace("count = 100", "count = 0")
    message = _error(load_fleet, _write(tmp_path, bad, "bad.toml"))
    assert "fleet.device_classes[0].network: unknown network 'wiif'" in message
    assert "fleet.device_classes[1].count must be >= 1, got 0" in message


# ---------------------------------------------------------------- values

def test_dataclasses_validate_directly() -> None:
    with pytest.raises(BadProfileError, match="rtt_ms must be >= 0"):
        NetworkProfile(name="x", uplink_mbps=1, downlink_mbps=1, rtt_ms=-1)
    with pytest.raises(BadProfileError, match="idle_w must be a number >= 0"):
        PowerModel(idle_w="a", compute_w=1, transmit_w=1, receive_w=1)


def test_save_load_round_trip_of_a_catalogue_device(tmp_path: Path) -> None:
    device = load_device("phone")
    assert load_device(save_device(device, tmp_path / "out" / "phone.toml")) == device
