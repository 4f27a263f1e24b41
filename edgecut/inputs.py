"""Loading of the CLI's `--input NAME=FILE.npy` arguments (light: `edgecut run` uses it on devices)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from edgecut.errors import BadInputError

_NAME_VALUE = re.compile(r"^(?P<name>[^=]+)=(?P<value>.+)$")


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
