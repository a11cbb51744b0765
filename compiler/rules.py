"""Triton's load rules, checked without a server.

`check_configs` checks ModelConfig objects (and, given their directories, the files Triton looks
for); `check_repository` reads a model repository from disk and checks it the same way. Each
problem is a `Violation` naming the model, the field inside its config, a stable rule id, what is
wrong and the fix.

The rules follow what tritonserver (2.51, triton-inference-server/core) does when it loads a
repository: `AutoCompleteBackendFields`, `ValidateModelConfig`, `ValidateModelIOConfig`,
`ValidateEnsembleSchedulingConfig` (model_config_utils.cc), `ValidateEnsembleConfig`
(ensemble_utils.cc) and `VersionsToLoad` (model_lifecycle.cc), plus the backends' model-file
lookups. A few checks are stricter than the server where the server silently ignores a likely
mistake (a non-integer version directory, a duplicated map key, a duplicated tensor name); their
messages say so.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterable

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from .model_config import CONFIG_NAME, data_type_name, parse_pbtxt

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
# A model file that may be a directory (ONNX models with external data, TF SavedModel).
DIRECTORY_MODEL_OK = frozenset({"onnxruntime", "tensorflow"})
# Subdirectories of a model directory that are not versions (VersionsToLoad skips them).
NON_VERSION_DIRS = frozenset({"warmup", "initial_state", "configs"})
# Fields whose next loc element is a map key.
MAP_FIELDS = frozenset({"input_map", "output_map", "parameters", "priority_queue_policy"})

# Triton reads a version directory name with stoll and skips names with leading zeros; version
# 0 loads (seen with 2.51).
_VERSION_RE = re.compile(r"^(0|[1-9][0-9]*)$")


@dataclass(frozen=True)
class Violation:
    """One broken load rule: where (model, field path), which rule, what is wrong, the fix."""

    model: str  # model (directory) name, or "" for repository-level problems
    loc: tuple  # path inside the ModelConfig, e.g. ("input", 0, "dims")
    rule: str  # short stable id, e.g. "dims", "ensemble-edge-shape"
    message: str
    fix: str

    @property
    def field(self) -> str:
        """loc as text: ("ensemble_scheduling", "step", 1, "input_map", "X") ->
        'ensemble_scheduling.step[1].input_map["X"]'."""
        text = ""
        previous = None
        for part in self.loc:
            if isinstance(part, int):
                text += f"[{part}]"
            elif previous in MAP_FIELDS:
                text += f'["{part}"]'
            else:
                text += f".{part}" if text else str(part)
            previous = part
        return text

    def one_line(self, file: str | Path | None = None) -> str:
        """'model_repo/x/config.pbtxt: input[0].dims: ... (fix: ...)'; without a file the model
        name leads."""
        head = [str(file) if file is not None else self.model, self.field]
        text = ": ".join([h for h in head if h] + [self.message])
        if self.fix:
            text += f" (fix: {self.fix})"
        return " ".join(text.split())


def check_configs(configs: dict[str, mc.ModelConfig],
                  model_dirs: dict[str, Path] | None = None) -> list[Violation]:
    """Check a set of model configs keyed by model (directory) name.

    With model_dirs (model name -> its directory) the version directories and model files are
    checked too, and platform/backend are auto-filled from the files as Triton does. Ensemble
    steps must name models in `configs`.
    """
    return _check(configs, model_dirs or {}, unreadable=frozenset())


def check_repository(repo: Path) -> list[Violation]:
    """Check a model repository on disk: every <model>/config.pbtxt, its directories and files."""
    repo = Path(repo)
    if not repo.is_dir():
        return [Violation("", (), "repository", f"model repository '{repo}' is not a directory",
                          "build the repository first, or pass the directory that holds the model "
                          "directories")]
    violations: list[Violation] = []
    configs: dict[str, mc.ModelConfig] = {}
    dirs: dict[str, Path] = {}
    unreadable: set[str] = set()
    model_dirs = sorted(p for p in repo.iterdir() if p.is_dir())
    if not model_dirs:
        violations.append(Violation("", (), "repository", f"model repository '{repo}' holds no "
                                    "model directories", "build the repository into this directory"))
    for model_dir in model_dirs:
        name = model_dir.name
        config_file = model_dir / CONFIG_NAME
        if not config_file.is_file():
            unreadable.add(name)
            violations.append(Violation(name, (), "config-missing", f"model directory '{name}' has "
                                        f"no {CONFIG_NAME}, so its load rules cannot be checked",
                                        f"write {name}/{CONFIG_NAME}, or move the directory out of "
                                        "the repository"))
            continue
        text = config_file.read_text(encoding="utf-8", errors="replace")
        try:
            config = parse_pbtxt(text)
        except text_format.ParseError as exc:
            unreadable.add(name)
            violations.append(Violation(name, (), "parse", _parse_message(exc),
                                        "fix the protobuf text at that line (field names and enum "
                                        "values are those of Triton's model_config.proto)"))
            continue
        configs[name] = config
        dirs[name] = model_dir
        violations.extend(_duplicate_map_keys(name, text))
    violations.extend(_check(configs, dirs, frozenset(unreadable)))
    return violations


# ---------------------------------------------------------------------------------------------
# One model


def _check(configs: dict[str, mc.ModelConfig], model_dirs: dict[str, Path],
           unreadable: frozenset[str]) -> list[Violation]:
    violations: list[Violation] = []
    for name in sorted(configs):
        config = configs[name]
        model_dir = model_dirs.get(name)
        platform, backend, model_file = _autofill(config, model_dir)
        found = _check_model(name, config, platform, backend)
        if model_dir is not None:
            found += _check_directory(name, config, model_dir, platform, backend, model_file)
        if config.HasField("ensemble_scheduling"):
            found += _check_ensemble(name, config, configs, unreadable)
        violations.extend(found)
    violations.extend(_ensemble_model_cycles(configs))
    return violations


def _autofill(config: mc.ModelConfig, model_dir: Path | None) -> tuple[str, str, str]:
    """platform, backend and model file name as Triton's AutoCompleteBackendFields fills them."""
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
        if platform == "tensorrt_plan" or filename == "model.plan" or (
                guess_from_files and has_file("model.plan")):
            backend = "tensorrt"
        elif platform == "onnxruntime_onnx" or filename == "model.onnx" or (
                guess_from_files and has_entry("model.onnx")):
            backend = "onnxruntime"
        elif filename == "model.xml" or (guess_from_files and has_file("model.xml")):
            backend = "openvino"
        elif platform == "pytorch_libtorch" or filename == "model.pt" or (
                guess_from_files and has_file("model.pt")):
            backend = "pytorch"
        elif filename == "model.py" or (guess_from_files and has_file("model.py")):
            backend = "python"
    if backend in ("tensorrt", "onnxruntime", "pytorch") and not platform:
        platform = {v: k for k, v in PLATFORM_BACKEND.items()}[backend]
    # Only the backends in DEFAULT_MODEL_FILE read one model file; others (tensorrtllm, custom
    # backends) find their files their own way.
    model_file = (filename or DEFAULT_MODEL_FILE[backend]) if backend in DEFAULT_MODEL_FILE else ""
    return platform, backend, model_file


