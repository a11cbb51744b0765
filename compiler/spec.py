"""The declarative spec (model.yaml) as pydantic v2 models, with cross-field validation.

`load_spec(path)` is the only way in: YAML with line tracking, then these models; every problem
becomes a one-line SpecError naming the file, line, field path and fix.
"""
from __future__ import annotations

import re
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator,
                      model_validator)

from .errors import SpecError
from .llm.spec import LlmSpec
from .specfile import field_path, line_for, load_yaml_with_lines

# Triton's tensor data types, spelled as in config.pbtxt without the TYPE_ prefix.
DATA_TYPES = ("BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
              "FP16", "FP32", "FP64", "STRING", "BF16")
DataType = Literal[DATA_TYPES]  # Literal of a tuple == Literal of its items

RUNTIMES = ("embedded", "container")
FRAMEWORKS = ("sklearn", "xgboost", "lightgbm", "pytorch", "onnx", "python", "huggingface")
CONVERTED_FRAMEWORKS = ("sklearn", "xgboost", "lightgbm", "pytorch", "onnx")

_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_\-]*$")
_FACTORY_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def _model_name(value: str) -> str:
    if not _NAME_RE.match(value):
        raise ValueError(f"'{value}' is not a valid model name: use letters, digits, '_' and '-', "
                         "starting with a letter (it becomes a directory name)")
    return value


def _tensor_name(value: str) -> str:
    if not value or not re.match(r"^[A-Za-z_][A-Za-z0-9_.:\-]*$", value):
        raise ValueError(f"'{value}' is not a valid tensor name: use letters, digits, '_', '.', ':' and '-'")
    return value


ModelName = Annotated[str, AfterValidator(_model_name)]
TensorName = Annotated[str, AfterValidator(_tensor_name)]


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False, validate_default=True)


class TensorSpec(StrictModel):
    """One input or output tensor. dims exclude the batch dimension when max_batch_size > 0."""

    name: TensorName
    dtype: DataType
    dims: list[int] = Field(min_length=1)
    reshape: list[int] | None = None
    optional: bool = False
    # Sample generation for verification when no sample data is given: uniform in [low, high].
    range: tuple[float, float] | None = None

    @field_validator("dims")
    @classmethod
    def _dims(cls, dims: list[int]) -> list[int]:
        for d in dims:
            if d == 0 or d < -1:
                raise ValueError(f"dimension {d} is invalid: each dim is >= 1, or -1 for variable size")
        return dims

    @model_validator(mode="after")
    def _range(self) -> "TensorSpec":
        if self.range is not None and self.range[0] > self.range[1]:
            raise ValueError(f"range low {self.range[0]} is above high {self.range[1]}")
        return self


class SourceSpec(StrictModel):
    """Where the model comes from. `path` is relative to the spec file; `factory` is `module:function`
    returning the in-memory model (a fitted estimator, an nn.Module), imported with the spec's directory
    on sys.path."""

    framework: Literal[FRAMEWORKS]
    path: str | None = None
    factory: str | None = None
    builtin: str | None = None  # python framework: a model.py shipped in python_backends/

    @field_validator("factory")
    @classmethod
    def _factory(cls, value: str | None) -> str | None:
        if value is not None and not _FACTORY_RE.match(value):
            raise ValueError(f"'{value}' is not a factory reference: write 'package.module:function'")
        return value

    @model_validator(mode="after")
    def _one_origin(self) -> "SourceSpec":
        given = [k for k in ("path", "factory", "builtin") if getattr(self, k) is not None]
        if self.framework == "python":
            if len(given) != 1 or given[0] == "factory":
                raise ValueError("a python model needs exactly one of 'path' (a model.py) or 'builtin' "
                                 "(a model.py from python_backends/)")
        elif self.framework == "onnx":
            if given != ["path"]:
                raise ValueError("an onnx model needs 'path' (and no factory/builtin)")
        elif self.framework == "huggingface":
            if len(given) != 1 or given[0] == "builtin":
                raise ValueError("a huggingface model needs exactly one of 'path' (a model directory) or "
                                 "'factory' ('module:function' returning that directory, e.g. after creating it)")
        elif len(given) != 1 or given[0] == "builtin":
            raise ValueError(f"a {self.framework} model needs exactly one of 'path' (a saved model) or "
                             "'factory' ('module:function' returning the model)")
        return self


