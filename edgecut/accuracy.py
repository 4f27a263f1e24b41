"""Evaluation sets and the accuracy of a model on them: what every lossy choice is held to.

An evaluation set is an `.npz` file, or a folder of `.npy` files, holding one array per model
input (samples along the first axis) and, optionally:

    labels      int [N]: the true class of each sample; the metric is top-1 accuracy
    reference   [N] ints or [N, K] scores: a reference model's answers; without labels the
                metric is agreement with its top-1 (where neither is given, the strong
                model's own top-1 is the reference: `truth`)

    >>> save_eval_set("digits.npz", {"x": x}, labels=y)                 # doctest: +SKIP
    >>> data = load_eval_set("digits.npz")                              # doctest: +SKIP
    >>> top1_accuracy(predict_top1("small.onnx", data), data.labels)    # doctest: +SKIP
    0.93

A model runs on the whole set at once when its first input dimension is symbolic, else one
sample at a time. Used by `edgecut cascade calibrate`, `edgecut plan --quantize` and the
benchmarks; onnxruntime and numpy only.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgecut.errors import BadInputError, BadModelError

__all__ = ["LABELS", "REFERENCE", "EvalSet", "agreement", "load_eval_set", "predict_scores",
           "predict_top1", "save_eval_set", "top1", "top1_accuracy"]

LABELS = "labels"
REFERENCE = "reference"


@dataclass(frozen=True, slots=True, kw_only=True)
class EvalSet:
    """Inputs by name (samples along axis 0), with labels and/or reference answers."""

    inputs: Mapping[str, np.ndarray]
    labels: np.ndarray | None = None
    reference: np.ndarray | None = None
    source: str = field(default="(in memory)", compare=False)

    def __post_init__(self) -> None:
        problems = []
        if not self.inputs:
            problems.append("it holds no input arrays")
        sizes = {name: int(np.asarray(a).shape[0]) if np.ndim(a) else 0
                 for name, a in self.inputs.items()}
        for name, array in ((LABELS, self.labels), (REFERENCE, self.reference)):
            if array is not None:
                sizes[name] = int(array.shape[0]) if np.ndim(array) else 0
        if len(set(sizes.values())) > 1:
            problems.append(f"arrays hold different numbers of samples: {sizes}")
        if self.labels is not None and (self.labels.ndim != 1 or self.labels.dtype.kind not in "iu"):
            problems.append(f"{LABELS!r} must be integers of shape [N], got "
                            f"{self.labels.dtype} {list(self.labels.shape)}")
        if any(v == 0 for v in sizes.values()):
            problems.append("it holds no samples")
        if problems:
            raise BadInputError(f"evaluation set {self.source}: " + "; ".join(problems) +
                                f" (expected one array per model input, samples along the "
                                f"first axis, and optionally {LABELS!r} or {REFERENCE!r})")

    def __len__(self) -> int:
        return int(next(iter(self.inputs.values())).shape[0])

    @property
    def truth(self) -> np.ndarray | None:
        """The answers to score against: labels, else the reference's top-1, else None."""
        if self.labels is not None:
            return self.labels
        if self.reference is not None:
            return top1(self.reference)
        return None

    def subset(self, index: np.ndarray) -> EvalSet:
        """The samples at `index` (an index array or a boolean mask)."""
        return EvalSet(inputs={k: v[index] for k, v in self.inputs.items()},
                       labels=None if self.labels is None else self.labels[index],
                       reference=None if self.reference is None else self.reference[index],
                       source=self.source)

    def split(self, fraction: float, *, seed: int = 0) -> tuple[EvalSet, EvalSet]:
        """Two disjoint parts, the first with `fraction` of the samples (shuffled by `seed`)."""
        if not 0 < fraction < 1:
            raise BadInputError(f"split fraction must be in (0, 1), got {fraction}")
        order = np.random.default_rng(seed).permutation(len(self))
        k = round(len(self) * fraction)
        return self.subset(np.sort(order[:k])), self.subset(np.sort(order[k:]))

    def samples(self) -> list[dict[str, np.ndarray]]:
        """One feed per sample, each keeping the batch axis (length 1)."""
        return [{k: v[i:i + 1] for k, v in self.inputs.items()} for i in range(len(self))]


