"""The declarative spec (model.yaml) as pydantic v2 models, with cross-field validation.

`tritonize.spec.load_spec(path)` is the only way in (spec/load.py): YAML with line tracking,
then these models; every problem becomes a one-line SpecError naming the file, line, field path
and fix.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from ..deploy.spec import DeploySpec
from ..frameworks import FRAMEWORK_NAMES, FRAMEWORKS
from .llm import DIRECTORY_SUFFIXES, LlmSpec
from .source import SpecSource

# Triton's tensor data types, spelled as in config.pbtxt without the TYPE_ prefix.
DATA_TYPES = ("BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
              "FP16", "FP32", "FP64", "STRING", "BF16")
# Literal of a tuple == Literal of its items (for pydantic; mypy cannot see through it).
DataType = Literal[DATA_TYPES]  # type: ignore[valid-type]

RUNTIMES = ("embedded", "container")

_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_\-]*$")
# A model name is a directory name: at most NAME_MAX (255) bytes, less room for the LLM path's
# suffixes (`_postprocessing`) and the `.NAME.staging-PID-XXXXXXXX` names emission uses next to it.
MAX_NAME_LENGTH = 200


def _no_bool(value: Any) -> Any:
    # YAML `true` is not a number (pydantic would take it as 1).
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got {str(value).lower()}")
    return value


# Integers as Triton's model_config.proto stores them (triton-inference-server/common, main,
# protobuf/model_config.proto): a value outside its field's range cannot be written into a config.
def _in_range(kind: str, low: int, high: int) -> AfterValidator:
    def check(value: int) -> int:  # in Python ints: pydantic's le/ge lose precision beyond 2**53
        if not low <= value <= high:
            raise ValueError(f"{value} is out of range: Triton's model config stores this field as {kind} "
                             f"[{low}, {high}]")
        return value

    return AfterValidator(check)


Int32 = Annotated[int, BeforeValidator(_no_bool), _in_range("int32", -(2**31), 2**31 - 1)]
Int64 = Annotated[int, BeforeValidator(_no_bool), _in_range("int64", -(2**63), 2**63 - 1)]
UInt32 = Annotated[int, BeforeValidator(_no_bool), _in_range("uint32", 0, 2**32 - 1)]
UInt64 = Annotated[int, BeforeValidator(_no_bool), _in_range("uint64", 0, 2**64 - 1)]
FiniteFloat = Annotated[float, BeforeValidator(_no_bool), Field(allow_inf_nan=False)]
_FACTORY_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def _model_name(value: str) -> str:
    if len(value) > MAX_NAME_LENGTH:
        raise ValueError(f"model name is {len(value)} characters long: it becomes a directory name, so at most "
                         f"{MAX_NAME_LENGTH}")
    if not _NAME_RE.match(value):
        raise ValueError(f"'{value}' is not a valid model name: use letters, digits, '_' and '-', "
                         "starting with a letter (it becomes a directory name)")
    return value


TENSOR_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:\-]*$")


def _tensor_name(value: str) -> str:
    if not value or not TENSOR_NAME_RE.match(value):
        raise ValueError(f"'{value}' is not a valid tensor name: use letters, digits, '_', '.', ':' and '-'")
    return value


ModelName = Annotated[str, AfterValidator(_model_name)]
TensorName = Annotated[str, AfterValidator(_tensor_name)]


class FixableValueError(ValueError):
    """A validator's error with the fix to print after it (spec.load.describe_validation_error)."""

    def __init__(self, message: str, fix: str):
        super().__init__(message)
        self.fix = fix


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False, validate_default=True)


class TensorSpec(StrictModel):
    """One input or output tensor. dims exclude the batch dimension when max_batch_size > 0."""

    name: TensorName
    dtype: DataType
    dims: list[Int64] = Field(min_length=1)  # ModelInput.dims: repeated int64
    reshape: list[Int64] | None = None  # ModelTensorReshape.shape: repeated int64
    optional: bool = False
    # Sample generation for verification when no sample data is given: uniform in [low, high].
    range: tuple[FiniteFloat, FiniteFloat] | None = None

    @field_validator("dims")
    @classmethod
    def _dims(cls, dims: list[int]) -> list[int]:
        for d in dims:
            if d == 0 or d < -1:
                raise ValueError(f"dimension {d} is invalid: each dim is >= 1, or -1 for variable size")
        return dims

    @model_validator(mode="after")
    def _range(self) -> TensorSpec:
        if self.range is not None and self.range[0] > self.range[1]:
            raise ValueError(f"range low {self.range[0]} is above high {self.range[1]}")
        return self