class QueuePolicy(StrictModel):
    timeout_action: Literal["REJECT", "DELAY"] = "REJECT"
    default_timeout_microseconds: int = Field(default=0, ge=0)
    allow_timeout_override: bool = False
    max_queue_size: int = Field(default=0, ge=0)


class DynamicBatching(StrictModel):
    preferred_batch_size: list[int] = Field(default_factory=list)
    max_queue_delay_microseconds: int = Field(default=0, ge=0)
    preserve_ordering: bool = False
    priority_levels: int = Field(default=0, ge=0)
    default_priority_level: int = Field(default=0, ge=0)
    default_queue_policy: QueuePolicy | None = None

    @field_validator("preferred_batch_size")
    @classmethod
    def _positive(cls, sizes: list[int]) -> list[int]:
        if any(s < 1 for s in sizes):
            raise ValueError("preferred batch sizes must be >= 1")
        return sizes


class InstanceGroup(StrictModel):
    count: int = Field(default=1, ge=1)
    kind: Literal["cpu", "gpu", "auto"] = "cpu"
    gpus: list[int] | None = None


class WarmupSpec(StrictModel):
    name: str = "warmup"
    batch_size: int = Field(default=1, ge=1)
    count: int = Field(default=1, ge=1)
    data: Literal["zero", "random"] = "zero"


class VersionPolicy(StrictModel):
    latest: int | None = Field(default=None, ge=1)
    all: bool = False
    specific: list[int] | None = None

    @model_validator(mode="after")
    def _one(self) -> "VersionPolicy":
        chosen = sum([self.latest is not None, self.all, self.specific is not None])
        if chosen != 1:
            raise ValueError("version_policy takes exactly one of latest: N, all: true, specific: [..]")
        return self


class VerifySpec(StrictModel):
    """Numeric check of the converted model against its source. Tolerances default per dtype."""

    samples: int = Field(default=64, ge=1, le=100_000)
    seed: int = 0
    atol: float | None = Field(default=None, ge=0)
    rtol: float | None = Field(default=None, ge=0)
    # Fraction of samples whose discrete outputs (labels) may differ: tree thresholds compared in
    # float32 (ONNX) vs float64 (source) can flip a sample that lies on a split boundary.
    max_label_mismatch: float = Field(default=0.0, ge=0, le=1)


class ModelSpec(StrictModel):
    name: ModelName
    source: SourceSpec
    version: int = Field(default=1, ge=1)
    inputs: list[TensorSpec] | None = None
    outputs: list[TensorSpec] | None = None
    max_batch_size: int = Field(default=32, ge=0)
    dynamic_batching: DynamicBatching | None = None
    instance_group: list[InstanceGroup] = Field(default_factory=list)
    warmup: list[WarmupSpec] = Field(default_factory=list)
    version_policy: VersionPolicy | None = None
    parameters: dict[str, str] = Field(default_factory=dict)
    decoupled: bool = False
    response_cache: bool = False
    verify: VerifySpec = Field(default_factory=VerifySpec)
    # Explicit sample inputs (name -> nested list, batch first); generated from inputs otherwise.
    sample_inputs: dict[str, list[Any]] | None = None
    llm: LlmSpec | None = None

    @model_validator(mode="after")
    def _cross_fields(self) -> "ModelSpec":
        fw = self.source.framework
        if fw in ("python",) and (self.inputs is None or self.outputs is None):
            raise ValueError("a python model must declare its inputs and outputs")
        if fw == "pytorch" and self.inputs is None:
            raise ValueError("a pytorch model must declare its inputs (name, dtype, dims) for export")
        if fw == "huggingface" and self.llm is None:
            raise ValueError("a huggingface model needs an 'llm' block")
        if fw != "huggingface" and self.llm is not None:
            raise ValueError("'llm' applies only to source.framework: huggingface")
        if self.dynamic_batching is not None:
            if self.max_batch_size == 0:
                raise ValueError("dynamic_batching needs max_batch_size > 0")
            for size in self.dynamic_batching.preferred_batch_size:
                if size > self.max_batch_size:
                    raise ValueError(f"preferred_batch_size {size} exceeds max_batch_size {self.max_batch_size}")
        if self.response_cache and self.decoupled:
            raise ValueError("response_cache cannot be used with a decoupled model")
        _check_sample_names(self.sample_inputs, self.inputs)
        for tensors, kind in ((self.inputs, "inputs"), (self.outputs, "outputs")):
            names = [t.name for t in tensors or []]
            dup = {n for n in names if names.count(n) > 1}
            if dup:
                raise ValueError(f"duplicate {kind} name(s): {', '.join(sorted(dup))}")
        return self