def load_eval_set(path: str | os.PathLike[str]) -> EvalSet:
    """Read an evaluation set from an `.npz` file or a folder of `.npy` files."""
    p = Path(path)
    arrays: dict[str, np.ndarray] = {}
    if p.is_dir():
        files = sorted(p.glob("*.npy"))
        if not files:
            raise BadInputError(f"{p}: no .npy files in this folder; an evaluation set folder "
                                f"holds NAME.npy per input and optionally labels.npy")
        for f in files:
            arrays[f.stem] = _load_npy(f)
    elif p.is_file():
        try:
            with np.load(p, allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
        except (OSError, ValueError) as exc:
            raise BadInputError(f"{p}: not a readable .npz file ({exc}); write one with "
                                f"numpy.savez or edgecut.accuracy.save_eval_set") from exc
    else:
        raise BadInputError(f"{p}: no such evaluation set; give an .npz file or a folder of "
                            f".npy files")
    labels = arrays.pop(LABELS, None)
    reference = arrays.pop(REFERENCE, None)
    return EvalSet(inputs=arrays, labels=labels, reference=reference, source=str(p))


def _load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise BadInputError(f"{path}: not a readable .npy file ({exc})") from exc


def save_eval_set(path: str | os.PathLike[str], inputs: Mapping[str, np.ndarray], *,
                  labels: np.ndarray | None = None,
                  reference: np.ndarray | None = None) -> Path:
    """Write an evaluation set: `.npz` when `path` ends so, else a folder of `.npy` files."""
    data = EvalSet(inputs=dict(inputs), labels=labels, reference=reference, source=str(path))
    arrays = dict(data.inputs)
    for name, array in ((LABELS, labels), (REFERENCE, reference)):
        if array is not None:
            arrays[name] = array
    p = Path(path)
    if p.suffix == ".npz":
        p.parent.mkdir(parents=True, exist_ok=True)
        np.savez(p, **arrays)
    else:
        p.mkdir(parents=True, exist_ok=True)
        for name, array in arrays.items():
            np.save(p / f"{name}.npy", array, allow_pickle=False)
    return p


def top1(scores: np.ndarray) -> np.ndarray:
    """The top class per sample: argmax over the last axis ([N] ints pass through)."""
    array = np.asarray(scores)
    if array.ndim == 1 and array.dtype.kind in "iu":
        return array.astype(np.int64)
    if array.ndim < 2:
        raise BadInputError(f"scores must be [N, classes] (or [N] class ids), got shape "
                            f"{list(array.shape)}")
    return array.reshape(array.shape[0], -1).argmax(axis=1)


def top1_accuracy(predicted: np.ndarray, truth: np.ndarray) -> float:
    """The share of samples whose predicted class equals the truth."""
    predicted, truth = np.asarray(predicted), np.asarray(truth)
    if predicted.shape != truth.shape or predicted.ndim != 1:
        raise BadInputError(f"predicted and true classes must both be [N], got "
                            f"{list(predicted.shape)} and {list(truth.shape)}")
    return float((predicted == truth).mean()) if truth.size else 0.0


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    """The share of samples where two models' top-1 answers agree."""
    return top1_accuracy(top1(a), top1(b))


Runner = Callable[[Mapping[str, np.ndarray]], np.ndarray]


def predict_scores(model: str | os.PathLike[str] | bytes | Runner, data: EvalSet, *,
                   output: str | None = None, batch: bool | None = None) -> np.ndarray:
    """The scores `model` gives each sample of `data`, stacked: [N, ...].

    `model` is an ONNX file (or its bytes), run with onnxruntime on one thread, or any
    callable from a feed to that feed's scores (a Predictor's run, say). `output` names the
    scores (default: the first output). `batch` runs the whole set in one call (default: when
    the model's first input dim is symbolic; a callable runs one sample at a time).
    """
    if callable(model):
        return np.concatenate([np.asarray(model(feed)) for feed in data.samples()])
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    source = model if isinstance(model, bytes) else str(model)
    try:
        session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own classes for unreadable models
        raise BadModelError(f"{'model bytes' if isinstance(model, bytes) else model}: onnxruntime "
                            f"cannot load it: {exc}") from exc
    names = [i.name for i in session.get_inputs()]
    missing = [n for n in names if n not in data.inputs]
    if missing:
        raise BadInputError(f"evaluation set {data.source} has no arrays for the model's inputs "
                            f"{missing} (it has {sorted(data.inputs)})")
    outputs = [o.name for o in session.get_outputs()]
    if output is not None and output not in outputs:
        raise BadInputError(f"the model has no output {output!r}; its outputs are {outputs}")
    wanted = [output or outputs[0]]
    if batch is None:
        first = session.get_inputs()[0].shape
        batch = bool(first) and not isinstance(first[0], int)
    if batch:
        return np.asarray(session.run(wanted, {n: data.inputs[n] for n in names})[0])
    return np.concatenate([session.run(wanted, {n: feed[n] for n in names})[0]
                           for feed in data.samples()])


def predict_top1(model: str | os.PathLike[str] | bytes | Runner, data: EvalSet, *,
                 output: str | None = None) -> np.ndarray:
    """The top-1 class `model` gives each sample of `data`."""
    return top1(predict_scores(model, data, output=output))