class SourceSpec(StrictModel):
    """Where the model comes from. `path` is relative to the spec file; `factory` is `module:function`
    returning the in-memory model (a fitted estimator, an nn.Module), imported with the spec's directory
    on sys.path."""

    framework: Literal[FRAMEWORK_NAMES]  # type: ignore[valid-type]  # the registry's names
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
    def _one_origin(self) -> SourceSpec:
        origins = FRAMEWORKS[self.framework].origins
        given = [k for k in ("path", "factory", "builtin") if getattr(self, k) is not None]
        if len(given) != 1 or given[0] not in origins:
            choices = " or ".join(f"'{key}' ({meaning})" for key, meaning in origins.items())
            many = "exactly one of " if len(origins) > 1 else ""
            raise ValueError(f"a {self.framework} model needs {many}{choices}")
        return self


class QueuePolicy(StrictModel):
    timeout_action: Literal["REJECT", "DELAY"] = "REJECT"
    default_timeout_microseconds: UInt64 = 0
    allow_timeout_override: bool = False
    max_queue_size: UInt32 = 0


class DynamicBatching(StrictModel):
    preferred_batch_size: list[Int32] = Field(default_factory=list)
    max_queue_delay_microseconds: UInt64 = 0
    preserve_ordering: bool = False
    priority_levels: UInt64 = 0
    default_priority_level: UInt64 = 0
    default_queue_policy: QueuePolicy | None = None

    @field_validator("preferred_batch_size")
    @classmethod
    def _positive(cls, sizes: list[int]) -> list[int]:
        if any(s < 1 for s in sizes):
            raise ValueError("preferred batch sizes must be >= 1")
        return sizes


class InstanceGroup(StrictModel):
    count: Annotated[Int32, Field(ge=1)] = 1
    kind: Literal["cpu", "gpu", "auto"] = "cpu"
    gpus: list[Annotated[Int32, Field(ge=0)]] | None = None


class WarmupSpec(StrictModel):
    name: str = "warmup"
    batch_size: Annotated[UInt32, Field(ge=1)] = 1
    count: Annotated[UInt32, Field(ge=1)] = 1
    data: Literal["zero", "random"] = "zero"


class VersionPolicy(StrictModel):
    latest: Annotated[UInt32, Field(ge=1)] | None = None
    all: bool = False
    specific: list[Annotated[Int64, Field(ge=1)]] | None = None

    @model_validator(mode="after")
    def _one(self) -> VersionPolicy:
        chosen = sum([self.latest is not None, self.all, self.specific is not None])
        if chosen != 1:
            raise ValueError("version_policy takes exactly one of latest: N, all: true, specific: [..]")
        return self


class VerifySpec(StrictModel):
    """Numeric check of the converted model against its source. Tolerances default per dtype."""

    samples: Annotated[int, BeforeValidator(_no_bool), Field(ge=1, le=100_000)] = 64
    seed: UInt64 = 0  # numpy's generator takes a seed >= 0
    atol: Annotated[FiniteFloat, Field(ge=0)] | None = None
    rtol: Annotated[FiniteFloat, Field(ge=0)] | None = None
    # Fraction of samples whose discrete outputs (labels) may differ: tree thresholds compared in
    # float32 (ONNX) vs float64 (source) can flip a sample that lies on a split boundary.
    max_label_mismatch: float = Field(default=0.0, ge=0, le=1)
    # Also check samples with NaN cells (sklearn/xgboost/lightgbm sources that answer them:
    # verify.with_missing_values); false for a model whose clients never send NaN.
    missing_values: bool = True


class EncoderSpec(StrictModel):
    """A HuggingFace encoder served on text: `framework: huggingface` without an `llm` block.

    task: feature-extraction (pooled embeddings) or text-classification (label from id2label and
    scores); default from config.json's architectures (*ForSequenceClassification: classification).
    pooling and normalize (feature-extraction): default from a sentence-transformers directory's
    1_Pooling/config.json and modules.json, else mean pooling, not normalized. max_length: every
    text is truncated or padded to it, so the encoder's dynamic batcher can join requests (default:
    sentence_bert_config.json's max_seq_length, else 128).
    """

    task: Literal["feature-extraction", "text-classification"] | None = None
    pooling: Literal["mean", "cls", "max", "mean_sqrt_len"] | None = None
    normalize: bool | None = None
    max_length: int = Field(default=128, ge=2, le=8192)