class EnsembleStep(StrictModel):
    model: ModelName
    version: int = -1
    # Keys are the step model's tensor names, values the ensemble's tensor names (Triton's own
    # convention in ensemble_scheduling).
    input_map: dict[str, str]
    output_map: dict[str, str]


class EnsembleSpec(StrictModel):
    name: ModelName
    max_batch_size: int = Field(default=32, ge=0)
    inputs: list[TensorSpec] = Field(min_length=1)
    outputs: list[TensorSpec] = Field(min_length=1)
    steps: list[EnsembleStep] = Field(min_length=1)
    sample_inputs: dict[str, list[Any]] | None = None

    @model_validator(mode="after")
    def _samples(self) -> "EnsembleSpec":
        _check_sample_names(self.sample_inputs, self.inputs)
        return self


def _check_sample_names(samples: dict[str, list[Any]] | None, inputs: list[TensorSpec] | None) -> None:
    if samples is None:
        return
    names = [t.name for t in inputs or []]
    unknown = sorted(set(samples) - set(names))
    if unknown:
        raise ValueError(f"sample_inputs names unknown input(s) {', '.join(unknown)}; the inputs are: "
                         f"{', '.join(names) or '(none declared: declare inputs to give samples)'}")


class ContainerTarget(StrictModel):
    """Settings for `runtime: container` (NGC tritonserver images with native backends)."""

    release: str = "24.10"
    device: Literal["cpu", "gpu"] = "gpu"
    tensorrt_fp16: bool = False

    @field_validator("release")
    @classmethod
    def _release(cls, value: str) -> str:
        if not re.match(r"^\d\d\.\d\d$", str(value)):
            raise ValueError(f"'{value}' is not an NGC release tag: write it as YY.MM, e.g. \"24.10\"")
        return str(value)


class PerfSettings(StrictModel):
    """How `tritonize perf --baseline` judges a regression (recorded in the manifest)."""

    # Throughput may drop this fraction, p99 latency rise this fraction, before a point counts as
    # slower (and only when the change also exceeds the spread of the repeats).
    tolerance: float = Field(default=0.10, gt=0, le=1)
    latency_tolerance: float = Field(default=0.25, gt=0, le=10)


class Spec(StrictModel):
    repository: str = "model_repo"
    runtime: Literal[RUNTIMES] = "embedded"
    container: ContainerTarget = Field(default_factory=ContainerTarget)
    models: list[ModelSpec] = Field(min_length=1)
    ensembles: list[EnsembleSpec] = Field(default_factory=list)
    perf: PerfSettings = Field(default_factory=PerfSettings)

    @model_validator(mode="after")
    def _names_and_references(self) -> "Spec":
        seen: set[str] = set()
        for entry in [*self.models, *self.ensembles]:
            if entry.name in seen:
                raise ValueError(f"model name '{entry.name}' is used twice: names must be unique across "
                                 "models and ensembles")
            seen.add(entry.name)
        model_names = {m.name for m in self.models}
        for ens in self.ensembles:
            for step in ens.steps:
                if step.model not in model_names:
                    raise ValueError(f"ensemble '{ens.name}' has a step on unknown model '{step.model}' "
                                     f"(declared models: {', '.join(sorted(model_names))})")
        return self

    # Set by load_spec: where the spec lives (relative paths resolve against it), and the YAML
    # line of each field path, so later stages can point errors at the spec.
    _path: Path | None = None
    _lines: dict = {}

    @property
    def path(self) -> Path:
        assert self._path is not None
        return self._path

    @property
    def lines(self) -> dict:
        return self._lines

    @property
    def base_dir(self) -> Path:
        return self.path.parent

    def model(self, name: str) -> ModelSpec:
        return next(m for m in self.models if m.name == name)

    def resolve(self, relative: str) -> Path:
        return (self.base_dir / relative).resolve()


