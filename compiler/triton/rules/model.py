"""Rules for one model's config: platform/backend autofill, model fields, tensors, reshape,
dynamic batching (triton-inference-server/core r24.10 src/model_config_utils.cc
`AutoCompleteBackendFields`, `ValidateModelConfig`, `ValidateModelIOConfig`; the python backend's
model file name from triton-inference-server/python_backend r24.10 src/pb_stub.cc)."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

from .batching import check_batch_io, check_sequence_controls
from .violation import ERROR, WARNING, Loc, Violation

ENSEMBLE = "ensemble"
WILDCARD = -1

# platform -> the backend Triton fills in for it (AutoCompleteBackendFields) and requires it to
# pair with (GetBackendTypeFromPlatform).
PLATFORM_BACKEND = {
    "tensorrt_plan": "tensorrt",
    "onnxruntime_onnx": "onnxruntime",
    "pytorch_libtorch": "pytorch",
    "tensorflow_graphdef": "tensorflow",
    "tensorflow_savedmodel": "tensorflow",
}
# Backends whose type Triton knows: a platform that does not belong to them is refused. Any
# other backend (python, tensorrtllm, custom ones) is accepted with any platform.
KNOWN_BACKENDS = frozenset(PLATFORM_BACKEND.values())
# The file each backend loads from a version directory unless default_model_filename says
# otherwise. Backends missing here (tensorrtllm: engine path in parameters; custom ones) need no
# file.
DEFAULT_MODEL_FILE = {
    "tensorrt": "model.plan",
    "onnxruntime": "model.onnx",
    "pytorch": "model.pt",
    "python": "model.py",
    "openvino": "model.xml",
}
TENSORFLOW_FILE = {"tensorflow_savedmodel": "model.savedmodel", "tensorflow_graphdef": "model.graphdef"}


def autofill(name: str, config: mc.ModelConfig, model_dir: Path | None) -> tuple[str, str, str]:
    """platform, backend and model file name as Triton's AutoCompleteBackendFields fills them
    (triton-inference-server/core r24.10 src/model_config_utils.cc)."""
    platform, backend, filename = config.platform, config.backend, config.default_model_filename
    first_version = None
    if model_dir is not None and model_dir.is_dir():
        subdirs = sorted(p.name for p in model_dir.iterdir() if p.is_dir())
        # Triton inspects the first subdirectory in name order, whatever it is.
        first_version = model_dir / subdirs[0] if subdirs else None

    def has_file(file: str) -> bool:
        return first_version is not None and (first_version / file).is_file()

    def has_entry(file: str) -> bool:
        return first_version is not None and (first_version / file).exists()

    guess_from_files = not platform and not backend and not filename
    if not platform and backend in ("", "tensorflow"):
        if filename == "model.savedmodel" or (not filename and first_version is not None
                                              and (first_version / "model.savedmodel").is_dir()):
            platform = "tensorflow_savedmodel"
        elif filename == "model.graphdef" or (not filename and has_file("model.graphdef")):
            platform = "tensorflow_graphdef"
    if platform in TENSORFLOW_FILE:
        return platform, backend or "tensorflow", filename or TENSORFLOW_FILE[platform]
    if not backend:
        backend = _backend_from_files(platform, filename, has_file if guess_from_files else None,
                                      has_entry if guess_from_files else None)
    if not backend and guess_from_files and "." in name:
        # Custom backend: "Expected model name of the form 'model.<backend_name>'": the backend
        # is what follows the first dot of the model name, the model file model.<backend_name>.
        backend = name.split(".", 1)[1]
        filename = f"model.{backend}"
    if backend in ("tensorrt", "onnxruntime", "pytorch") and not platform:
        platform = {v: k for k, v in PLATFORM_BACKEND.items()}[backend]
    # Only the backends in DEFAULT_MODEL_FILE read one model file; others (tensorrtllm, custom
    # backends) find their files their own way.
    model_file = (filename or DEFAULT_MODEL_FILE[backend]) if backend in DEFAULT_MODEL_FILE else ""
    return platform, backend, model_file


def _backend_from_files(platform: str, filename: str, has_file: Callable[[str], bool] | None,
                        has_entry: Callable[[str], bool] | None) -> str:
    """The backend platform or default_model_filename names, or (has_file/has_entry given: no
    platform, backend or file name in the config) the model file found in the version directory."""
    def found(check: Callable[[str], bool] | None, file: str) -> bool:
        return check is not None and check(file)

    if platform == "tensorrt_plan" or filename == "model.plan" or found(has_file, "model.plan"):
        return "tensorrt"
    if platform == "onnxruntime_onnx" or filename == "model.onnx" or found(has_entry, "model.onnx"):
        return "onnxruntime"
    if filename == "model.xml" or found(has_file, "model.xml"):
        return "openvino"
    if platform == "pytorch_libtorch" or filename == "model.pt" or found(has_file, "model.pt"):
        return "pytorch"
    if filename == "model.py" or found(has_entry, "model.py"):
        return "python"
    return ""


def check_model(name: str, config: mc.ModelConfig, platform: str, backend: str,
                model_file: str = "") -> list[Violation]:
    """One model's own fields (ValidateModelConfig, ValidateModelIOConfig)."""
    out = _check_identity(name, config, platform, backend, model_file)
    if config.max_batch_size < 0:
        out.append(Violation(name, ("max_batch_size",), "max-batch-size", f"'max_batch_size' must "
                             f"be non-negative value, got {config.max_batch_size}", "set "
                             "max_batch_size to 0 (no batching) or the largest batch the model takes"))
    out += _check_tensors(name, config, platform)
    out += check_batch_io(name, config)
    out += _check_scheduling(name, config)
    out += _check_warmup(name, config, platform)
    out += _check_ensemble_fields(name, config, platform, backend)
    return out