def _check_model(name: str, config: mc.ModelConfig, platform: str, backend: str) -> list[Violation]:
    out: list[Violation] = []

    def add(loc: tuple, rule: str, message: str, fix: str) -> None:
        out.append(Violation(name, loc, rule, message, fix))

    if config.name and config.name != name:
        add(("name",), "dir-name", f"config name '{config.name}' differs from its directory name "
            f"'{name}'", f"set name: \"{name}\" (or leave name empty), or rename the directory to "
            f"'{config.name}'")

    # platform / backend (ValidateModelConfig)
    if platform == ENSEMBLE and backend:
        add(("backend",), "platform-backend", f"ensemble has backend '{backend}'; an ensemble "
            "must have platform \"ensemble\" and no backend", "remove the backend field")
    elif not backend and platform != ENSEMBLE:
        if platform:
            add(("platform",), "platform-backend", f"unknown platform '{platform}' and no backend",
                "set backend (e.g. \"onnxruntime\", \"python\") or a known platform "
                f"({', '.join(sorted(PLATFORM_BACKEND))}, ensemble)")
        else:
            add(("backend",), "platform-backend", "neither platform nor backend is set and no "
                "model file in the version directory tells which backend to use",
                "set backend (e.g. \"onnxruntime\", \"python\") or platform")
    elif backend in KNOWN_BACKENDS and PLATFORM_BACKEND.get(platform) != backend:
        add(("platform",), "platform-backend", f"platform '{platform}' does not go with backend "
            f"'{backend}'", f"use platform "
            f"'{' or '.join(p for p, b in PLATFORM_BACKEND.items() if b == backend)}' or drop "
            "platform")

    mbs = config.max_batch_size
    if mbs < 0:
        add(("max_batch_size",), "max-batch-size", f"max_batch_size is {mbs}; it must be >= 0",
            "set max_batch_size to 0 (no batching) or the largest batch the model takes")

    out += _check_tensors(name, config, platform)

    # scheduling (ValidateModelConfig)
    if config.HasField("dynamic_batching"):
        out += _check_dynamic_batching(name, config)
    if config.HasField("sequence_batching"):
        oldest = config.sequence_batching.oldest
        for i, size in enumerate(oldest.preferred_batch_size):
            if size <= 0 or size > mbs:
                add(("sequence_batching", "oldest", "preferred_batch_size", i),
                    "preferred-batch-size", f"sequence batching preferred batch size {size} is "
                    f"outside 1..max_batch_size ({mbs})",
                    f"use sizes between 1 and {mbs}" if mbs > 0 else "remove preferred_batch_size")
        if config.response_cache.enable:
            add(("response_cache", "enable"), "response-cache", "response cache is enabled on a "
                "model with sequence batching, which Triton does not support",
                "remove response_cache or sequence_batching")
    if config.model_transaction_policy.decoupled and config.response_cache.enable:
        add(("response_cache", "enable"), "response-cache", "response cache is enabled on a "
            "decoupled model (model_transaction_policy.decoupled), which Triton does not support",
            "remove response_cache, or make the model non-decoupled")

    # ensemble scheduling belongs to platform "ensemble" and only there
    has_ensemble_scheduling = config.HasField("ensemble_scheduling")
    if has_ensemble_scheduling and platform != ENSEMBLE:
        add(("ensemble_scheduling",), "ensemble-platform", "ensemble_scheduling is set on a model "
            f"that is not an ensemble (platform '{platform}', backend '{backend}')",
            "set platform: \"ensemble\" and no backend, or remove ensemble_scheduling")
    if platform == ENSEMBLE:
        choice = config.WhichOneof("scheduling_choice")
        if choice in ("dynamic_batching", "sequence_batching"):
            add((choice,), "ensemble-forbidden-field", f"ensemble has {choice}; an ensemble is "
                f"scheduled by ensemble_scheduling only (batching happens in its step models)",
                f"remove {choice} and write ensemble_scheduling")
        elif not has_ensemble_scheduling:
            add(("ensemble_scheduling",), "ensemble-scheduling", "platform is \"ensemble\" but "
                "ensemble_scheduling is missing", "add ensemble_scheduling with its steps")
    if platform == ENSEMBLE or has_ensemble_scheduling:
        if len(config.instance_group):
            add(("instance_group",), "ensemble-forbidden-field", "ensemble has instance_group; "
                "ensembles run no instances of their own", "remove instance_group (set it on the "
                "step models)")
        if config.HasField("optimization"):
            add(("optimization",), "ensemble-forbidden-field", "ensemble has optimization",
                "remove optimization (set it on the step models)")
        if len(config.model_warmup):
            add(("model_warmup",), "ensemble-forbidden-field", "ensemble has model_warmup",
                "remove model_warmup (set it on the step models)")
    return out


