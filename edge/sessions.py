"""The device's onnxruntime sessions for a plan's models, and the one place their errors
become edgecut's.

A Predictor loads what its mode can run before the first request (the full model for local
runs and fallbacks, the heads of the cuts it may switch to), so that a switch or a fallback
never waits for a model to load.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as _ort_state

from edgecut.cpu_budget import read_cpu_budget
from edgecut.errors import BadInputError, BadModelError, DeadlineExceededError

__all__ = ["ORT_ERRORS", "DeviceSession", "device_threads", "load_session",
           "threads_mismatch"]

ORT_ERRORS: tuple[type[BaseException], ...] = (RuntimeError, *(
    getattr(_ort_state, name) for name in (
        "Fail", "InvalidArgument", "NoSuchFile", "NoModel", "EngineError", "RuntimeException",
        "InvalidProtobuf", "ModelLoaded", "NotImplemented", "InvalidGraph", "EPFail")
    if hasattr(_ort_state, name)))


class DeviceSession:
    """One model file in onnxruntime, with its input and output names."""

    def __init__(self, path: Path, session: ort.InferenceSession, what: str) -> None:
        self.path = path
        self.what = what  # "the full model of 'fpn'", "the head of cut 3" ...
        self.session = session
        self.input_names = [i.name for i in session.get_inputs()]
        self.output_names = [o.name for o in session.get_outputs()]

    def run(self, names: list[str] | None, feed: Mapping[str, np.ndarray], *,
            deadline_s: float | None = None) -> list[np.ndarray]:
        """Run on `feed` (only the inputs this model reads are passed).

        With `deadline_s` (seconds from now), onnxruntime is asked to stop at the deadline,
        and DeadlineExceededError is raised: used where a fallback must not overrun its run.
        """
        inputs = {n: feed[n] for n in self.input_names}
        options = None
        timer = None
        if deadline_s is not None:
            if deadline_s <= 0:
                raise DeadlineExceededError(f"no time left to run {self.what}")
            options = ort.RunOptions()
            timer = threading.Timer(deadline_s, _terminate, (options,))
            timer.daemon = True
            timer.start()
        try:
            return list(self.session.run(names, inputs, options))
        except ORT_ERRORS as exc:
            if options is not None and options.terminate:
                raise DeadlineExceededError(f"{self.what} did not finish within the "
                                            f"{deadline_s:.3g} s left of the deadline") from exc
            if isinstance(exc, getattr(_ort_state, "InvalidArgument", ())):
                raise BadInputError(f"onnxruntime rejected the inputs of {self.what}: "
                                    f"{exc}") from exc
            raise BadModelError(f"onnxruntime failed to run {self.what}: {exc}") from exc
        finally:
            if timer is not None:
                timer.cancel()


def _terminate(options: ort.RunOptions) -> None:
    options.terminate = True


def device_threads(requested: int) -> int:
    """The intra-op threads a device session runs: `requested`, or for 0 the CPUs this
    process may use (its affinity and cgroup CPU quota, edgecut.cpu_budget).

    onnxruntime's own default is one thread per physical core of the machine, whatever the
    process may use: in a container held to one CPU its threads would take turns on it.
    """
    return requested if requested > 0 else read_cpu_budget().cpus


def threads_mismatch(planned: int | None, used: int, plan_dir: Path) -> str | None:
    """What to tell a user whose device sessions run other threads than the plan's device
    times are predicted for (the adaptive choice compares those times); None when they
    agree or the plan does not say."""
    if planned is None or planned == used:
        return None
    return (f"{plan_dir}: the plan's device times are predicted for {planned} onnxruntime "
            f"thread{'s' if planned != 1 else ''}, but this Predictor runs {used}: its choice "
            f"of cut may be off. Set Config(intra_op_threads={planned}), or re-profile the "
            f"device where it runs (edgecut profile device) and re-plan")


def load_session(path: Path, what: str, *, intra_op_threads: int) -> DeviceSession:
    """`path` in onnxruntime on the CPU, with `device_threads(intra_op_threads)` threads;
    BadModelError when it cannot load."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = device_threads(intra_op_threads)
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except ORT_ERRORS as exc:
        raise BadModelError(f"{path}: onnxruntime cannot load it: {exc}") from exc
    return DeviceSession(path, session, what)