def _check_identity(name: str, config: mc.ModelConfig, platform: str, backend: str,
                    model_file: str) -> list[Violation]:
    """Name, platform/backend pair, and the python backend's model file name."""
    out: list[Violation] = []

    def add(loc: Loc, rule: str, message: str, fix: str) -> None:
        out.append(Violation(name, loc, rule, message, fix))

    if config.name and config.name != name:
        add(("name",), "dir-name", f"unexpected directory name '{name}' for model "
            f"'{config.name}', directory name must equal model name", f"set name: \"{name}\" (or leave name empty), or rename the directory to "
            f"'{config.name}'")
    if platform == ENSEMBLE and backend:
        add(("backend",), "platform-backend", f"Ensemble model '{name}' must have platform type "
            f"'ensemble' and empty backend type, got backend '{backend}'", "remove the backend field")
    elif not backend and platform != ENSEMBLE:
        if platform:
            add(("platform",), "platform-backend", f"unexpected platform type '{platform}' and no "
                "backend", "set backend (e.g. \"onnxruntime\", \"python\") or a known platform "
                f"({', '.join(sorted(PLATFORM_BACKEND))}, ensemble)")
        else:
            add(("backend",), "platform-backend", f"Could not determine backend for model '{name}' "
                "with no backend in model configuration: no platform, and no model file in the "
                "first version directory tells which backend to use (Triton then expects a model "
                "name of the form 'model.<backend_name>')",
                "set backend (e.g. \"onnxruntime\", \"python\") or platform")
    elif backend in KNOWN_BACKENDS and PLATFORM_BACKEND.get(platform) != backend:
        add(("platform",), "platform-backend", f"unexpected 'platform' and 'backend' pair, got: "
            f"'{platform}', '{backend}'", f"use platform "
            f"'{' or '.join(p for p, b in PLATFORM_BACKEND.items() if b == backend)}' or drop "
            "platform")
    # python_backend r24.10 src/pb_stub.cc ModelContext::StubSetup
    if backend == "python" and model_file and not model_file.endswith(".py"):
        origin = "" if config.backend else f" (backend 'python' taken from the model name '{name}')"
        add(("default_model_filename",) if config.default_model_filename else ("backend",),
            "python-model-file", f"Model name must end with '.py'. Model name is \"{model_file}\""
            f"{origin}", "name the python model file model.py (or set default_model_filename to a "
            ".py file)")
    return out