class ModelSpec(StrictModel):
    name: ModelName
    source: SourceSpec
    version: Annotated[Int64, Field(ge=1)] = 1  # a version directory: int64 in Triton
    inputs: list[TensorSpec] | None = None
    outputs: list[TensorSpec] | None = None
    max_batch_size: Annotated[Int32, Field(ge=0)] = 32  # ModelConfig.max_batch_size: int32
    dynamic_batching: DynamicBatching | None = None
    instance_group: list[InstanceGroup] = Field(default_factory=list)
    warmup: list[WarmupSpec] = Field(default_factory=list)
    version_policy: VersionPolicy | None = None
    # Config parameters are strings in Triton; YAML numbers and booleans are written as their text
    # (the backends parse the ones they read: load.py checks those against triton.config.PARAMETER_TYPES).
    parameters: dict[str, Annotated[str, BeforeValidator(_parameter_text)]] = Field(default_factory=dict)
    decoupled: bool = False
    response_cache: bool = False
    verify: VerifySpec = Field(default_factory=VerifySpec)
    # Explicit sample inputs (name -> nested list, batch first); generated from inputs otherwise.
    sample_inputs: dict[str, list[Any]] | None = None
    llm: LlmSpec | None = None
    encoder: EncoderSpec | None = None

    @model_validator(mode="after")
    def _cross_fields(self) -> ModelSpec:
        fw = self.source.framework
        if fw in ("python",) and (self.inputs is None or self.outputs is None):
            raise FixableValueError("a python model must declare its inputs and outputs",
                                    "add inputs: and outputs: lists (name, dtype, dims) to the model")
        if fw == "pytorch" and self.inputs is None:
            raise FixableValueError("a pytorch model must declare its inputs (name, dtype, dims) for export",
                                    "add inputs: [{name: x, dtype: FP32, dims: [...]}], one per forward() argument")
        for block in ("llm", "encoder"):
            if fw != "huggingface" and getattr(self, block) is not None:
                raise ValueError(f"'{block}' applies only to source.framework: huggingface")
        if self.llm is not None and self.encoder is not None:
            raise ValueError("a huggingface model is an LLM ('llm' block) or an encoder ('encoder' block), not both")
        if fw == "huggingface" and self.llm is None and (self.inputs is not None or self.outputs is not None):
            raise ValueError("a huggingface encoder's inputs and outputs are fixed (text -> embeddings, or "
                             "label and scores): remove inputs/outputs")
        if self.dynamic_batching is not None:
            if self.max_batch_size == 0:
                raise FixableValueError("dynamic_batching needs max_batch_size > 0",
                                        "set max_batch_size (e.g. 8), or drop dynamic_batching")
            for size in self.dynamic_batching.preferred_batch_size:
                if size > self.max_batch_size:
                    raise ValueError(f"preferred_batch_size {size} exceeds max_batch_size {self.max_batch_size}")
        if self.response_cache and self.decoupled:
            raise FixableValueError("response_cache cannot be used with a decoupled model",
                                    "drop response_cache, or decoupled")
        self._check_serving()
        if self.inputs is not None:  # else the converted graph's inputs, checked once known (samples.py)
            _check_sample_names(self.sample_inputs, self.inputs)
        for tensors, kind in ((self.inputs, "inputs"), (self.outputs, "outputs")):
            names = [t.name for t in tensors or []]
            dup = {n for n in names if names.count(n) > 1}
            if dup:
                raise ValueError(f"duplicate {kind} name(s): {', '.join(sorted(dup))}")
        return self

    def _check_serving(self) -> None:
        """What Triton refuses to load: decoupled on a backend without it, warmups it cannot run."""
        fw = self.source.framework
        if self.decoupled and FRAMEWORKS[fw].builder != "python":
            # Converted models are served by onnxruntime (container: its backend has no decoupled
            # mode, triton-inference-server/onnxruntime_backend main src/onnxruntime.cc) or by the ONNX
            # runner, which returns its responses from execute(): in decoupled mode the python
            # backend refuses that ("... is using the decoupled mode and the execute function must
            # return None", triton-inference-server/python_backend main src/pb_stub.cc).
            streaming = " (an LLM streams with llm.streaming: true)" if fw == "huggingface" else ""
            raise ValueError(f"decoupled: true needs a python model; a {fw} model is served by a backend "
                             f"without decoupled mode{streaming}")
        for index, warmup in enumerate(self.warmup):
            # Triton runs a warmup sample as batch_size requests in one execution
            # (triton-inference-server/core main src/backend_model_instance.cc): more than
            # max_batch_size fails the load.
            if self.max_batch_size > 0 and warmup.batch_size > self.max_batch_size:
                raise ValueError(f"warmup[{index}].batch_size {warmup.batch_size} exceeds max_batch_size "
                                 f"{self.max_batch_size}")
            if self.max_batch_size == 0 and warmup.batch_size != 1:
                raise ValueError(f"warmup[{index}].batch_size {warmup.batch_size}: a model with "
                                 "max_batch_size 0 takes no batches (use batch_size 1)")


def _parameter_text(value: Any) -> Any:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    return value