def _check_tensors(name: str, config: mc.ModelConfig, platform: str) -> list[Violation]:
    """ValidateIOShape for every input and output, plus duplicate names."""
    out: list[Violation] = []
    mbs = config.max_batch_size
    for kind in ("input", "output"):
        seen: dict[str, int] = {}
        for i, io in enumerate(getattr(config, kind)):
            label = f"{kind} '{io.name}'" if io.name else f"{kind} {i}"

            def add(field: str | None, rule: str, message: str, fix: str) -> None:
                loc = (kind, i) + ((field,) if field else ())
                out.append(Violation(name, loc, rule, f"{label}: {message}", fix))

            if not io.name:
                add("name", "tensor-name", "has no name", "give every tensor a name")
            elif io.name in seen:
                add("name", "duplicate-tensor", f"name is used by {kind} {seen[io.name]} too",
                    f"give each {kind} its own name")
            else:
                seen[io.name] = i
            if io.data_type == mc.TYPE_INVALID:
                add("data_type", "data-type", "has no data_type",
                    "set data_type, e.g. TYPE_FP32, TYPE_INT64, TYPE_STRING")
            dims = list(io.dims)
            if not dims:
                add("dims", "dims", "has no dims",
                    "set dims (without the batch dimension when max_batch_size > 0); use [1] "
                    "for one value per batch item")
            bad = [d for d in dims if d < 1 and d != WILDCARD]
            if bad:
                add("dims", "dims", f"dims {dims} contain {bad[0]}; each dim is >= 1, or -1 for a "
                    "variable size", "replace the dimension with its size or -1")
            if io.HasField("reshape"):
                out.extend(_check_reshape(name, (kind, i), label, dims, list(io.reshape.shape), mbs))
            if kind == "input" and io.format in (mc.ModelInput.FORMAT_NHWC, mc.ModelInput.FORMAT_NCHW) \
                    and len(dims) != 3:
                add("format", "input-format", f"format {mc.ModelInput.Format.Name(io.format)} needs "
                    f"3 dims, got {dims}", "give 3 dims or remove format")
            if io.is_shape_tensor and platform != "tensorrt_plan":
                add("is_shape_tensor", "shape-tensor", "is a shape tensor, which only TensorRT "
                    "models have", "remove is_shape_tensor")
    return out