def _check_scheduling(name: str, config: mc.ModelConfig) -> list[Violation]:
    """Dynamic and sequence batching, response cache (ValidateModelConfig)."""
    out: list[Violation] = []
    mbs = config.max_batch_size
    if config.HasField("dynamic_batching"):
        out += _check_dynamic_batching(name, config)
    if config.HasField("sequence_batching"):
        oldest = config.sequence_batching.oldest
        for i, size in enumerate(oldest.preferred_batch_size):
            if size <= 0 or size > mbs:
                out.append(Violation(name, ("sequence_batching", "oldest", "preferred_batch_size", i),
                                     "preferred-batch-size", f"sequence batching preferred batch "
                                     f"size {size} is outside 1..max_batch_size ({mbs})",
                                     f"use sizes between 1 and {mbs}" if mbs > 0
                                     else "remove preferred_batch_size"))
        out += check_sequence_controls(name, config)
        if config.response_cache.enable:
            out.append(Violation(name, ("response_cache", "enable"), "response-cache", "Response "
                                 f"Cache does not currently support model {name} with sequence "
                                 "batching scheduler", "remove response_cache or sequence_batching"))
    if config.model_transaction_policy.decoupled and config.response_cache.enable:
        out.append(Violation(name, ("response_cache", "enable"), "response-cache", "Response Cache "
                             f"does not currently support model {name} with 'decoupled' "
                             "transaction policy",
                             "remove response_cache, or make the model non-decoupled"))
    return out


def _check_warmup(name: str, config: mc.ModelConfig, platform: str) -> list[Violation]:
    """A warmup sample larger than max_batch_size fails every instance at load (the backend model
    runs it through the scheduler's batch-size check: triton-inference-server/core r24.10
    src/backend_model_instance.cc WarmUp; message as tritonserver 2.51 logs it). On a python model
    tritonserver 2.51 dies of SIGSEGV instead on about one such load in four (seen here: 5 of 20,
    tests/test_rules_server.py), so the fix says so."""
    mbs = config.max_batch_size
    if platform == ENSEMBLE or mbs <= 0:
        return []
    return [Violation(name, ("model_warmup", i, "batch_size"), "warmup-batch-size",
                      f"failed to run warmup sample '{warmup.name}': batch size {warmup.batch_size} for "
                      f"model '{name}', max allowed is {mbs}",
                      f"use a warmup batch_size between 1 and {mbs} (tritonserver 2.51 refuses the model, "
                      "or crashes while loading it)")
            for i, warmup in enumerate(config.model_warmup) if warmup.batch_size > mbs]


def _check_ensemble_fields(name: str, config: mc.ModelConfig, platform: str,
                           backend: str) -> list[Violation]:
    """ensemble_scheduling belongs to platform "ensemble", and an ensemble has no fields of a
    model that runs (ValidateEnsembleSchedulingConfig)."""
    out: list[Violation] = []

    def add(loc: Loc, rule: str, message: str, fix: str) -> None:
        out.append(Violation(name, loc, rule, message, fix))

    has_ensemble_scheduling = config.HasField("ensemble_scheduling")
    if has_ensemble_scheduling and platform != ENSEMBLE:
        add(("ensemble_scheduling",), "ensemble-platform", "ensemble scheduling cannot be set for "
            f"model '{name}' whose platform is not ensemble (platform '{platform}', backend "
            f"'{backend}')",
            "set platform: \"ensemble\" and no backend, or remove ensemble_scheduling")
    if platform == ENSEMBLE:
        choice = config.WhichOneof("scheduling_choice")
        if choice in ("dynamic_batching", "sequence_batching"):
            add((choice,), "ensemble-forbidden-field", f"ensemble has {choice}; an ensemble is "
                f"scheduled by ensemble_scheduling only (batching happens in its step models)",
                f"remove {choice} and write ensemble_scheduling")
        elif not has_ensemble_scheduling:
            add(("ensemble_scheduling",), "ensemble-scheduling", f"ensemble scheduling must be set for "
                f"ensemble {name} whose platform is ensemble", "add ensemble_scheduling with its steps")
    if platform != ENSEMBLE and not has_ensemble_scheduling:
        return out
    if len(config.instance_group):
        add(("instance_group",), "ensemble-forbidden-field", "instance group should not be specified "
            f"for ensemble '{name}' (ensembles run no instances of their own)", "remove instance_group (set it on the "
            "step models)")
    if config.HasField("optimization"):
        add(("optimization",), "ensemble-forbidden-field", f"optimization should not be specified for ensemble '{name}'",
            "remove optimization (set it on the step models)")
    if len(config.model_warmup):
        add(("model_warmup",), "ensemble-forbidden-field", f"model_warmup can not be specified for ensemble '{name}'",
            "remove model_warmup (set it on the step models)")
    return out


