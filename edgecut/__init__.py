"""edgecut: cut an ONNX model between a device and a cloud endpoint.

    >>> from edgecut import Config, Predictor

`Predictor` and `Config` are imported on first use, so `import edgecut.errors` (or the CLI)
does not load onnxruntime and gRPC until something needs them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edgecut.edge import Config, Predictor

__all__ = ["Config", "Predictor"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from edgecut import edge

        return getattr(edge, name)
    raise AttributeError(f"module 'edgecut' has no attribute {name!r}")
