"""A model's config.pbtxt, read as Triton writes it, and the settings edgecut takes from it.

    REPO/tail/config.pbtxt
        name: "tail"
        platform: "onnxruntime_onnx"
        max_batch_size: 8
        version_policy: { latest: { num_versions: 2 } }
        dynamic_batching { preferred_batch_size: [4, 8] max_queue_delay_microseconds: 100 }
        instance_group [ { count: 2 kind: KIND_CPU } ]

    >>> config, settings = load_model_config(Path("REPO/tail"))            # doctest: +SKIP
    >>> settings.max_batch_size, settings.dynamic_batching.max_queue_delay_us  # doctest: +SKIP
    (8, 100)

`ModelSettings` is the frozen value the rest of the endpoint reads (the batcher, the
instance pool, the repository's version policy); the `ModelConfig` message is what the
ModelConfig RPC returns. A missing config.pbtxt gives Triton's field defaults: latest 1
version, no batching, two CPU instances, `model.onnx` (Triton would also auto-complete a batch
size from the model; edgecut serves it unbatched).

The text is parsed with Triton's own field names and numbers (edgecut.protocol's
model_config.proto, a subset of Triton's). A Triton field that edgecut does not read (say
`optimization` or `model_warmup`), or reads but does not apply (request priorities, a queue
timeout's DELAY action, parameters other than `intra_op_thread_count`), is logged as a
warning naming the file and ignored, so configs written for Triton load unchanged. Refused, as BadModelError
naming file:line: a name that is no field of Triton's either (a typo would otherwise load
the model with a default), and the settings without which the model would answer wrongly
(`sequence_batching`, `ensemble_scheduling`, `batch_input`/`batch_output`, `reshape`). Text
that is not valid protobuf text format is a BadModelError naming file:line:column. Values
are checked all at once, in one message.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from google.protobuf import text_format

from edgecut.errors import BadModelError
from edgecut.protocol.model_config_pb2 import ModelConfig, ModelInstanceGroup, ModelQueuePolicy

from .versions import VersionPolicy

__all__ = [
    "CONFIG_FILENAME",
    "DEFAULT_CPU_INSTANCES",
    "DEFAULT_MODEL_FILENAME",
    "DynamicBatchingSettings",
    "ModelSettings",
    "load_model_config",
    "parse_model_config",
    "settings_from_config",
]

logger = logging.getLogger(__name__)

CONFIG_FILENAME = "config.pbtxt"
DEFAULT_MODEL_FILENAME = "model.onnx"
# Triton's default for a model without instance_group on a machine without GPUs.
DEFAULT_CPU_INSTANCES = 2
PLATFORM = "onnxruntime_onnx"
BACKEND = "onnxruntime"

# Fields of Triton's model_config.proto (triton-inference-server/common, as of Triton 2.51)
# that edgecut's subset leaves out, by message: skipped with a warning, unless refused below.
_TRITON_ONLY_FIELDS = {
    "ModelConfig": frozenset({
        "batch_input", "batch_output", "optimization", "sequence_batching",
        "ensemble_scheduling", "cc_model_filenames", "model_warmup", "model_operations",
        "model_transaction_policy", "model_repository_agents", "response_cache",
        "model_metrics"}),
    "ModelInstanceGroup": frozenset({"rate_limiter", "secondary_devices"}),
    "ModelInput": frozenset({"is_non_linear_format_io"}),
    "ModelOutput": frozenset({"is_non_linear_format_io"}),
}
# Those a model served without would answer wrongly.
_REFUSED_FIELDS = {
    "sequence_batching": "a stateful model needs Triton's sequence batcher (correlation IDs, "
                         "start and end controls), which edgecut does not have",
    "ensemble_scheduling": "ensembles are not served; deploy each model of the pipeline",
    "batch_input": "edgecut does not add batch inputs to a model's inputs",
    "batch_output": "edgecut does not scatter batch outputs",
}
# config.pbtxt `parameters` that edgecut applies (as Triton's onnxruntime backend does).
INTRA_OP_PARAMETER = "intra_op_thread_count"


@dataclass(frozen=True, slots=True, kw_only=True)
class DynamicBatchingSettings:
    """`dynamic_batching { ... }`. `max_queue_size` 0 means unbounded (Triton's default)."""

    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_us: int = 0
    preserve_ordering: bool = False
    max_queue_size: int = 0
    default_timeout_us: int = 0  # 0: requests never time out in the queue
    timeout_action: Literal["reject", "delay"] = "reject"
    allow_timeout_override: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelSettings:
    """What edgecut takes from a model's config.pbtxt (Triton's defaults when absent).

    >>> ModelSettings().version_policy.describe(), ModelSettings().instance_count
    ('latest 1', 2)
    """

    max_batch_size: int = 0  # 0: the model has no batch dimension; requests are not batched
    dynamic_batching: DynamicBatchingSettings | None = None  # None: no dynamic batching
    version_policy: VersionPolicy = field(default_factory=VersionPolicy)
    instance_count: int = DEFAULT_CPU_INSTANCES  # sum of instance_group counts
    default_model_filename: str = DEFAULT_MODEL_FILENAME
    parameters: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    # parameters' intra_op_thread_count; None: the server's --threads
    intra_op_threads: int | None = None

    def __post_init__(self) -> None:
        problems = []
        if self.max_batch_size < 0:
            problems.append(f"max_batch_size must be >= 0, got {self.max_batch_size}")
        if self.instance_count < 1:
            problems.append(f"instance count must be >= 1, got {self.instance_count}")
        if not self.default_model_filename or "/" in self.default_model_filename:
            problems.append(f"default_model_filename must be a file name, got "
                            f"{self.default_model_filename!r}")
        if problems:
            raise BadModelError("; ".join(problems))


def load_model_config(model_dir: Path) -> tuple[ModelConfig, ModelSettings]:
    """Read MODEL_DIR/config.pbtxt (Triton's defaults when there is none).

    Raises BadModelError for a file that cannot be read or parsed, or with bad values.
    """
    model_dir = Path(model_dir)
    path = model_dir / CONFIG_FILENAME
    if not path.is_file():
        config = ModelConfig(name=model_dir.name)
    else:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise BadModelError(f"{path} cannot be read: {exc}") from exc
        config = parse_model_config(text, where=str(path))
    return config, settings_from_config(config, model_name=model_dir.name, where=str(path))


def parse_model_config(text: str, *, where: str = CONFIG_FILENAME) -> ModelConfig:
    """Parse config.pbtxt text; Triton fields edgecut does not know are warned about and skipped.

    >>> parse_model_config('max_batch_size: 4 optimization { graph { level: 1 } }').max_batch_size
    4
    """
    config = ModelConfig()
    parser = _RecordingParser()
    try:
        parser.ParseLines(text.split("\n"), config)
    except text_format.ParseError as exc:
        line, column = exc.GetLine(), exc.GetColumn()
        detail = str(exc).split(" : ", 1)[-1] if line else str(exc)
        raise BadModelError(
            f"{where}:{line}:{column}: {detail}; expected protobuf text format as Triton "
            f"writes it (e.g. max_batch_size: 8)"
        ) from exc
    problems = []
    for line, message_type, name in parser.skipped:
        message = message_type.removeprefix("inference.")
        if name in _REFUSED_FIELDS and message == "ModelConfig":
            problems.append(f"{where}:{line}: {name!r} is not served: {_REFUSED_FIELDS[name]}")
        elif name in _TRITON_ONLY_FIELDS.get(message, ()):
            logger.warning("%s:%d: field %r of %s is not read by edgecut; ignored",
                           where, line, name, message)
        else:
            problems.append(f"{where}:{line}: {name!r} is no field of {message} (Triton's "
                            f"model_config.proto){_did_you_mean(name, message_type)}")
    if problems:
        raise BadModelError("; ".join(problems))
    return config


def _did_you_mean(name: str, message_type: str) -> str:
    descriptor = ModelConfig.DESCRIPTOR.file.pool.FindMessageTypeByName(message_type)
    known = [f.name for f in descriptor.fields]
    known += _TRITON_ONLY_FIELDS.get(message_type.removeprefix("inference."), ())
    close = difflib.get_close_matches(name, known, n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def settings_from_config(config: ModelConfig, *, model_name: str,
                         where: str = CONFIG_FILENAME) -> ModelSettings:
    """Check `config` against the model's folder name and what edgecut serves; all problems
    are reported in one BadModelError naming `where`."""
    problems: list[str] = []
    if config.name and config.name != model_name:
        problems.append(f"name {config.name!r} does not match the model folder {model_name!r}; "
                        f"fix the name or leave it out")
    if config.platform not in ("", PLATFORM) or config.backend not in ("", BACKEND):
        given = config.platform or config.backend
        problems.append(f"platform/backend {given!r} is not served; edgecut runs ONNX models "
                        f"with onnxruntime (platform: {PLATFORM!r} or backend: {BACKEND!r})")
    if config.max_batch_size < 0:
        problems.append(f"max_batch_size must be >= 0, got {config.max_batch_size}")
    policy = _version_policy(config, problems)
    batching = _dynamic_batching(config, problems)
    instances = _instance_count(config, where, problems)
    filename = config.default_model_filename or DEFAULT_MODEL_FILENAME
    if "/" in filename or filename in (".", ".."):
        problems.append(f"default_model_filename must be a file name, got {filename!r}")
    for kind, tensors in (("input", config.input), ("output", config.output)):
        problems += [f"{kind} {t.name!r}: reshape is not supported; declare the shape the "
                     f"model takes (or reshape inside the model)"
                     for t in tensors if t.HasField("reshape")]
    parameters = {k: v.string_value for k, v in config.parameters.items()}
    intra_op = _intra_op_threads(parameters, problems)
    if problems:
        raise BadModelError(f"{where}: " + "; ".join(problems))
    for setting in _not_applied(config, parameters):
        logger.warning("%s: %s is not applied by edgecut; ignored", where, setting)
    return ModelSettings(
        max_batch_size=config.max_batch_size,
        dynamic_batching=batching,
        version_policy=policy,
        instance_count=instances,
        default_model_filename=filename,
        parameters=MappingProxyType(parameters),
        intra_op_threads=intra_op,
    )


def _intra_op_threads(parameters: Mapping[str, str], problems: list[str]) -> int | None:
    text = parameters.get(INTRA_OP_PARAMETER)
    if text is None:
        return None
    try:
        threads = int(text)
    except ValueError:
        threads = -1
    if threads < 0:
        problems.append(f"parameters {INTRA_OP_PARAMETER!r} must be a whole number >= 0 "
                        f"(0: onnxruntime decides), got {text!r}")
        return None
    return threads


def _not_applied(config: ModelConfig, parameters: Mapping[str, str]) -> list[str]:
    """The settings of `config` that edgecut reads but does not act on, as a reader of the
    config would name them."""
    found = [f"parameters {k!r}" for k in parameters if k != INTRA_OP_PARAMETER]
    found += ["metric_tags"] if config.metric_tags else []
    found += [f"output {o.name!r} label_filename (classification)"
              for o in config.output if o.label_filename]
    found += [f"input {i.name!r} {flag}" for i in config.input
              for flag in ("optional", "allow_ragged_batch") if getattr(i, flag)]
    if config.HasField("dynamic_batching"):
        batching, queue = config.dynamic_batching, config.dynamic_batching.default_queue_policy
        if batching.priority_levels or batching.priority_queue_policy:
            found.append("dynamic_batching priority levels (every request has one priority)")
        if queue.timeout_action == ModelQueuePolicy.DELAY and (
                queue.default_timeout_microseconds or queue.allow_timeout_override):
            found.append("dynamic_batching.default_queue_policy timeout_action DELAY (no queue "
                         "timeout applies then; REJECT is served)")
    return found


def _version_policy(config: ModelConfig, problems: list[str]) -> VersionPolicy:
    choice = config.version_policy.WhichOneof("policy_choice")
    try:
        if choice == "all":
            return VersionPolicy(kind="all")
        if choice == "specific":
            return VersionPolicy(kind="specific",
                                 versions=tuple(config.version_policy.specific.versions))
        if choice == "latest":
            return VersionPolicy(kind="latest",
                                 num_versions=config.version_policy.latest.num_versions)
    except BadModelError as exc:
        problems.append(f"version_policy: {exc}")
    return VersionPolicy()


def _dynamic_batching(config: ModelConfig, problems: list[str]) -> DynamicBatchingSettings | None:
    if not config.HasField("dynamic_batching"):
        return None
    batching = config.dynamic_batching
    if config.max_batch_size == 0:
        problems.append("dynamic_batching needs max_batch_size > 0 (the size of the batch "
                        "dimension the model takes)")
    sizes = tuple(batching.preferred_batch_size)
    bad = [s for s in sizes if s < 1 or (config.max_batch_size and s > config.max_batch_size)]
    if bad:
        problems.append(f"dynamic_batching.preferred_batch_size must be in 1..max_batch_size "
                        f"({config.max_batch_size}), got {bad}")
    queue = batching.default_queue_policy
    return DynamicBatchingSettings(
        preferred_batch_sizes=sizes,
        max_queue_delay_us=batching.max_queue_delay_microseconds,
        preserve_ordering=batching.preserve_ordering,
        max_queue_size=queue.max_queue_size,
        default_timeout_us=queue.default_timeout_microseconds,
        timeout_action="delay" if queue.timeout_action == ModelQueuePolicy.DELAY else "reject",
        allow_timeout_override=queue.allow_timeout_override,
    )


def _instance_count(config: ModelConfig, where: str, problems: list[str]) -> int:
    if not config.instance_group:
        return DEFAULT_CPU_INSTANCES
    total = 0
    for group in config.instance_group:
        if group.count < 0:
            problems.append(f"instance_group count must be >= 0, got {group.count}")
            continue
        if group.kind in (ModelInstanceGroup.KIND_GPU, ModelInstanceGroup.KIND_MODEL):
            logger.warning("%s: instance_group kind %s runs on CPU in edgecut", where,
                           ModelInstanceGroup.Kind.Name(group.kind))
        # Triton: a group without a count (0) has one instance.
        total += max(group.count, 1)
    return max(total, 1)


class _RecordingParser(text_format._Parser):  # only the skip hook is overridden
    """protobuf's text parser, skipping unknown fields and remembering where they were."""

    def __init__(self) -> None:
        super().__init__(allow_unknown_field=True)
        self.skipped: list[tuple[int, str, str]] = []
        self._depth = 0

    def _SkipFieldContents(self, tokenizer: Any, field_name: str,  # protobuf's name
                           immediate_message_type: str) -> None:
        if self._depth == 0:  # the fields inside a skipped message are not worth a warning each
            # tokenizer._line is 0-based.
            self.skipped.append((tokenizer._line + 1, immediate_message_type, field_name))
        self._depth += 1
        try:
            if tokenizer.LookingAt("["):
                # `model_warmup [ { ... } ]`: a list of messages with no colon, as Triton
                # writes them; protobuf's own skipper expects a colon before a list.
                self._SkipRepeatedFieldValue(tokenizer, immediate_message_type)
            else:
                super()._SkipFieldContents(tokenizer, field_name, immediate_message_type)
        finally:
            self._depth -= 1