def _check_reshape(name: str, loc: tuple, label: str, dims: list[int], shape: list[int],
                   mbs: int) -> list[Violation]:
    def violation(message: str, fix: str) -> list[Violation]:
        return [Violation(name, loc + ("reshape",), "reshape", f"{label}: {message}", fix)]

    if not shape and mbs == 0:
        return violation("empty reshape on a model without batching would make a tensor with no "
                         "data", "remove the reshape, or give its shape")
    bad = [d for d in shape if d < 1 and d != WILDCARD]
    if bad:
        return violation(f"reshape {shape} contains {bad[0]}; each dim is >= 1, or -1",
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
        return violation(f"dims {dims} and reshape {shape} have different numbers of -1 "
                         "dimensions", "use as many -1 dimensions in reshape as in dims")
    return violation(f"reshape {shape} does not keep the element count of dims {dims}",
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
                                 "preferred-batch-size", f"preferred batch size {size} is outside "
                                 f"1..max_batch_size ({mbs})", fix))
    levels = db.priority_levels
    if levels:
        if not 1 <= db.default_priority_level <= levels:
            out.append(Violation(name, ("dynamic_batching", "default_priority_level"), "priority",
                                 f"default_priority_level {db.default_priority_level} is outside "
                                 f"1..priority_levels ({levels})",
                                 f"set default_priority_level between 1 and {levels}"))
        for level in sorted(db.priority_queue_policy):
            if not 1 <= level <= levels:
                out.append(Violation(name, ("dynamic_batching", "priority_queue_policy", str(level)),
                                     "priority", f"priority_queue_policy has level {level}, outside "
                                     f"1..priority_levels ({levels})",
                                     f"use levels between 1 and {levels}"))
    if db.preserve_ordering:
        if levels > 1:
            out.append(Violation(name, ("dynamic_batching", "preserve_ordering"), "preserve-ordering",
                                 f"preserve_ordering is on with {levels} priority levels; it allows "
                                 "only one", "turn preserve_ordering off or use one priority level"))
        policies = [("default_queue_policy",), *(("priority_queue_policy", str(k))
                                                for k in sorted(db.priority_queue_policy))]
        for loc in policies:
            policy = (db.default_queue_policy if loc[0] == "default_queue_policy"
                      else db.priority_queue_policy[int(loc[1])])
            if policy.default_timeout_microseconds and policy.timeout_action == mc.ModelQueuePolicy.DELAY:
                out.append(Violation(name, ("dynamic_batching", *loc, "timeout_action"),
                                     "preserve-ordering", "queue policy delays timed-out requests "
                                     "(timeout_action DELAY), which preserve_ordering forbids",
                                     "use timeout_action REJECT or turn preserve_ordering off"))
    return out


# ---------------------------------------------------------------------------------------------
# Directories and files


