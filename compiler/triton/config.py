"""Config generation: spec + resolved tensor signatures -> model_config_pb2.ModelConfig objects.

Configs are typed protobuf messages from Triton's own schema; `to_pbtxt` is the one place they
become text.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

if TYPE_CHECKING:  # type hints only: `validate` and `check` need no pydantic
    from ..spec import ContainerTarget, DynamicBatching, EnsembleSpec, ModelSpec, TensorSpec

CONFIG_NAME = "config.pbtxt"  # the file Triton reads in each model directory

_KIND = {"cpu": mc.ModelInstanceGroup.KIND_CPU, "gpu": mc.ModelInstanceGroup.KIND_GPU,
         "auto": mc.ModelInstanceGroup.KIND_AUTO}

# Config parameters the backends that serve converted models parse, as (pattern, meaning): a
# value they cannot parse fails the model load, so the spec refuses it first. Keyed by server:
# - embedded: the ONNX runner (python_backends/onnx_runner/model.py, session_options: int(value),
#   then onnxruntime's SessionOptions, which takes no negative thread count);
# - container: onnxruntime's backend (triton-inference-server/onnxruntime_backend, main,
#   src/onnxruntime.cc: TryParseModelStringParameter into an int; execution_mode must be 0 or 1).
_COUNT = (r"\d+", "a whole number >= 0 (0: onnxruntime's default)")
PARAMETER_TYPES: dict[str, dict[str, tuple[str, str]]] = {
    "embedded": {"intra_op_num_threads": _COUNT, "inter_op_num_threads": _COUNT},
    "container": {"intra_op_thread_count": _COUNT, "inter_op_thread_count": _COUNT,
                  "execution_mode": (r"[01]", "0 (sequential) or 1 (parallel)")},
}


def data_type(name: str) -> int:
    return mc.DataType.Value(f"TYPE_{name}")


def data_type_name(value: int) -> str:
    return mc.DataType.Name(value).removeprefix("TYPE_")


def model_input(tensor: TensorSpec) -> mc.ModelInput:
    message = mc.ModelInput(name=tensor.name, data_type=data_type(tensor.dtype), dims=tensor.dims,
                            optional=tensor.optional)
    if tensor.reshape is not None:
        message.reshape.shape.extend(tensor.reshape)
    return message


def model_output(tensor: TensorSpec) -> mc.ModelOutput:
    message = mc.ModelOutput(name=tensor.name, data_type=data_type(tensor.dtype), dims=tensor.dims)
    if tensor.reshape is not None:
        message.reshape.shape.extend(tensor.reshape)
    return message


def onnx_model_config(model: ModelSpec, inputs: list[TensorSpec], outputs: list[TensorSpec], *,
                      runtime: str, container: ContainerTarget) -> mc.ModelConfig:
    """An ONNX model: served by the python-backend ONNX runner (embedded) or onnxruntime (container)."""
    config = mc.ModelConfig(name=model.name)
    if runtime == "embedded":
        config.backend = "python"
        # Thread counts the spec leaves out are chosen by the runner when it loads, from the
        # model's size, its instance count and the serving host's cores (python_backends/onnx_runner).
        parameters = dict(model.parameters)
    else:
        config.platform = "onnxruntime_onnx"
        config.backend = "onnxruntime"
        parameters = dict(model.parameters)
        if container.device == "gpu" and container.tensorrt_fp16:
            accelerator = config.optimization.execution_accelerators.gpu_execution_accelerator.add()
            accelerator.name = "tensorrt"
            accelerator.parameters["precision_mode"] = "FP16"
    _common(config, model, inputs, outputs, parameters, runtime=runtime, container=container)
    if runtime == "embedded" and model.max_batch_size > 1 and model.dynamic_batching is None:
        # What onnxruntime's backend does for a batching model without a scheduler (its
        # auto-complete adds an empty dynamic_batching: triton-inference-server/onnxruntime_backend
        # r24.10, src/onnxruntime.cc, AutoCompleteMaxBatch); the python backend serving the runner
        # has no such rule, and without it every request would run alone. Empty means Triton's
        # defaults: no queue delay (requests that queue while an instance is busy form the next
        # batch) and no preferred sizes (the largest batch available, up to max_batch_size).
        config.dynamic_batching.SetInParent()
    return config


def python_model_config(model: ModelSpec, *, runtime: str, container: ContainerTarget) -> mc.ModelConfig:
    config = mc.ModelConfig(name=model.name, backend="python")
    assert model.inputs is not None and model.outputs is not None  # enforced by the spec
    _common(config, model, model.inputs, model.outputs, dict(model.parameters), runtime=runtime,
            container=container)
    return config


def ensemble_config(ensemble: EnsembleSpec) -> mc.ModelConfig:
    config = mc.ModelConfig(name=ensemble.name, platform="ensemble", max_batch_size=ensemble.max_batch_size)
    config.input.extend(model_input(t) for t in ensemble.inputs)
    config.output.extend(model_output(t) for t in ensemble.outputs)
    for step in ensemble.steps:
        message = config.ensemble_scheduling.step.add(model_name=step.model, model_version=step.version)
        message.input_map.update(step.input_map)
        message.output_map.update(step.output_map)
    return config


def _common(config: mc.ModelConfig, model: ModelSpec, inputs: list[TensorSpec], outputs: list[TensorSpec],
            parameters: dict[str, str], *, runtime: str, container: ContainerTarget) -> None:
    config.max_batch_size = model.max_batch_size
    config.input.extend(model_input(t) for t in inputs)
    config.output.extend(model_output(t) for t in outputs)
    if model.dynamic_batching is not None:
        _dynamic_batching(config.dynamic_batching, model.dynamic_batching)
    for group in model.instance_group or []:
        # The embedded server runs on any host, GPU or not: its instances are always CPU ones.
        kind = "cpu" if runtime == "embedded" else group.kind
        message = config.instance_group.add(count=group.count, kind=_KIND[kind])
        if group.gpus is not None and kind == "gpu":
            message.gpus.extend(group.gpus)
    if runtime == "container" and not model.instance_group and container.device == "gpu" \
            and config.backend != "python":
        config.instance_group.add(count=1, kind=mc.ModelInstanceGroup.KIND_GPU)
    for warmup in model.warmup:
        sample = config.model_warmup.add(name=warmup.name, batch_size=warmup.batch_size, count=warmup.count)
        for tensor in inputs:
            # Variable dims (-1) become 1 for the warmup request.
            data = mc.ModelWarmup.Input(data_type=data_type(tensor.dtype), dims=[max(d, 1) for d in tensor.dims])
            if warmup.data == "zero":
                data.zero_data = True
            else:
                data.random_data = True
            sample.inputs[tensor.name].CopyFrom(data)
    if model.version_policy is not None:
        policy = model.version_policy
        if policy.latest is not None:
            config.version_policy.latest.num_versions = policy.latest
        elif policy.all:
            config.version_policy.all.SetInParent()
        else:
            config.version_policy.specific.versions.extend(policy.specific or [])
    for key, value in sorted(parameters.items()):
        config.parameters[key].string_value = value
    if model.decoupled:
        config.model_transaction_policy.decoupled = True
    if model.response_cache:
        config.response_cache.enable = True


def _dynamic_batching(message: mc.ModelDynamicBatching, spec: DynamicBatching) -> None:
    message.SetInParent()
    message.preferred_batch_size.extend(spec.preferred_batch_size)
    message.max_queue_delay_microseconds = spec.max_queue_delay_microseconds
    message.preserve_ordering = spec.preserve_ordering
    message.priority_levels = spec.priority_levels
    message.default_priority_level = spec.default_priority_level
    if spec.default_queue_policy is not None:
        policy = spec.default_queue_policy
        message.default_queue_policy.timeout_action = mc.ModelQueuePolicy.TimeoutAction.Value(policy.timeout_action)
        message.default_queue_policy.default_timeout_microseconds = policy.default_timeout_microseconds
        message.default_queue_policy.allow_timeout_override = policy.allow_timeout_override
        message.default_queue_policy.max_queue_size = policy.max_queue_size


def to_pbtxt(config: mc.ModelConfig) -> str:
    """Serialize through text_format. Proto3 drops zero scalars, but Triton reads a missing
    max_batch_size as "let the backend auto-complete it", so 0 is written out explicitly."""
    text = text_format.MessageToString(config)
    if config.max_batch_size == 0:
        lines = text.splitlines(keepends=True)
        # Right after the identifying fields (name/platform/backend), where people look for it.
        at = next((i for i, line in enumerate(lines)
                   if not line.startswith(("name:", "platform:", "backend:"))), len(lines))
        lines.insert(at, "max_batch_size: 0\n")
        text = "".join(lines)
    return text


def parse_pbtxt(text: str) -> mc.ModelConfig:
    return text_format.Parse(text, mc.ModelConfig())
