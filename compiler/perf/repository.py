"""What perf needs to know about a model repository: the models, their configs, their sample inputs."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from .. import manifest as manifest_file
from ..errors import TritonizeError
from ..manifest import TensorSample
from ..triton.config import CONFIG_NAME, data_type, parse_pbtxt


@dataclass
class ServedModel:
    name: str
    config: model_config_pb2.ModelConfig
    samples: dict[str, TensorSample] | None = None  # the manifest's samples.inputs, when the build recorded them
    composing: list[str] = field(default_factory=list)       # ensemble steps
    bls_composing: list[str] = field(default_factory=list)   # models a BLS model calls
    # A text-generation ensemble or BLS model: the tokenizer.json of the step that detokenizes, to
    # count the tokens of its streamed text (a response may carry several, see streaming.py).
    tokenizer: Path | None = None

    @property
    def is_ensemble(self) -> bool:
        return self.config.platform == "ensemble"

    @property
    def decoupled(self) -> bool:
        return self.config.model_transaction_policy.decoupled

    def settings(self) -> dict[str, Any]:
        """The serving settings under test, as read from config.pbtxt (shown in the report)."""
        config = self.config
        settings: dict[str, Any] = {"backend": config.backend or config.platform,
                                    "max_batch_size": config.max_batch_size}
        if config.HasField("dynamic_batching"):
            batching = config.dynamic_batching
            settings["dynamic_batching"] = {
                "preferred_batch_size": list(batching.preferred_batch_size),
                "max_queue_delay_microseconds": batching.max_queue_delay_microseconds}
        else:
            settings["dynamic_batching"] = None
        if config.instance_group:
            settings["instance_group"] = [
                {"count": group.count, "kind": model_config_pb2.ModelInstanceGroup.Kind.Name(group.kind)}
                for group in config.instance_group]
        if self.decoupled:
            settings["decoupled"] = True
        if config.response_cache.enable:
            settings["response_cache"] = True
        if self.composing:
            settings["steps"] = list(self.composing)
        if self.bls_composing:
            settings["calls"] = list(self.bls_composing)
        return settings


def read_config(path: Path) -> model_config_pb2.ModelConfig:
    try:
        return parse_pbtxt(path.read_text())
    except text_format.ParseError as exc:
        raise TritonizeError(f"{CONFIG_NAME} does not parse: {exc}", file=path,
                             fix="rebuild the repository with `tritonize build`") from None


def load_repository(repository: Path) -> dict[str, ServedModel]:
    """Every model directory with a config.pbtxt, with its manifest samples when present."""
    if not repository.is_dir():
        raise TritonizeError("model repository not found", file=repository,
                             fix="build one with `tritonize build model.yaml` or pass its path")
    manifest = manifest_file.read(repository)
    entries = manifest.models if manifest is not None else {}
    models: dict[str, ServedModel] = {}
    for config_path in sorted(repository.glob(f"*/{CONFIG_NAME}")):
        config = read_config(config_path)
        name = config.name or config_path.parent.name
        entry = entries.get(name)
        samples = entry.samples.inputs if entry is not None and entry.samples is not None else None
        composing = [step.model_name for step in config.ensemble_scheduling.step]
        models[name] = ServedModel(name, config, samples, composing)
    for model in models.values():
        if not model.is_ensemble:
            # A BLS model names the models it calls in parameters ending in `_model` (tritonize's
            # llm_bls does): perf_analyzer then reports them as composing models.
            model.bls_composing = [p.string_value for key, p in model.config.parameters.items()
                                   if key.endswith("_model") and p.string_value in models]
        model.tokenizer = _step_tokenizer(repository, [models[name] for name in model.composing + model.bls_composing
                                                       if name in models])
    if not models:
        raise TritonizeError("no model directories with a config.pbtxt", file=repository,
                             fix="pass the repository that `tritonize build` wrote")
    return models


def _step_tokenizer(repository: Path, steps: list[ServedModel]) -> Path | None:
    """The tokenizer.json under a step's `tokenizer_dir` parameter (tritonize's pre- and
    postprocessing, and upstream's, name their tokenizer so), in the step's newest version."""
    for step in steps:
        tokenizer_dir = step.config.parameters.get("tokenizer_dir")
        if tokenizer_dir is None:
            continue
        versions = sorted((d for d in (repository / step.name).iterdir() if d.is_dir() and d.name.isdigit()),
                          key=lambda d: int(d.name))
        for base in [versions[-1]] if versions else []:
            path = base / tokenizer_dir.string_value / "tokenizer.json"
            if path.is_file():
                return path
    return None


def select_models(models: dict[str, ServedModel], names: list[str] | None) -> list[ServedModel]:
    """The requested models; by default every model a client would call, plus the steps of
    ensembles that have sample inputs of their own (their numbers show what the ensemble adds).
    Steps without samples (an LLM engine fed token ids) are measured through their ensemble."""
    if not names:
        steps = {step for model in models.values() for step in model.composing + model.bls_composing}
        return [model for model in models.values() if model.name not in steps or model.samples]
    unknown = [n for n in names if n not in models]
    if unknown:
        raise TritonizeError(f"unknown model(s): {', '.join(unknown)}", loc=("--model",),
                             fix=f"use one of: {', '.join(models)}")
    return [models[n] for n in names]


def write_input_data(model: ServedModel, path: Path, *, streaming: bool = False) -> tuple[Path | None, tuple[str, ...]]:
    """perf_analyzer input: the manifest's sample rows when there are some, else random data.

    Returns (--input-data file or None, --shape arguments for variable dims of random data).
    Batched models get one entry per sample row (perf_analyzer cycles through them, batch 1).
    A streaming model's BOOL input named `stream` is set true: without it an LLM ensemble answers
    with the whole text in one response (and every "token" metric would describe that one).
    """
    config = model.config
    batched = config.max_batch_size > 0
    if model.samples:
        rows = _sample_rows(model.samples, batched)
        if streaming:
            for entry in rows:
                for tensor in config.input:
                    if tensor.name == "stream" and tensor.data_type == data_type("BOOL"):
                        entry[tensor.name] = {"content": [True], "shape": list(tensor.dims) or [1]}
        path.write_text(json.dumps({"data": rows}))
        return path, ()
    shapes = tuple(f"{t.name}:{','.join(str(d if d > 0 else 1) for d in t.dims)}"
                   for t in config.input if any(d < 0 for d in t.dims))
    return None, shapes


def _sample_rows(samples: dict[str, TensorSample], batched: bool) -> list[dict]:
    import numpy as np

    from ..samples import NUMPY_DTYPES

    # Typed arrays, so FP tensors are written as floats ("1.0", not "1"): perf_analyzer's JSON
    # reader wants that.
    tensors = {name: np.asarray(sample.data, dtype=NUMPY_DTYPES[sample.datatype])
               for name, sample in samples.items()}
    if not batched:
        return [{name: _content(array) for name, array in tensors.items()}]
    count = min(array.shape[0] for array in tensors.values())
    return [{name: _content(array[i]) for name, array in tensors.items()} for i in range(count)]


def _content(array) -> dict:
    import numpy as np

    array = np.asarray(array)
    flat = array.reshape(-1).tolist()
    return {"content": flat, "shape": list(array.shape) or [1]}
