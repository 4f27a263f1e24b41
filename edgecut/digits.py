"""Real labelled data and models of different strength trained on it, as ONNX.

scikit-learn ships the UCI handwritten digits (1,797 8x8 images, 10 classes) inside its wheel,
so tests and benchmarks get real labels without a download. The models are trained here with
scikit-learn and written with onnx.helper from their weights, so the suite builds them itself:

    tiny   logistic regression on the image pooled to 4x4 (16 features): the weakest
    small  logistic regression on the 64 pixels
    big    an MLP 64-128-64-10 (ReLU): the strongest
    exits  the big MLP with an early exit: a classifier on its first hidden layer, as the
           extra output `exit_probs` beside `probs`

Every model takes `x` [N, 64] float32 (pixels / 16) and answers `probs` [N, 10] (softmax).

    >>> data = load_digits_split()                              # doctest: +SKIP
    >>> models = train_models(data)                             # doctest: +SKIP
    >>> sorted(models)                                          # doctest: +SKIP
    ['big', 'exits', 'small', 'tiny']

Needs scikit-learn (the `test` extra); nothing on the device side imports this module.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["EXIT_OUTPUT", "INPUT", "OUTPUT", "DigitsSplit", "load_digits_split", "top1_accuracy",
           "train_models", "trained"]

INPUT = "x"
OUTPUT = "probs"
EXIT_OUTPUT = "exit_probs"
_OPSET = 17


@dataclass(frozen=True, slots=True, kw_only=True)
class DigitsSplit:
    """The digits, shuffled once by `seed` and split: train, calibrate, test (held out)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_cal: np.ndarray
    y_cal: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def load_digits_split(*, seed: int = 0, calibration: float = 0.25,
                      test: float = 0.25) -> DigitsSplit:
    """sklearn's bundled digits as float32 [N, 64] in [0, 1] with int64 labels, split."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(y))
    x, y = x[order], y[order]
    n_test = round(len(y) * test)
    n_cal = round(len(y) * calibration)
    n_train = len(y) - n_test - n_cal
    return DigitsSplit(x_train=x[:n_train], y_train=y[:n_train],
                       x_cal=x[n_train:n_train + n_cal], y_cal=y[n_train:n_train + n_cal],
                       x_test=x[n_train + n_cal:], y_test=y[n_train + n_cal:])


@functools.lru_cache(maxsize=2)
def trained(seed: int = 0) -> tuple[DigitsSplit, dict[str, bytes]]:
    """The split and the four models as serialised ONNX, trained once per process and seed
    (the tests of several modules share them)."""
    data = load_digits_split(seed=seed)
    return data, {k: m.SerializeToString() for k, m in train_models(data, seed=seed).items()}


def _pool_matrix() -> np.ndarray:
    """[64, 16]: the mean of each 2x2 block of the 8x8 image, as one matrix product."""
    pool = np.zeros((64, 16), np.float32)
    for r in range(8):
        for c in range(8):
            pool[r * 8 + c, (r // 2) * 4 + c // 2] = 0.25
    return pool


def train_models(data: DigitsSplit, *, seed: int = 0) -> dict[str, onnx.ModelProto]:
    """The four models (see the module docstring), trained on `data.x_train`."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier
    from threadpoolctl import threadpool_limits

    x, y = data.x_train, data.y_train
    pool = _pool_matrix()
    # One BLAS thread: on a shared, loaded machine more threads made the MLP 40x slower.
    with warnings.catch_warnings(), threadpool_limits(limits=1):
        # A capped number of iterations is the point (fast, deterministic), not a problem.
        warnings.simplefilter("ignore", ConvergenceWarning)
        tiny = LogisticRegression(max_iter=300, C=0.05).fit(x @ pool, y)
        small = LogisticRegression(max_iter=500, C=0.05).fit(x, y)
        big = MLPClassifier(hidden_layer_sizes=(128, 64), max_iter=300, random_state=seed,
                            alpha=1e-3).fit(x, y)
        hidden = np.maximum(x @ big.coefs_[0] + big.intercepts_[0], 0.0)
        exit_head = LogisticRegression(max_iter=300, C=0.01).fit(hidden, y)
    layers = [(w.astype(np.float32), b.astype(np.float32))
              for w, b in zip(big.coefs_, big.intercepts_, strict=True)]
    return {
        "tiny": _linear_model("digits_tiny", [(pool, np.zeros(16, np.float32)),
                                              _weights(tiny)], relu=False),
        "small": _linear_model("digits_small", [_weights(small)], relu=False),
        "big": _linear_model("digits_big", layers, relu=True),
        "exits": _linear_model("digits_exits", layers, relu=True, exit_after=0,
                               exit_layer=_weights(exit_head)),
    }


def _weights(model: object) -> tuple[np.ndarray, np.ndarray]:
    return (np.asarray(model.coef_, np.float32).T.copy(),  # type: ignore[attr-defined]
            np.asarray(model.intercept_, np.float32))  # type: ignore[attr-defined]


def _linear_model(name: str, layers: list[tuple[np.ndarray, np.ndarray]], *, relu: bool,
                  exit_after: int | None = None,
                  exit_layer: tuple[np.ndarray, np.ndarray] | None = None) -> onnx.ModelProto:
    """MatMul + Add per layer (ReLU between them when `relu`), softmax at the end; with
    `exit_after`, a classifier on that layer's activation gives `exit_probs` too."""
    nodes, inits = [], []
    value = INPUT
    outputs = [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["N", 10])]

    def dense(x: str, w: np.ndarray, b: np.ndarray, tag: str) -> str:
        inits.extend([numpy_helper.from_array(w, f"{tag}_w"), numpy_helper.from_array(b, f"{tag}_b")])
        nodes.append(helper.make_node("MatMul", [x, f"{tag}_w"], [f"{tag}_mm"], name=f"{tag}_matmul"))
        nodes.append(helper.make_node("Add", [f"{tag}_mm", f"{tag}_b"], [f"{tag}_out"],
                                      name=f"{tag}_add"))
        return f"{tag}_out"

    for i, (w, b) in enumerate(layers):
        value = dense(value, w, b, f"l{i}")
        if relu and i < len(layers) - 1:
            nodes.append(helper.make_node("Relu", [value], [f"h{i}"], name=f"relu{i}"))
            value = f"h{i}"
            if exit_after == i and exit_layer is not None:
                logits = dense(value, *exit_layer, "exit")
                nodes.append(helper.make_node("Softmax", [logits], [EXIT_OUTPUT], axis=-1,
                                              name="exit_softmax"))
                outputs.append(helper.make_tensor_value_info(EXIT_OUTPUT, TensorProto.FLOAT,
                                                             ["N", 10]))
    nodes.append(helper.make_node("Softmax", [value], [OUTPUT], axis=-1, name="softmax"))
    graph = helper.make_graph(nodes, name,
                              [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["N", 64])],
                              outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", _OPSET)],
                              producer_name="edgecut.digits")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def top1_accuracy(model: onnx.ModelProto, x: np.ndarray, y: np.ndarray,
                  output: str = OUTPUT) -> float:
    """Top-1 accuracy of `model` on `x` against `y`, in one batched onnxruntime run."""
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (probs,) = session.run([output], {INPUT: x})
    return float((probs.argmax(axis=1) == y).mean())