def _check_tensors(name: str, config: mc.ModelConfig, platform: str) -> list[Violation]:
    """ValidateIOShape for every input and output, plus duplicate names."""
    out: list[Violation] = []
    mbs = config.max_batch_size
    for kind in ("input", "output"):
        seen: dict[str, int] = {}
        for i, io in enumerate(getattr(config, kind)):
            label = f"model {kind} '{io.name}'" if io.name else f"model {kind}"

            def add(field: str | None, rule: str, message: str, fix: str, severity: str = ERROR,
                    kind: str = kind, i: int = i, label: str = label) -> None:  # bound per tensor
                loc = (kind, i) + ((field,) if field else ())
                out.append(Violation(name, loc, rule, f"{label} {message}", fix, severity))

            if not io.name:
                add("name", "tensor-name", f"must specify 'name' ({kind} {i} has none)",
                    "give every tensor a name")
            elif io.name in seen:
                # Triton 2.51 loads this (seen); a client cannot tell the two apart.
                add("name", "duplicate-tensor", f"has the name of {kind} {seen[io.name]} too "
                    "(Triton loads it)", f"give each {kind} its own name", WARNING)
            else:
                seen[io.name] = i
            if io.data_type == mc.TYPE_INVALID:
                add("data_type", "data-type", "must specify 'data_type'",
                    "set data_type, e.g. TYPE_FP32, TYPE_INT64, TYPE_STRING")
            dims = list(io.dims)
            if not dims:
                add("dims", "dims", "must specify 'dims'",
                    "set dims (without the batch dimension when max_batch_size > 0); use [1] "
                    "for one value per batch item")
            bad = [d for d in dims if d < 1 and d != WILDCARD]
            if bad:
                add("dims", "dims", f"dimension must be integer >= 1, or -1 to indicate a "
                    f"variable-size dimension (dims {dims} contain {bad[0]})",
                    "replace the dimension with its size or -1")
            if io.HasField("reshape"):
                out.extend(_check_reshape(name, (kind, i), label, dims, list(io.reshape.shape), mbs))
            if kind == "input" and io.format in (mc.ModelInput.FORMAT_NHWC, mc.ModelInput.FORMAT_NCHW) \
                    and len(dims) != 3:
                add("format", "input-format", f"NHWC/NCHW require 3 dims (format "
                    f"{mc.ModelInput.Format.Name(io.format)}, dims {dims})", "give 3 dims or remove format")
            if io.is_shape_tensor and platform != "tensorrt_plan":
                add("is_shape_tensor", "shape-tensor", "is a shape tensor: shape tensors are only "
                    "supported for TensorRT platform", "remove is_shape_tensor")
    return out