def _check_directory(name: str, config: mc.ModelConfig, model_dir: Path, platform: str,
                     backend: str, model_file: str) -> list[Violation]:
    out: list[Violation] = []
    versions: set[int] = set()
    for sub in sorted(p for p in model_dir.iterdir() if p.is_dir()):
        if sub.name in NON_VERSION_DIRS:
            continue
        if _VERSION_RE.match(sub.name):
            versions.add(int(sub.name))
        else:
            out.append(Violation(name, (), "version-dir", f"subdirectory '{sub.name}' is not a "
                                 "version (an integer without leading zeros); Triton ignores it",
                                 "rename it to a version number such as '1', or move it out of "
                                 "the model directory"))
    policy = config.version_policy
    choice = policy.WhichOneof("policy_choice")
    if choice == "specific":
        missing = [v for v in policy.specific.versions if v not in versions]
        if missing:
            out.append(Violation(name, ("version_policy", "specific", "versions"), "version-policy",
                                 f"version_policy asks for versions {missing} that have no "
                                 "directory", f"create {name}/{missing[0]}/ or remove it from the "
                                 "policy"))
        to_load = sorted(v for v in policy.specific.versions if v in versions)
    elif choice == "all":
        to_load = sorted(versions)
    else:  # latest, Triton's default with one version
        count = policy.latest.num_versions if choice == "latest" else 1
        to_load = sorted(versions)[-count:] if count else []
    if not to_load:
        if versions:
            message = (f"model directory '{name}' has no version directory that its version "
                       "policy loads")
        else:
            message = (f"model directory '{name}' has no version directory (every model, "
                       "ensembles too, needs one)")
        fix = f"create {name}/1/" + ("" if platform == ENSEMBLE else " holding the model file")
        out.append(Violation(name, (), "version-dir", message, fix))
        return out
    if platform == ENSEMBLE or not model_file:
        return out
    loc = ("default_model_filename",) if config.default_model_filename else ()
    for version in to_load:
        path = model_dir / str(version) / model_file
        ok = path.exists() if backend in DIRECTORY_MODEL_OK else path.is_file()
        if not ok:
            out.append(Violation(name, loc, "model-file", f"version {version} has no {model_file} "
                                 f"for backend '{backend}' ({path} is missing)",
                                 f"put the model file at {name}/{version}/{model_file}"
                                 + (", or fix default_model_filename" if loc else "")))
    return out


# ---------------------------------------------------------------------------------------------
# Ensembles


@dataclass(frozen=True)
class _End:
    """One end of an ensemble edge: who declares the tensor, with which type and shape."""

    who: str  # e.g. "ensemble input 'RAW'", "step 1 (model 'clf') input 'X'"
    batching: bool
    dtype: int
    dims: tuple

    @property
    def full_dims(self) -> tuple:
        return ((WILDCARD,) if self.batching else ()) + self.dims


