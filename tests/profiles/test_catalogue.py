"""Every catalogue entry loads, validates, and cites a source for every figure."""

from __future__ import annotations

import re
from importlib import resources

import pytest

from edgecut.profiles import catalogue, load_cloud, load_device, load_network

NUMERIC = re.compile(r"^\s*[\w\"-]+\s*=\s*[-+]?[0-9.]")
SOURCE_DEF = re.compile(r"^#\s*\[(\d+)\]\s+\S")


def _catalogue_files():
    root = resources.files("edgecut.profiles").joinpath("catalogue")
    return [(kind, entry) for kind in ("devices", "networks")
            for entry in root.joinpath(kind).iterdir() if entry.name.endswith(".toml")]


def test_catalogue_has_the_contract_names() -> None:
    assert catalogue() == {
        "devices": sorted(["raspberry-pi-4", "jetson-nano", "phone", "laptop", "cpu-server", "gpu-server"]),
        "networks": sorted(["3g", "lte", "5g", "wifi", "ethernet"]),
    }


@pytest.mark.parametrize("name", catalogue()["devices"])
def test_every_device_loads_and_serves_as_cloud(name: str) -> None:
    device = load_device(name)
    assert device.name == name
    assert device.power.compute_w >= device.power.idle_w
    assert load_cloud(name).as_device() == device


@pytest.mark.parametrize("name", catalogue()["networks"])
def test_every_network_loads(name: str) -> None:
    assert load_network(name).name == name


@pytest.mark.parametrize("kind,entry", _catalogue_files(), ids=lambda v: getattr(v, "name", v))
def test_every_figure_cites_a_source(kind: str, entry) -> None:
    lines = entry.read_text().splitlines()
    defined = {m.group(1) for m in map(SOURCE_DEF.match, lines) if m}
    assert defined, f"{entry.name}: no '# [n] ...' source list"
    missing = []
    for number, line in enumerate(lines, 1):
        if not NUMERIC.match(line):
            continue
        comment = line.partition("#")[2]
        cited = set(re.findall(r"\[(\d+)\]", comment))
        if not cited or not cited <= defined:
            missing.append(f"{entry.name}:{number}: {line.strip()}")
    assert not missing


def test_default_cloud_is_the_gpu_server() -> None:
    cloud = load_cloud()
    assert cloud.name == "gpu-server" and cloud.replicas == 1 and cloud.max_batch == 1