def _check_reshape(name: str, loc: Loc, label: str, dims: list[int], shape: list[int],
                   mbs: int) -> list[Violation]:
    def violation(message: str, fix: str) -> list[Violation]:
        return [Violation(name, loc + ("reshape",), "reshape", f"{label} {message}", fix)]

    if not shape and mbs == 0:
        return violation("has an empty reshape on a model without batching, which would make a "
                         "tensor with no data", "remove the reshape, or give its shape")
    bad = [d for d in shape if d < 1 and d != WILDCARD]
    if bad:
        return violation(f"reshape dimension must be integer >= 1, or -1 to indicate a "
                         f"variable-size dimension (reshape {shape} contains {bad[0]})",
                         "replace the dimension with its size or -1")
    if not dims or any(d < 1 and d != WILDCARD for d in dims):
        return []  # the dims rule reports it
    # Element counts between variable-size dims must agree (ValidateIOShape): [2,4,-1,6] may
    # become [8,-1,1,6].
    dims_chunks, shape_chunks = _chunks(dims), _chunks(shape)
    if not shape:  # empty reshape of a batching model: dims must hold exactly one element
        ok = dims_chunks == [1]
    else:
        ok = dims_chunks == shape_chunks
    if ok:
        return []
    if len(dims_chunks) != len(shape_chunks) and shape:
        return violation(f"has different size for dims and reshape: dims {dims} and reshape "
                         f"{shape} have different numbers of -1 dimensions", "use as many -1 dimensions in reshape as in dims")
    return violation(f"has different size for dims and reshape: reshape {shape} does not keep "
                     f"the element count of dims {dims}",
                     "make the product of reshape equal the product of dims")


def _chunks(dims: list[int]) -> list[int]:
    """Products of the fixed dimensions between variable-size (-1) dimensions."""
    chunks, current = [], 1
    for d in dims:
        if d == WILDCARD:
            chunks.append(current)
            current = 1
        else:
            current *= d
    chunks.append(current)
    return chunks


def _check_dynamic_batching(name: str, config: mc.ModelConfig) -> list[Violation]:
    out: list[Violation] = []
    db, mbs = config.dynamic_batching, config.max_batch_size
    for i, size in enumerate(db.preferred_batch_size):
        if size <= 0 or size > mbs:
            if mbs > 0:
                fix = f"use sizes between 1 and {mbs}, or raise max_batch_size"
            else:
                fix = "set max_batch_size > 0 (the model must batch) or remove preferred_batch_size"
            out.append(Violation(name, ("dynamic_batching", "preferred_batch_size", i),
                                 "preferred-batch-size", "dynamic batching preferred size must be "
                                 + ("positive" if size <= 0 else "<= max batch size")
                                 + f" ({size} is outside 1..{mbs})", fix))
    levels = db.priority_levels
    if levels:
        if not 1 <= db.default_priority_level <= levels:
            out.append(Violation(name, ("dynamic_batching", "default_priority_level"), "priority",
                                 f"default priority level must be in range [1, "
                                 f"{levels}], got {db.default_priority_level}",
                                 f"set default_priority_level between 1 and {levels}"))
        for level in sorted(db.priority_queue_policy):
            if not 1 <= level <= levels:
                out.append(Violation(name, ("dynamic_batching", "priority_queue_policy", str(level)),
                                     "priority", f"priority queue policy must have priority "
                                     f"level in range [1, {levels}], got {level}",
                                     f"use levels between 1 and {levels}"))
    if db.preserve_ordering:
        if levels > 1:
            out.append(Violation(name, ("dynamic_batching", "preserve_ordering"), "preserve-ordering",
                                 "Only one priority level is allowed when "
                                 f"'preserve_ordering' is true ({levels} priority levels)", "turn preserve_ordering off or use one priority level"))
        policies = [("default_queue_policy",), *(("priority_queue_policy", str(k))
                                                for k in sorted(db.priority_queue_policy))]
        for loc in policies:
            policy = (db.default_queue_policy if loc[0] == "default_queue_policy"
                      else db.priority_queue_policy[int(loc[1])])
            if policy.default_timeout_microseconds and policy.timeout_action == mc.ModelQueuePolicy.DELAY:
                out.append(Violation(name, ("dynamic_batching", *loc, "timeout_action"),
                                     "preserve-ordering", "Queue policy can not have DELAY as "
                                     "timeout action when 'preserve_ordering' is true",
                                     "use timeout_action REJECT or turn preserve_ordering off"))
    return out