def _check_ensemble(name: str, config: mc.ModelConfig, configs: dict[str, mc.ModelConfig],
                    unreadable: frozenset[str]) -> list[Violation]:
    out: list[Violation] = []
    steps = list(config.ensemble_scheduling.step)

    def add(loc: tuple, rule: str, message: str, fix: str) -> None:
        out.append(Violation(name, ("ensemble_scheduling",) + loc, rule, message, fix))

    if not steps:
        add(("step",), "ensemble-steps", "ensemble has no steps", "add at least one step")
        return out

    batching = config.max_batch_size > 0
    ensemble_inputs = {io.name: io for io in config.input}
    ensemble_outputs = {io.name: io for io in config.output}
    producers: dict[str, tuple[int, str]] = {}  # tensor -> (step, step output)
    consumers: dict[str, list[tuple[int, str]]] = {}  # tensor -> [(step, step input)]

    for s, step in enumerate(steps):
        where = f"step {s} (model '{step.model_name}')"
        if not step.model_name:
            add(("step", s, "model_name"), "ensemble-step", f"step {s} has no model_name",
                "name the model this step runs")
        if not step.input_map:
            add(("step", s, "input_map"), "ensemble-step", f"{where} has no input_map",
                "map the step model's inputs: key = its input name, value = an ensemble tensor")
        if not step.output_map:
            add(("step", s, "output_map"), "ensemble-step", f"{where} has no output_map",
                "map the step model's outputs: key = its output name, value = an ensemble tensor")
        for key, tensor in sorted(step.output_map.items()):
            if tensor in ensemble_inputs:
                # Triton loads this, but the step's result and the request's input then share
                # one name: a mistake.
                add(("step", s, "output_map", key), "ensemble-input-overwritten",
                    f"{where} writes output '{key}' to ensemble tensor '{tensor}', which is an "
                    "ensemble input", "give the step output its own ensemble tensor name")
            elif tensor in producers:
                first, first_key = producers[tensor]
                add(("step", s, "output_map", key), "ensemble-tensor-produced-once",
                    f"ensemble tensor '{tensor}' is written by {where} output '{key}' and already by "
                    f"step {first} (model '{steps[first].model_name}') output '{first_key}'",
                    "give each step output its own ensemble tensor name")
            else:
                producers[tensor] = (s, key)
        for key, tensor in sorted(step.input_map.items()):
            consumers.setdefault(tensor, []).append((s, key))

        model = configs.get(step.model_name)
        if step.model_name and model is None:
            if step.model_name not in unreadable:
                add(("step", s, "model_name"), "ensemble-unknown-model", f"{where} runs model "
                    f"'{step.model_name}', which is not in the repository",
                    f"add model '{step.model_name}' or fix the step's model_name")
            continue
        if model is None:
            continue
        if model.max_batch_size != 0 and model.max_batch_size < config.max_batch_size:
            add(("step", s, "model_name"), "ensemble-batch-size", f"ensemble max_batch_size is "
                f"{config.max_batch_size} but {where} takes at most {model.max_batch_size}",
                f"lower the ensemble's max_batch_size to {model.max_batch_size} or raise "
                f"'{step.model_name}''s")
        model_inputs = {io.name: io for io in model.input}
        model_outputs = {io.name: io for io in model.output}
        for key in sorted(step.input_map):
            if key not in model_inputs:
                add(("step", s, "input_map", key), "ensemble-step-input", f"{where} maps input "
                    f"'{key}', which model '{step.model_name}' does not have (its inputs: "
                    f"{_names(model_inputs)})", "use one of the model's input names as the key")
        for io in model.input:
            if io.name not in step.input_map and not io.optional:
                add(("step", s, "input_map"), "ensemble-input-mapped-once", f"{where} leaves "
                    f"required input '{io.name}' unmapped", f"add input_map {{ key: \"{io.name}\" "
                    "value: <ensemble tensor> }")
        for key in sorted(step.output_map):
            if key not in model_outputs:
                add(("step", s, "output_map", key), "ensemble-step-output", f"{where} maps output "
                    f"'{key}', which model '{step.model_name}' does not have (its outputs: "
                    f"{_names(model_outputs)})", "use one of the model's output names as the key")

    # data flow (ValidateEnsembleSchedulingConfig)
    for tensor in ensemble_inputs:
        if tensor not in consumers:
            out.append(Violation(name, ("input", _index(config.input, tensor)), "ensemble-unused-input",
                                 f"ensemble input '{tensor}' is not read by any step",
                                 "map it into a step's input_map, or remove the input"))
    for tensor in ensemble_outputs:
        if tensor not in producers:
            out.append(Violation(name, ("output", _index(config.output, tensor)),
                                 "ensemble-unproduced-output", f"ensemble output '{tensor}' is not "
                                 "written by any step", "map a step output to it in that step's "
                                 "output_map, or remove the output"))
    for tensor, uses in sorted(consumers.items()):
        if tensor not in producers and tensor not in ensemble_inputs:
            s, key = uses[0]
            add(("step", s, "input_map", key), "ensemble-unconnected-tensor", f"step {s} (model "
                f"'{steps[s].model_name}') input '{key}' reads ensemble tensor '{tensor}', which is "
                "neither an ensemble input nor written by any step", "map it from an ensemble input "
                "or a step output (check the spelling)")
    for tensor, (s, key) in sorted(producers.items()):
        if tensor not in consumers and tensor not in ensemble_outputs:
            add(("step", s, "output_map", key), "ensemble-unused-tensor", f"ensemble tensor "
                f"'{tensor}' written by step {s} (model '{steps[s].model_name}') output '{key}' is "
                "neither read by a step nor an ensemble output", "remove the mapping, or use the "
                "tensor")

    order = _step_order(steps, producers, consumers)
    if order is None:
        cycle = _find_cycle(steps, producers)
        add(("step",), "ensemble-cycle", "steps depend on each other in a cycle: "
            + " -> ".join(f"step {s} (model '{steps[s].model_name}')" for s in cycle),
            "break the cycle: a step may only read ensemble inputs and outputs of earlier steps")

    out += _check_edges(name, config, steps, configs, producers, consumers, batching)
    if order is not None:
        out += _check_decoupled(name, steps, configs, order, ensemble_inputs)
    return out


