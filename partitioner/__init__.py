"""ONNX graph analysis, candidate cuts, head/tail extraction and plans.

Example:
    >>> from edgecut.partitioner import list_cuts, split_model
    >>> from edgecut.zoo import chain_cnn
    >>> model = chain_cnn()
    >>> head, tail = split_model(model, list_cuts(model)[2])
"""

from __future__ import annotations

from edgecut.partitioner.cuts import Cut, cut_from_device_set, get_cut, list_cuts
from edgecut.partitioner.extract import head_outputs, split_model
from edgecut.partitioner.graph import GraphInfo, analyse_graph, outer_scope_names
from edgecut.partitioner.plan import check_model, load_model, model_name, verify_split, write_plan
from edgecut.partitioner.runtime import (
    RELATIVE_TOLERANCE,
    compare_outputs,
    run_model,
    run_split_locally,
    tolerance_for,
    within_tolerance,
)
from edgecut.partitioner.shapes import (
    TensorInfo,
    concrete_input_shapes,
    parse_input_shape,
    resolve_tensors,
    sample_inputs,
)

__all__ = [
    "RELATIVE_TOLERANCE",
    "Cut",
    "GraphInfo",
    "TensorInfo",
    "analyse_graph",
    "check_model",
    "compare_outputs",
    "concrete_input_shapes",
    "cut_from_device_set",
    "get_cut",
    "head_outputs",
    "list_cuts",
    "load_model",
    "model_name",
    "outer_scope_names",
    "parse_input_shape",
    "resolve_tensors",
    "run_model",
    "run_split_locally",
    "sample_inputs",
    "split_model",
    "tolerance_for",
    "verify_split",
    "within_tolerance",
    "write_plan",
]
