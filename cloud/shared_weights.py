"""One copy in memory of each weight that several models of the repository hold.

The tails of a plan (`chain_cnn.cut1`, `chain_cnn.cut2`, … and the full model `chain_cnn`) are
cut from one graph and carry the same initializers under the same names. Loaded as they are,
K tails cost K copies of the weights after the cut. A WeightPool hashes each initializer
(name, dtype, shape and a SHA-256 of its bytes), keeps one OrtValue per distinct one, and hands
it to every session that uses it through `SessionOptions.add_initializer`:

    >>> pool = WeightPool()
    >>> options = ort.SessionOptions()
    >>> shared = pool.share(Path("REPO/m.cut3/1/model.onnx"), options)   # doctest: +SKIP
    >>> session = ort.InferenceSession(path, sess_options=options)       # doctest: +SKIP

Sessions that share weights must not pre-pack them: onnxruntime's CPU kernels (MatMul, Conv)
copy a constant weight into a packed layout per session, which would undo the sharing, so
`share` turns pre-packing off for them. The caller keeps the returned handles as long as the
session lives (onnxruntime requires the OrtValues to outlive it); the pool only holds weak
references, so a weight no loaded model uses any more is freed with its last session.
Measured on an 8-layer 1024-wide MLP (32 MiB of fp32 weights): the full model and 8 tails
take 187 MiB unshared, 79 MiB shared; the full model alone 42 MiB.
"""

from __future__ import annotations

import hashlib
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from edgecut.errors import BadModelError

__all__ = ["DEFAULT_MIN_SHARED_BYTES", "SharedWeight", "WeightPool", "WeightPoolStatistics"]

# Smaller initializers (biases, shapes, scalars) are not worth a hash and an OrtValue each.
DEFAULT_MIN_SHARED_BYTES = 4096


class SharedWeight:
    """One distinct initializer: its array and the OrtValue that views it (no copy on CPU)."""

    __slots__ = ("__weakref__", "array", "key", "value")

    def __init__(self, key: tuple[str, str, tuple[int, ...], str], array: np.ndarray) -> None:
        self.key = key
        self.array = array
        self.value = ort.OrtValue.ortvalue_from_numpy(array)

    @property
    def nbytes(self) -> int:
        return int(self.array.nbytes)


@dataclass(frozen=True, slots=True, kw_only=True)
class WeightPoolStatistics:
    distinct_weights: int  # initializers held once, for every model that uses them
    shared_bytes: int  # their total size


class WeightPool:
    """Distinct initializers of the loaded models, each held once. Thread-safe."""

    def __init__(self, *, min_bytes: int = DEFAULT_MIN_SHARED_BYTES) -> None:
        if min_bytes < 0:
            raise BadModelError(f"min_bytes must be >= 0, got {min_bytes}")
        self._min_bytes = min_bytes
        self._lock = threading.Lock()
        self._weights: weakref.WeakValueDictionary[tuple, SharedWeight] = (
            weakref.WeakValueDictionary()
        )

    def share(self, path: Path, options: ort.SessionOptions) -> tuple[SharedWeight, ...]:
        """Register the pooled copy of each of `path`'s large initializers on `options`.

        Returns the handles the session's owner must keep alive. Raises BadModelError when
        the file is not an ONNX model onnx can read.
        """
        try:
            model = onnx.load(str(path))
        except Exception as exc:  # onnx raises DecodeError, OSError, ValueError…
            raise BadModelError(f"{path} cannot be read as ONNX: {exc}") from exc
        handles = []
        for tensor in model.graph.initializer:
            if tensor.data_type == onnx.TensorProto.STRING:
                continue
            array = numpy_helper.to_array(tensor)
            if array.nbytes < self._min_bytes:
                continue
            handles.append(self._intern(tensor.name, np.ascontiguousarray(array)))
        del model
        for handle in handles:
            options.add_initializer(handle.key[0], handle.value)
        if handles:
            options.add_session_config_entry("session.disable_prepacking", "1")
        return tuple(handles)

    def statistics(self) -> WeightPoolStatistics:
        with self._lock:
            weights = list(self._weights.values())
        return WeightPoolStatistics(distinct_weights=len(weights),
                                    shared_bytes=sum(w.nbytes for w in weights))

    def _intern(self, name: str, array: np.ndarray) -> SharedWeight:
        digest = hashlib.sha256(array.reshape(-1).view(np.uint8)).hexdigest()
        key = (name, array.dtype.str, tuple(array.shape), digest)
        with self._lock:
            weight = self._weights.get(key)
            if weight is None:
                weight = SharedWeight(key, array)
                self._weights[key] = weight
            return weight
