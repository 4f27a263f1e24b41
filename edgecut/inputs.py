"""Parsing of the CLI's `NAME=VALUE` arguments: input shapes and input files."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from edgecut.errors import BadInputError, BadShapeError

_NAME_VALUE = re.compile(r"^(?P<name>[^=]+)=(?P<value>.+)$")


def parse_input_shapes(specs: Iterable[str]) -> dict[str, tuple[int, ...]]:
    """Parse `NAME=1x3x224x224` strings into {name: shape}.

    >>> parse_input_shapes(["x=1x3x32x32"])
    {'x': (1, 3, 32, 32)}
    """
    shapes: dict[str, tuple[int, ...]] = {}
    for spec in specs:
        match = _NAME_VALUE.match(spec)
        if not match:
            raise BadShapeError(f"--input-shape {spec!r}: expected NAME=DIMxDIMx..., e.g. x=1x3x224x224")
        name, value = match["name"], match["value"]
        dims = value.lower().split("x")
        if not all(d.isdigit() for d in dims):
            raise BadShapeError(
                f"--input-shape {spec!r}: dimensions must be non-negative integers separated by 'x',"
                f" e.g. {name}=1x3x224x224"
            )
        if name in shapes:
            raise BadShapeError(f"--input-shape {spec!r}: input {name!r} given twice")
        shapes[name] = tuple(int(d) for d in dims)
    return shapes


def load_input_files(specs: Iterable[str]) -> dict[str, np.ndarray]:
    """Load `NAME=FILE.npy` arguments into {name: array}."""
    arrays: dict[str, np.ndarray] = {}
    for spec in specs:
        match = _NAME_VALUE.match(spec)
        if not match:
            raise BadInputError(f"--input {spec!r}: expected NAME=FILE.npy")
        name, path = match["name"], Path(match["value"])
        if not path.is_file():
            raise BadInputError(f"--input {spec!r}: no such file {str(path)!r}")
        try:
            array = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise BadInputError(f"--input {spec!r}: {path} is not a .npy array ({exc})") from exc
        if not isinstance(array, np.ndarray):
            raise BadInputError(f"--input {spec!r}: {path} holds several arrays; give one .npy per input")
        arrays[name] = array
    return arrays