def _names(tensors: dict) -> str:
    return ", ".join(f"'{n}'" for n in tensors) or "none"


def _index(ios, name: str) -> int:
    return next(i for i, io in enumerate(ios) if io.name == name)


def _step_dependencies(steps, producers) -> list[set[int]]:
    """For each step, the steps whose outputs it reads."""
    return [{producers[t][0] for t in step.input_map.values() if t in producers} for step in steps]


def _step_order(steps, producers, consumers) -> list[int] | None:
    """Steps in an order where each comes after the steps it reads from; None if there is a cycle."""
    deps = _step_dependencies(steps, producers)
    order, done = [], set()
    while len(order) < len(steps):
        ready = [s for s in range(len(steps)) if s not in done and deps[s] <= done]
        if not ready:
            return None
        order.extend(ready)
        done.update(ready)
    return order


def _find_cycle(steps, producers) -> list[int]:
    deps = _step_dependencies(steps, producers)
    state: dict[int, int] = {}  # 1 on the stack, 2 finished
    stack: list[int] = []

    def visit(s: int) -> list[int] | None:
        state[s] = 1
        stack.append(s)
        for d in sorted(deps[s]):
            if state.get(d) == 1:
                # stack[i] reads from stack[i + 1]: reversed, the cycle runs in data-flow order
                cycle = list(reversed(stack[stack.index(d):]))
                first = cycle.index(min(cycle))
                cycle = cycle[first:] + cycle[:first]
                return cycle + [cycle[0]]
            if d not in state:
                found = visit(d)
                if found:
                    return found
        stack.pop()
        state[s] = 2
        return None

    for s in range(len(steps)):
        if s not in state:
            found = visit(s)
            if found:
                return found
    return []  # not reached: _step_order found a cycle


def _check_edges(name, config, steps, configs, producers, consumers, batching) -> list[Violation]:
    """Data type and shape agree along every edge (ensemble_utils.cc ValidateTensorConsistency)."""
    out: list[Violation] = []

    def ensemble_end(io, kind: str) -> _End:
        dims = tuple(io.reshape.shape) if io.HasField("reshape") else tuple(io.dims)
        return _End(f"ensemble {kind} '{io.name}'", batching, io.data_type, dims)

    def step_end(s: int, key: str, kind: str) -> _End | None:
        model = configs.get(steps[s].model_name)
        if model is None:
            return None
        io = next((io for io in getattr(model, kind) if io.name == key), None)
        if io is None:
            return None
        return _End(f"step {s} (model '{steps[s].model_name}') {kind} '{key}'",
                    model.max_batch_size > 0, io.data_type, tuple(io.dims))

    sources: dict[str, _End] = {io.name: ensemble_end(io, "input") for io in config.input}
    for tensor, (s, key) in producers.items():
        end = step_end(s, key, "output")
        if end is not None and tensor not in sources:
            sources[tensor] = end

    edges: list[tuple[tuple, str, _End]] = []
    for tensor, uses in sorted(consumers.items()):
        for s, key in uses:
            end = step_end(s, key, "input")
            if end is not None:
                edges.append((("ensemble_scheduling", "step", s, "input_map", key), tensor, end))
    for i, io in enumerate(config.output):
        edges.append((("output", i), io.name, ensemble_end(io, "output")))

    for loc, tensor, sink in edges:
        source = sources.get(tensor)
        if source is None:
            continue
        if source.dtype != sink.dtype:
            out.append(Violation(name, loc, "ensemble-edge-dtype", f"ensemble tensor '{tensor}': "
                                 f"{source.who} is {data_type_name(source.dtype)} but {sink.who} is "
                                 f"{data_type_name(sink.dtype)}", "make both sides the same data_type "
                                 "(convert in a step if needed)"))
        elif not (_same_shape(source.dims, sink.dims) or _same_shape(source.full_dims, sink.full_dims)):
            out.append(Violation(name, loc, "ensemble-edge-shape", f"ensemble tensor '{tensor}': "
                                 f"{source.who} has shape {list(source.full_dims)} but {sink.who} "
                                 f"has shape {list(sink.full_dims)} (batch dimension included)",
                                 "make the dims agree (-1 matches any size; a non-batching model's "
                                 "dims include the batch dimension)"))
    return out


