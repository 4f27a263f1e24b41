"""Device, network, cloud and fleet profiles: schema, built-in catalogue, loaders, profilers.

    from edgecut.profiles import load_device, load_network, load_cloud, catalogue
    pi = load_device("raspberry-pi-4")            # or a path to a .toml file
    lte = load_network("up=6,down=13,rtt=60")     # or "lte", or a file
    cloud = load_cloud()                          # "gpu-server" by default

The schema and loaders import only the standard library (the device runtime can use them);
`opclass`, `device_profiler` and `model_profiler` need onnx and onnxruntime and are imported
on first use of their names.
"""

from __future__ import annotations

import importlib
from typing import Any

from edgecut.profiles.load import (
    DEFAULT_CLOUD,
    catalogue,
    load_cloud,
    load_device,
    load_fleet,
    load_network,
    parse_inline_network,
    save_device,
)
from edgecut.profiles.schema import (
    COMPUTE_CLASSES,
    OPERATOR_CLASSES,
    CloudProfile,
    DeviceClass,
    DeviceProfile,
    FleetProfile,
    NetworkProfile,
    PowerModel,
)

_LAZY = {
    "NodeCost": "opclass",
    "classify_node": "opclass",
    "estimate_node_ms": "opclass",
    "op_class_of": "opclass",
    "profile_device": "device_profiler",
    "ModelProfile": "model_profiler",
    "attach_model_profile": "model_profiler",
    "node_names": "model_profiler",
    "predict_for_device": "model_profiler",
    "profile_model": "model_profiler",
}

__all__ = [
    "COMPUTE_CLASSES",
    "DEFAULT_CLOUD",
    "OPERATOR_CLASSES",
    "CloudProfile",
    "DeviceClass",
    "DeviceProfile",
    "FleetProfile",
    "ModelProfile",
    "NetworkProfile",
    "NodeCost",
    "PowerModel",
    "attach_model_profile",
    "catalogue",
    "classify_node",
    "estimate_node_ms",
    "load_cloud",
    "load_device",
    "load_fleet",
    "load_network",
    "node_names",
    "op_class_of",
    "parse_inline_network",
    "predict_for_device",
    "profile_device",
    "profile_model",
    "save_device",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f"edgecut.profiles.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'edgecut.profiles' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
