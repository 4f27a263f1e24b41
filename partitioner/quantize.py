"""Quantised device models (placement 1) and lossy codecs at the cut (placement 3), each
measured against an evaluation set and held to an accuracy budget.

Tools, both from onnxruntime (no further dependency):
- int8: `onnxruntime.quantization.quantize_static`, QDQ format, int8 weights per channel and
  int8 activations, calibrated (MinMax) on samples of the evaluation set, after onnxruntime's
  `quant_pre_process` (shape inference, constant folding). Static rather than
  dynamic: the device then runs integer kernels with no range computed per request.
- fp16: `onnxruntime.transformers.float16.convert_float_to_float16` with the inputs and
  outputs kept float32, so a quantised head plugs into the fp32 tail and the plan's input
  specs unchanged. It is the converter onnxconverter-common's float16 module grew from, now
  kept beside the runtime that executes its output; onnxconverter-common would add a package
  for the same code.

`quantize_plan` works on a written plan folder: it writes `full.<mode>.onnx` and
`cuts/<id>/head.<mode>.onnx` beside the fp32 files (what `Config(quantized=mode)` loads on
the device), measures on the evaluation set the top-1 drop of each against the fp32 plan and
the drop of each lossy codec on each cut's crossing tensors, and records it all in plan.json
(`accuracy`; per cut `quantized`, `codecs`, `lossy_codec`). Only choices within
`accuracy_budget` are marked usable; `lossy_codec` is the one moving the fewest bytes.

    >>> quantize_plan("plans/digits", mode="int8", data=load_eval_set("cal.npz"),
    ...               accuracy_budget=0.01)["quantized"]["int8"]["size_ratio"]  # doctest: +SKIP
    0.27
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import version_converter

from edgecut.accuracy import EvalSet, top1, top1_accuracy
from edgecut.errors import BadModelError, BadPlanError, UserInputError
from edgecut.protocol.codecs import LOSSY_CODECS, decode_tensor, encode_tensor

__all__ = ["QUANTIZE_MODES", "quantize_model", "quantize_plan", "quantized_path"]

QUANTIZE_MODES = ("int8", "fp16")
_CALIBRATION_SAMPLES = 200


def quantized_path(path: str | os.PathLike[str], mode: str) -> Path:
    """Where the `mode` version of a model file lives: head.onnx -> head.int8.onnx."""
    p = Path(path)
    return p.with_name(f"{p.stem}.{mode}{p.suffix}")


class _Reader:
    """onnxruntime's CalibrationDataReader over feeds (one sample each)."""

    def __init__(self, feeds: Sequence[Mapping[str, np.ndarray]]) -> None:
        self._feeds = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        feed = next(self._feeds, None)
        return None if feed is None else dict(feed)

    def rewind(self) -> None:  # pragma: no cover - called by some calibrators only
        pass


