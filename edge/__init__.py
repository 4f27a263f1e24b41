"""The device runtime: runs a plan's head locally and talks to the cloud endpoint.

Kept light on purpose: numpy, onnxruntime, grpcio, protobuf, zstandard; never onnx,
networkx, matplotlib, the partitioner or the cloud code (tests/edge/test_imports.py).

    >>> from edgecut.edge import Config, Predictor
    >>> predictor = Predictor(Config(plan="plans/chain_cnn", mode="local"))  # doctest: +SKIP
    >>> (y,) = predictor.run(None, {"x": x})  # doctest: +SKIP
"""

from __future__ import annotations

from .chain import ChainConfig, ChainPredictor
from .client import ClientStatistics, CloudClient, InferResult
from .config import Config
from .plan import Plan, PlanCut, PlanModel, TensorSpec, load_plan
from .predictor import Predictor, TensorInfo
from .stats import PredictorStatistics, RunStatistics

__all__ = [
    "ChainConfig",
    "ChainPredictor",
    "ClientStatistics",
    "CloudClient",
    "Config",
    "InferResult",
    "Plan",
    "PlanCut",
    "PlanModel",
    "Predictor",
    "PredictorStatistics",
    "RunStatistics",
    "TensorInfo",
    "TensorSpec",
    "load_plan",
]