def _same_shape(a: tuple, b: tuple) -> bool:
    return len(a) == len(b) and all(x == y or WILDCARD in (x, y) for x, y in zip(a, b))


def _check_decoupled(name, steps, configs, order, ensemble_inputs) -> list[Violation]:
    """A step may not read tensors that come from different decoupled models (ensemble_utils.cc)."""
    label: dict[str, int] = {tensor: 0 for tensor in ensemble_inputs}
    next_label = 0
    out: list[Violation] = []
    for s in order:
        step = steps[s]
        labels = {label[t] for t in step.input_map.values() if t in label}
        if len(labels) > 1:
            out.append(Violation(name, ("ensemble_scheduling", "step", s), "ensemble-decoupled",
                                 f"step {s} (model '{step.model_name}') reads tensors that come from "
                                 "different decoupled models", "feed the step from one decoupled "
                                 "model's outputs only"))
        current = min(labels) if labels else 0
        model = configs.get(step.model_name)
        if model is not None and model.model_transaction_policy.decoupled:
            next_label += 1
            current = next_label
        for tensor in step.output_map.values():
            label.setdefault(tensor, current)
    return out


def _ensemble_model_cycles(configs: dict[str, mc.ModelConfig]) -> list[Violation]:
    """Ensembles that contain themselves through their steps (Triton: circular dependency)."""
    children = {name: sorted({s.model_name for s in c.ensemble_scheduling.step})
                for name, c in configs.items() if c.HasField("ensemble_scheduling")}
    out: list[Violation] = []
    reported: set[frozenset] = set()
    for start in sorted(children):
        path = _path_back(start, children)
        if path and frozenset(path) not in reported:
            reported.add(frozenset(path))
            out.append(Violation(start, ("ensemble_scheduling", "step"), "ensemble-cycle",
                                 "ensemble contains itself: " + " -> ".join(f"'{m}'" for m in path),
                                 "remove the step that leads back to an enclosing ensemble"))
    return out


def _path_back(start: str, children: dict[str, list[str]]) -> list[str] | None:
    """A chain of ensemble steps from start back to start, or None."""
    seen: set[str] = set()
    stack = [(start, [start])]
    while stack:
        node, path = stack.pop()
        for child in children.get(node, ()):
            if child == start:
                return path + [start]
            if child not in seen and child in children:
                seen.add(child)
                stack.append((child, path + [child]))
    return None


# ---------------------------------------------------------------------------------------------
# Text-level checks


def _parse_message(exc: text_format.ParseError) -> str:
    text = str(exc)
    # "3:17 : Message type ..." -> "line 3, column 17: Message type ..."
    match = re.match(r"^(\d+):(\d+) : (.*)$", text, re.S)
    if match:
        return f"line {match[1]}, column {match[2]}: {match[3]}"
    return text


@lru_cache(maxsize=1)
def _raw_config_class():
    """ModelConfig with its maps declared as plain repeated entries, so a parse keeps every
    `input_map { key: ... }` written (the real map keeps only the last of duplicated keys)."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    proto = descriptor_pb2.FileDescriptorProto()
    mc.DESCRIPTOR.CopyToProto(proto)

    def unmap(messages: Iterable) -> None:
        for message in messages:
            message.options.map_entry = False
            unmap(message.nested_type)

    unmap(proto.message_type)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("inference.ModelConfig"))


def _duplicate_map_keys(name: str, text: str) -> list[Violation]:
    """Step input/output maps whose key is written twice: protobuf keeps only the last one."""
    raw = _raw_config_class()()
    text_format.Parse(text, raw)  # the real parse of the same text already succeeded
    out: list[Violation] = []
    for s, step in enumerate(raw.ensemble_scheduling.step):
        for field, rule, what in (("input_map", "ensemble-input-mapped-once", "input"),
                                  ("output_map", "ensemble-output-mapped-once", "output")):
            values: dict[str, list[str]] = {}
            for entry in getattr(step, field):
                values.setdefault(entry.key, []).append(entry.value)
            for key, mapped in values.items():
                if len(mapped) > 1:
                    out.append(Violation(
                        name, ("ensemble_scheduling", "step", s, field, key), rule,
                        f"step {s} (model '{step.model_name}') maps {what} '{key}' {len(mapped)} "
                        f"times (to {', '.join(repr(v) for v in mapped)}); only the last one takes "
                        "effect", f"keep one {field} entry for '{key}'"))
    return out