class EnsembleStep(StrictModel):
    model: ModelName
    version: Int64 = -1  # ModelEnsembling.Step.model_version: int64
    # Keys are the step model's tensor names, values the ensemble's tensor names (Triton's own
    # convention in ensemble_scheduling).
    input_map: dict[str, str]
    output_map: dict[str, str]


class EnsembleSpec(StrictModel):
    name: ModelName
    max_batch_size: Annotated[Int32, Field(ge=0)] = 32
    inputs: list[TensorSpec] = Field(min_length=1)
    outputs: list[TensorSpec] = Field(min_length=1)
    steps: list[EnsembleStep] = Field(min_length=1)
    sample_inputs: dict[str, list[Any]] | None = None

    @model_validator(mode="after")
    def _samples(self) -> EnsembleSpec:
        _check_sample_names(self.sample_inputs, self.inputs)
        return self


def _directory_names(entry: ModelSpec | EnsembleSpec) -> list[str]:
    """The model directories an entry becomes (an LLM becomes several: llm/repository.py Names)."""
    if isinstance(entry, ModelSpec) and entry.llm is not None:
        roles = [role for role in DIRECTORY_SUFFIXES if role != "bls" or entry.llm.bls]
        return [entry.name, *(entry.name + DIRECTORY_SUFFIXES[role] for role in roles)]
    return [entry.name]


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
    tolerance: Annotated[FiniteFloat, Field(gt=0, le=1)] = 0.10
    latency_tolerance: Annotated[FiniteFloat, Field(gt=0, le=10)] = 0.25


class Spec(StrictModel):
    repository: str = "model_repo"
    runtime: Literal[RUNTIMES] = "embedded"  # type: ignore[valid-type]
    container: ContainerTarget = Field(default_factory=ContainerTarget)
    models: list[ModelSpec] = Field(min_length=1)
    ensembles: list[EnsembleSpec] = Field(default_factory=list)
    perf: PerfSettings = Field(default_factory=PerfSettings)
    deploy: DeploySpec | None = None

    @model_validator(mode="after")
    def _names_and_references(self) -> Spec:
        seen: dict[str, str] = {}
        entries: list[ModelSpec | EnsembleSpec] = [*self.models, *self.ensembles]
        for entry in entries:
            for name in _directory_names(entry):
                other = seen.get(name.casefold())
                if other == name:
                    raise ValueError(f"model name '{name}' is used twice: names must be unique across "
                                     "models and ensembles (an LLM also uses its name + _preprocessing, "
                                     "_tensorrt_llm, _postprocessing, _bls)")
                if other is not None:
                    raise ValueError(f"model names '{other}' and '{name}' differ only by case: on a "
                                     "case-insensitive filesystem (macOS, Windows) they are one directory")
                seen[name.casefold()] = name
        model_names = {m.name for m in self.models}
        for ens in self.ensembles:
            for step in ens.steps:
                if step.model not in model_names:
                    raise ValueError(f"ensemble '{ens.name}' has a step on unknown model '{step.model}' "
                                     f"(declared models: {', '.join(sorted(model_names))})")
        return self

    # Set by load_spec: where the spec lives (relative paths resolve against it) and the YAML
    # line of each field path, so every stage's errors can point at the spec.
    _source: SpecSource | None = None

    @property
    def source(self) -> SpecSource:
        assert self._source is not None, "a Spec made without load_spec has no source file"
        return self._source

    @property
    def path(self) -> Path:
        return self.source.path

    @property
    def base_dir(self) -> Path:
        return self.path.parent

    def model(self, name: str) -> ModelSpec:
        return next(m for m in self.models if m.name == name)

    def resolve(self, relative: str) -> Path:
        return (self.base_dir / relative).resolve()


# pydantic writes a bound it cannot put into the core schema (one that follows a BeforeValidator,
# as the spec's integers do) under its own name ("ge"), which JSON Schema validators and editors
# ignore; these are JSON Schema's keywords for them (draft 2020-12, validation vocabulary).
_JSON_SCHEMA_BOUNDS = {"ge": "minimum", "le": "maximum", "gt": "exclusiveMinimum", "lt": "exclusiveMaximum"}


def spec_json_schema() -> dict[str, Any]:
    """The JSON Schema of model.yaml (`tritonize schema`), with standard keywords only."""
    def standard(node: Any, names: bool = False) -> Any:
        if isinstance(node, list):
            return [standard(item) for item in node]
        if not isinstance(node, dict):
            return node
        # In "properties" and "$defs" the keys are names, not keywords.
        return {(key if names or not isinstance(value, (int, float)) else _JSON_SCHEMA_BOUNDS.get(key, key)):
                standard(value, names=not names and key in ("properties", "$defs"))
                for key, value in node.items()}

    schema: dict[str, Any] = standard(Spec.model_json_schema())
    return schema

