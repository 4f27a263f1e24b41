"""One model version from its file to a LoadedModel: session options, shared weights, the
onnxruntime session, tensor specs, and the check against config.pbtxt.

    >>> model = load_version("chain_cnn", 1, Path("repo/chain_cnn/1/model.onnx"),  # doctest: +SKIP
    ...                      settings=ModelSettings(), config=ModelConfig(), intra_op_threads=1)

Weights are pooled (edgecut.cloud.shared_weights) only when the caller passes a pool, which
the repository does for the models of one plan (`plan_family`): pooling turns onnxruntime's
weight pre-packing off, which costs a model with nothing to share up to 3x per batch.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import onnxruntime as ort

from edgecut.cpu_budget import intra_op_threads_for, read_cpu_budget
from edgecut.errors import BadModelError
from edgecut.protocol.model_config_pb2 import ModelConfig

from .canary import VersionTraffic
from .forwarding import attach_forwarding
from .loaded_model import LoadedModel, TrackedSession, check_against_config, tensor_spec
from .model_config import ModelSettings
from .providers import providers_for, session_options
from .shared_weights import SharedWeight, WeightPool

__all__ = ["has_plan_siblings", "load_version", "plan_family"]

logger = logging.getLogger(__name__)


def load_version(name: str, version: int, path: Path, *, settings: ModelSettings,
                 config: ModelConfig, intra_op_threads: int = 0,
                 pool: WeightPool | None = None) -> LoadedModel:
    """Load `path` as version `version` of model `name`; BadModelError says why it cannot."""
    if not path.is_file():
        raise BadModelError(f"{path} not found")
    intra_op_threads = _chosen_threads(name, version, settings, intra_op_threads)
    options = session_options(intra_op_threads=intra_op_threads)
    weights: tuple[SharedWeight, ...] = ()
    if pool is not None:
        try:
            weights = pool.share(path, options)
        except BadModelError:
            # onnxruntime will say what is wrong below
            options = session_options(intra_op_threads=intra_op_threads)
    try:
        session = ort.InferenceSession(str(path), sess_options=options,
                                       providers=providers_for())
    except Exception as exc:  # onnxruntime raises its own pybind classes and RuntimeError
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BadModelError(f"{path} cannot be loaded by onnxruntime: {first_line}") from exc
    inputs = tuple(tensor_spec(a) for a in session.get_inputs())
    outputs = tuple(tensor_spec(a) for a in session.get_outputs())
    check_against_config(path, config, settings, inputs, outputs)
    strings = [spec.name for spec in inputs if spec.datatype == "BYTES"]
    if strings:
        logger.warning("%s: input(s) %s are strings (BYTES), which edgecut does not decode "
                       "yet: requests to this model will be refused", path,
                       ", ".join(map(repr, strings)))
    traffic = VersionTraffic(name, version)
    loaded = LoadedModel(
        name=name, version=version, path=path,
        session=TrackedSession(session, traffic, batched=settings.max_batch_size > 0),
        inputs=inputs, outputs=outputs, settings=settings, traffic=traffic,
        keep_alive=(options, *weights),
    )
    # A chain stage deployed with its next hop (forward.json) answers for the rest of the chain.
    return attach_forwarding(loaded)


def _chosen_threads(name: str, version: int, settings: ModelSettings,
                    server_threads: int) -> int:
    """onnxruntime's intra-op threads for one version, logged with why: config.pbtxt's
    intra_op_thread_count, else the server's setting, else the CPUs this process may use
    shared by the model's instances (edgecut.cpu_budget)."""
    if settings.intra_op_threads is not None:  # the config's own, as Triton's backend reads it
        threads, why = settings.intra_op_threads, "config.pbtxt intra_op_thread_count"
    elif server_threads > 0:
        threads, why = server_threads, "the server's thread setting"
    else:
        budget = read_cpu_budget()
        threads = intra_op_threads_for(budget, instances=settings.instance_count)
        why = (f"{budget.describe()}, shared by {settings.instance_count} instance"
               f"{'' if settings.instance_count == 1 else 's'}")
    if threads:
        logger.info("model %r version %d: %d onnxruntime intra-op thread%s per run (%s)",
                    name, version, threads, "" if threads == 1 else "s", why)
    return threads


def plan_family(name: str) -> str:
    """`chain_cnn` for `chain_cnn` and for its tails `chain_cnn.cut3` (edgecut deploy's names).

    >>> plan_family("chain_cnn.cut3"), plan_family("chain_cnn")
    ('chain_cnn', 'chain_cnn')
    """
    return re.sub(r"\.cut\d+$", "", name)


def has_plan_siblings(root: Path, name: str) -> bool:
    """Whether another model folder under `root` comes from the same plan as `name`."""
    family = plan_family(name)
    try:
        return any(p.is_dir() and p.name != name and plan_family(p.name) == family
                   for p in root.iterdir())
    except OSError:
        return False