def load_spec(path: str | Path, *, runtime: str | None = None) -> Spec:
    """Load and validate a spec file; raises SpecError (one line) on any problem.

    runtime overrides the spec's `runtime` before validation (one spec, two targets)."""
    path = Path(path)
    data, lines = load_yaml_with_lines(path)
    if not isinstance(data, dict):
        raise SpecError("the spec must be a mapping at the top level", file=path, line=1,
                        fix="start with keys such as `repository:` and `models:`")
    if runtime is not None:
        if runtime not in RUNTIMES:
            raise SpecError(f"unknown runtime '{runtime}'", field="--runtime", fix=f"use one of: {', '.join(RUNTIMES)}")
        data["runtime"] = runtime
    try:
        spec = Spec.model_validate(data)
    except ValidationError as exc:
        raise _spec_error(exc, path, lines) from None
    spec._path = path.resolve()
    spec._lines = lines
    _check_sources_exist(spec, path, lines)
    if any(m.llm is not None for m in spec.models):
        from .llm.spec import validate_llm_blocks

        validate_llm_blocks(spec, lines)
    return spec


def spec_error_at(path: Path, lines: dict, loc: tuple, message: str, fix: str | None = None) -> SpecError:
    return SpecError(message, file=path, line=line_for(lines, loc), field=field_path(loc), fix=fix)


def _spec_error(exc: ValidationError, path: Path, lines: dict) -> SpecError:
    loc, message, fix = describe_validation_error(exc, Spec)
    return spec_error_at(path, lines, loc, message, fix)


def describe_validation_error(exc: ValidationError, root: type[BaseModel]) -> tuple[tuple, str, str | None]:
    """The first pydantic error as (field path, one-line message, fix), phrased for YAML authors."""
    error = exc.errors()[0]
    loc = tuple(p for p in error["loc"] if not (isinstance(p, str) and p.startswith(("function-", "tagged"))))
    kind = error["type"]
    message = error["msg"].removeprefix("Value error, ")
    fix = None
    if kind == "extra_forbidden":
        owner = _model_at(root, loc[:-1])
        message = f"unknown key '{loc[-1]}'"
        fix = f"use one of: {', '.join(owner.model_fields)}" if owner else "remove it"
    elif kind == "missing":
        message, fix = f"required key '{loc[-1]}' is missing", f"add `{loc[-1]}:`"
    elif kind == "literal_error":
        message = f"{error['input']!r} is not allowed"
        fix = f"use one of: {error.get('ctx', {}).get('expected', '')}"
    elif kind.endswith("_type") or kind.endswith("_parsing"):
        message = f"{message}, got {error['input']!r}"
    return loc, message, fix


def _model_at(root: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """Walk the models along a field path to find which model a key was unknown in."""
    current: type[BaseModel] | None = root
    for part in loc:
        if isinstance(part, int):
            continue
        field = current.model_fields.get(part)
        current = _inner_model(field.annotation) if field is not None else None
        if current is None:
            return None
    return current


def _inner_model(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside an annotation such as `list[TensorSpec] | None`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _inner_model(arg)
        if found is not None:
            return found
    return None


def _check_sources_exist(spec: Spec, path: Path, lines: dict) -> None:
    for i, model in enumerate(spec.models):
        src = model.source
        if src.path is not None and not spec.resolve(src.path).exists():
            raise spec_error_at(path, lines, ("models", i, "source", "path"),
                                f"file not found: {src.path}",
                                fix="give a path relative to the spec file")
        if src.builtin is not None:
            from .backends import builtin_backend_names

            names = builtin_backend_names()
            if src.builtin not in names:
                raise spec_error_at(path, lines, ("models", i, "source", "builtin"),
                                    f"unknown builtin python model '{src.builtin}'",
                                    fix=f"use one of: {', '.join(names)}")