def quantize_model(source: str | os.PathLike[str], target: str | os.PathLike[str], mode: str,
                   *, calibration: Sequence[Mapping[str, np.ndarray]] = ()) -> Path:
    """Write the `mode` ("int8" or "fp16") version of `source` to `target`.

    int8 needs `calibration` feeds (the model's inputs, one sample each).
    """
    if mode not in QUANTIZE_MODES:
        raise UserInputError(f"quantize mode must be one of {', '.join(QUANTIZE_MODES)}, "
                             f"got {mode!r}")
    out = Path(target)
    if mode == "fp16":
        from onnxruntime.transformers.float16 import convert_float_to_float16

        with warnings.catch_warnings():
            # It warns of each weight it clamps into fp16's range; the drop is measured anyway.
            warnings.simplefilter("ignore")
            model = convert_float_to_float16(onnx.load(str(source)), keep_io_types=True)
        onnx.save(model, str(out))
        return out
    if not calibration:
        raise UserInputError("int8 quantisation needs calibration data: give an evaluation set "
                             "(--data EVAL)")
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    # The quantiser's advice goes to the root logger at WARNING, once per model: not ours.
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            # onnxruntime's pre-processing folds weights held in Constant nodes (exporters such
            # as Paddle2ONNX write them so) into initializers, which alone get quantised: on
            # PaddleOCR's classifier the int8 file was 29 % larger than fp32 without it, 45 %
            # smaller with it. A model it cannot handle is quantised as it is.
            given = _at_opset_13(Path(source), Path(tmp))
            prepared = Path(tmp) / "prepared.onnx"
            try:
                quant_pre_process(str(given), str(prepared), skip_symbolic_shape=True)
            except Exception:  # any failure: fall back to the model as given
                prepared = given
            quantize_static(str(prepared), str(out), _Reader(list(calibration)),  # type: ignore[arg-type]
                            quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
    except Exception as exc:  # onnxruntime's quantiser raises plain exceptions of many kinds
        raise BadModelError(f"{source}: onnxruntime could not quantise it to int8: {exc}") from exc
    finally:
        logging.disable(previous)
    return out


def _at_opset_13(source: Path, tmp: Path) -> Path:
    """`source`, converted to opset 13 when older: per-channel DequantizeLinear (its `axis`)
    needs 13 (PaddleOCR's classifier is opset 11). Left as it is if conversion fails."""
    model = onnx.load(str(source))
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
    if opset >= 13:
        return source
    try:
        converted = version_converter.convert_version(model, 13)
    except Exception:  # the converter's failures have no common class
        return source
    target = tmp / "opset13.onnx"
    onnx.save(converted, str(target))
    return target


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _feeds(session: ort.InferenceSession, samples: Sequence[Mapping[str, np.ndarray]]
           ) -> list[dict[str, np.ndarray]]:
    names = [i.name for i in session.get_inputs()]
    return [{n: s[n] for n in names} for s in samples]


def _scores(full: ort.InferenceSession, head: ort.InferenceSession | None,
            tail: ort.InferenceSession | None, samples: Sequence[Mapping[str, np.ndarray]],
            output: str, codec: str | None = None) -> tuple[np.ndarray, int, int]:
    """`output` per sample through head then tail (or `full`), crossing tensors through
    `codec`; with (raw bytes, wire bytes) of the crossing tensors."""
    rows, raw, wire = [], 0, 0
    for sample in samples:
        if head is None and tail is None:
            rows.append(full.run([output], dict(_feeds(full, [sample])[0]))[0])
            continue
        values = dict(sample)
        if head is not None:
            names = [o.name for o in head.get_outputs()]
            values.update(zip(names, head.run(names, _feeds(head, [sample])[0]), strict=True))
        if tail is None:
            rows.append(values[output])
            continue
        feed = {}
        for name in (i.name for i in tail.get_inputs()):
            array = values[name]
            raw += array.nbytes
            if codec is not None and array.dtype == np.float32 and np.isfinite(array).all():
                enc = encode_tensor(array, codec)
                wire += len(enc.data)
                array = decode_tensor(enc.data, datatype=enc.datatype, shape=enc.shape,
                                      parameters=enc.parameters, max_nbytes=1 << 34).copy()
            else:
                wire += array.nbytes
            feed[name] = array
        outs = [o.name for o in tail.get_outputs()]
        result = dict(zip(outs, tail.run(outs, feed), strict=True))
        rows.append(result[output] if output in result else values[output])
    return np.concatenate(rows), raw, wire


def quantize_plan(plan_dir: str | os.PathLike[str], *, mode: str | None, data: EvalSet,
                  accuracy_budget: float | None = None, output: str | None = None,
                  codecs: Sequence[str] = LOSSY_CODECS) -> dict[str, Any]:
    """Quantise a plan's device models (`mode`; None: none) and measure lossy codecs at its
    cuts on `data`; records the figures in plan.json and returns its `accuracy` entry."""
    directory = Path(plan_dir)
    plan_path = directory / "plan.json"
    try:
        plan = json.loads(plan_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise BadPlanError(f"{plan_path}: cannot read the plan ({exc})") from exc
    if accuracy_budget is not None and not 0 <= accuracy_budget <= 1:
        raise UserInputError(f"accuracy budget must be in [0, 1], got {accuracy_budget}")
    full_path = directory / plan["model"]["file"]
    full = _session(full_path)
    output = output or full.get_outputs()[0].name
    samples = data.samples()
    shapes = {k: tuple(v) for k, v in (plan.get("input_shapes") or {}).items()}
    bad = [k for k, s in shapes.items() if k in data.inputs and tuple(samples[0][k].shape) != s]
    if bad:
        raise UserInputError(f"evaluation set {data.source}: samples of {bad} have shape "
                             f"{[list(samples[0][k].shape) for k in bad]}, the plan's are "
                             f"{[list(shapes[k]) for k in bad]}")
    baseline_scores, _, _ = _scores(full, None, None, samples, output)
    truth = data.truth if data.truth is not None else top1(baseline_scores)
    baseline = top1_accuracy(top1(baseline_scores), truth)

    def within(drop: float) -> bool:
        return accuracy_budget is None or drop <= accuracy_budget + 1e-12

    summary: dict[str, Any] = {
        "data": data.source, "samples": len(data), "output": output,
        "metric": "top-1 accuracy" if data.truth is not None else "agreement with the full model",
        "budget": accuracy_budget, "baseline": baseline,
        "quantized": dict((plan.get("accuracy") or {}).get("quantized") or {})}
    calibration = samples[:_CALIBRATION_SAMPLES]
    if mode is not None:
        target = quantized_path(full_path, mode)
        quantize_model(full_path, target, mode, calibration=_feeds(full, calibration))
        scores, _, _ = _scores(_session(target), None, None, samples, output)
        summary["quantized"][mode] = _figures(full_path, target, baseline, scores, truth,
                                              directory, within)
    for cut in plan["cuts"]:
        head_file = directory / cut["head"] if cut.get("head") else None
        tail_file = directory / cut["tail"] if cut.get("tail") else None
        head = _session(head_file) if head_file else None
        tail = _session(tail_file) if tail_file else None
        if mode is not None and head_file is not None:
            target = quantized_path(head_file, mode)
            quantize_model(head_file, target, mode, calibration=_feeds(head, calibration))
            scores, _, _ = _scores(full, _session(target), tail, samples, output)
            cut["quantized"] = {**(cut.get("quantized") or {}),
                                mode: _figures(head_file, target, baseline, scores, truth,
                                               directory, within)}
        if tail is not None and cut.get("crossing"):
            measured = {}
            for codec in codecs:
                scores, raw, wire = _scores(full, head, tail, samples, output, codec)
                drop = baseline - top1_accuracy(top1(scores), truth)
                measured[codec] = {"accuracy_drop": round(drop, 6),
                                   "wire_ratio": round(raw / wire, 3) if wire else None,
                                   "within_budget": within(drop)}
            cut["codecs"] = measured
            usable = [c for c, m in measured.items() if m["within_budget"]]
            cut["lossy_codec"] = max(usable, key=lambda c: measured[c]["wire_ratio"] or 0,
                                     default=None)
    plan["accuracy"] = summary
    plan_path.write_text(json.dumps(plan, indent=2) + "\n")
    return summary


def _figures(source: Path, target: Path, baseline: float, scores: np.ndarray,
             truth: np.ndarray, directory: Path, within: Any) -> dict[str, Any]:
    drop = baseline - top1_accuracy(top1(scores), truth)
    size, fp32 = target.stat().st_size, source.stat().st_size
    return {"file": target.relative_to(directory).as_posix(), "bytes": size, "fp32_bytes": fp32,
            "size_ratio": round(size / fp32, 4), "accuracy_drop": round(drop, 6),
            "within_budget": bool(within(drop))}
