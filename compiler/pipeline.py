"""Build orchestration (`tritonize.build`): spec -> converted & verified models -> configs -> rule check -> repository.

Stages, each in its own module: spec (load_spec), converters (convert), verify (verify),
model_config (configs), rules (check_configs), emit (write_repository). LLM entries go through
tritonize.llm.
"""
from __future__ import annotations

import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .artifacts import ModelArtifact
from .backends import builtin_backend_source
from .emit import check_output_dir, file_hashes, read_manifest, tree_hash, write_repository
from .errors import SpecError, TritonizeError
from .factory import factory_sources
from .resources import PYTHON_BACKENDS_DIR, TEMPLATES_DIR
from .model_config import ensemble_config, onnx_model_config, python_model_config
from .spec import CONVERTED_FRAMEWORKS, EnsembleSpec, ModelSpec, Spec, load_spec, spec_error_at
from .terminal import Terminal, default_terminal
from .versions import installed_versions

# Rows of verification samples recorded in the manifest for `tritonize check`.
CHECK_SAMPLE_ROWS = 4
# Not committed (gitignored): it keys the unchanged-rebuild skip on the compiler's own sources too,
# while the committed manifest stays stable across compiler edits that change no output.
BUILD_KEY_NAME = ".tritonize-build-key"
ONNX_RUNNER = "onnx_runner"


@dataclass
class BuildResult:
    repository: Path
    skipped: bool
    models: list[str] = field(default_factory=list)
    manifest: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


def build(spec_path: str | Path, output: str | Path | None = None, *, force: bool = False,
          stage: str = "all", runtime: str | None = None, terminal: Terminal | None = None) -> BuildResult:
    """Compile a spec into a repository. Raises TritonizeError subclasses for user errors.

    runtime overrides the spec's `runtime` (one spec, two targets: embedded and container).
    """
    terminal = terminal or default_terminal
    started = time.perf_counter()
    spec = load_spec(spec_path, runtime=runtime)
    out = Path(output) if output is not None else spec.resolve(spec.repository)
    check_output_dir(out)

    if stage == "engines":
        from .llm import build_engines

        build_engines(spec, out, terminal=terminal)
        return BuildResult(out, skipped=False, seconds=time.perf_counter() - started)
    if stage != "all":
        raise SpecError(f"unknown build stage '{stage}'", field="--stage", fix="use one of: all, engines")

    input_hash = _input_hash(spec)
    build_key = tree_hash(_compiler_sources(), extra=[input_hash])
    previous = read_manifest(out)
    if not force and previous is not None and _build_key(out) == build_key:
        terminal.success(f"{out} is up to date (inputs unchanged), skipped")
        return BuildResult(out, skipped=True, models=list(previous["models"]), manifest=previous,
                           seconds=time.perf_counter() - started)

    with tempfile.TemporaryDirectory(prefix="tritonize-work-") as work:
        artifacts = _compile(spec, Path(work), terminal)
        manifest = _manifest(spec, input_hash, artifacts)
        with terminal.status(f"writing {out}"):
            write_repository(artifacts, out, manifest)
    (out / BUILD_KEY_NAME).write_text(build_key + "\n")
    seconds = time.perf_counter() - started
    terminal.success(f"built {len(artifacts)} models into {out} in {seconds:.1f} s")
    return BuildResult(out, skipped=False, models=[a.name for a in artifacts], manifest=manifest, seconds=seconds)


def _compile(spec: Spec, work: Path, terminal: Terminal) -> list[ModelArtifact]:
    artifacts: list[ModelArtifact] = []
    with terminal.progress("compiling models", total=len(spec.models) + len(spec.ensembles)) as advance:
        for index, model in enumerate(spec.models):
            framework = model.source.framework
            try:
                if framework in CONVERTED_FRAMEWORKS:
                    artifacts.append(_converted_model(spec, index, model, terminal))
                elif framework == "python":
                    artifacts.append(_python_model(spec, model))
                else:
                    from .llm import build_llm

                    artifacts.extend(build_llm(model, spec, terminal, work_dir=work / model.name))
            except TritonizeError as error:
                raise error.located(spec.path)
            advance(f"compiled {model.name}")
        for ensemble in spec.ensembles:
            artifacts.append(_ensemble(ensemble))
            advance(f"compiled {ensemble.name}")
    _check_rules(spec, artifacts)
    return artifacts


def _converted_model(spec: Spec, index: int, model: ModelSpec, terminal: Terminal) -> ModelArtifact:
    from .converters import convert
    from .samples import make_samples
    from .verify import verify

    with terminal.status(f"{model.name}: converting {model.source.framework} model to ONNX"):
        converted = convert(model, spec)
    if model.max_batch_size > 0 and not converted.batch_axis:
        raise spec_error_at(spec.path, spec.lines, ("models", index, "max_batch_size"),
                            f"the converted ONNX graph of '{model.name}' has no dynamic batch dimension",
                            fix="set max_batch_size: 0, or export the model with a dynamic first axis")
    with terminal.status(f"{model.name}: verifying against {model.source.framework} on "
                         f"{model.verify.samples} samples"):
        samples = make_samples(model, converted.inputs, batch=model.verify.samples, seed=model.verify.seed)
        report = verify(converted, samples, model.verify)
    onnx_bytes = converted.onnx_model.SerializeToString()
    config = onnx_model_config(model, converted.inputs, converted.outputs, runtime=spec.runtime,
                               container=spec.container)
    files: dict[str, bytes | Path] = {f"{model.version}/model.onnx": onnx_bytes}
    if spec.runtime == "embedded":
        files[f"{model.version}/model.py"] = builtin_backend_source(ONNX_RUNNER)
    artifact = ModelArtifact(model.name, config, files, version=model.version)
    check_inputs = {name: array[:CHECK_SAMPLE_ROWS] for name, array in samples.items()}
    expected = converted.reference(check_inputs) if converted.reference is not None else None
    artifact.manifest = {
        "kind": "onnx",
        "framework": model.source.framework,
        "source": converted.summary,
        "files": file_hashes(artifact),
        "verification": report.to_manifest(),
        "samples": _samples_entry(check_inputs, expected, report.tolerances()),
    }
    terminal.success(f"{model.name}: {converted.summary}; verified on {model.verify.samples} samples")
    return artifact


def _python_model(spec: Spec, model: ModelSpec) -> ModelArtifact:
    source = model.source
    model_py = builtin_backend_source(source.builtin) if source.builtin else spec.resolve(source.path)
    config = python_model_config(model, runtime=spec.runtime, container=spec.container)
    artifact = ModelArtifact(model.name, config, {f"{model.version}/model.py": model_py}, version=model.version)
    artifact.manifest = {"kind": "python", "framework": "python", "files": file_hashes(artifact)}
    if model.sample_inputs is not None:
        artifact.manifest["samples"] = _samples_entry(_sample_arrays(model.sample_inputs, model.inputs), None, {})
    if model.decoupled:
        artifact.manifest["decoupled"] = True
    return artifact


def _ensemble(ensemble: EnsembleSpec) -> ModelArtifact:
    artifact = ModelArtifact(ensemble.name, ensemble_config(ensemble))
    artifact.manifest = {"kind": "ensemble", "steps": [step.model for step in ensemble.steps]}
    if ensemble.sample_inputs is not None:
        artifact.manifest["samples"] = _samples_entry(_sample_arrays(ensemble.sample_inputs, ensemble.inputs), None, {})
    return artifact


def _sample_arrays(sample_inputs: dict[str, list], tensors) -> dict[str, np.ndarray]:
    from .samples import NUMPY_DTYPES

    by_name = {t.name: t for t in tensors}
    return {name: np.asarray(values, dtype=NUMPY_DTYPES[by_name[name].dtype]) for name, values in sample_inputs.items()}


def _samples_entry(inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray] | None,
                   tolerances: dict[str, dict[str, float]]) -> dict[str, Any]:
    entry: dict[str, Any] = {"inputs": {name: _tensor_json(array) for name, array in inputs.items()}}
    if outputs is not None:
        entry["outputs"] = {name: _tensor_json(array) for name, array in outputs.items()}
        entry["tolerance"] = tolerances
    return entry


def _tensor_json(array: np.ndarray) -> dict[str, Any]:
    from .samples import as_str, triton_dtype_of

    if array.dtype.kind in "OSU":
        data = as_str(array).tolist()
    elif array.dtype.kind == "f":
        # float32 values round-trip exactly through repr of their float64 widening.
        data = array.astype(np.float64).tolist()
    else:
        data = array.tolist()
    return {"datatype": triton_dtype_of(array), "shape": list(array.shape), "data": data}


def _check_rules(spec: Spec, artifacts: list[ModelArtifact]) -> None:
    """Run the same load-rule checker as `tritonize validate` before anything is written, and
    report the first violation at the spec field it came from."""
    from .rules import check_configs

    violations = check_configs({a.name: a.config for a in artifacts})
    if violations:
        v = violations[0]
        raise spec_error_at(spec.path, spec.lines, _spec_loc(spec, v.model, v.loc), v.message, fix=v.fix)


def _spec_loc(spec: Spec, model: str, loc: tuple) -> tuple:
    """Translate a path inside a generated ModelConfig into the spec's field path."""
    names = [m.name for m in spec.models]
    ensembles = [e.name for e in spec.ensembles]
    if model in names:
        prefix: tuple = ("models", names.index(model))
    elif model in ensembles:
        prefix = ("ensembles", ensembles.index(model))
    else:
        prefix = (model,)
    renames = {"ensemble_scheduling": None, "step": "steps", "input": "inputs", "output": "outputs"}
    return prefix + tuple(renames.get(p, p) for p in loc if renames.get(p, p) is not None)


def _input_hash(spec: Spec) -> str:
    """Everything the output depends on besides the compiler itself: the spec, its sources, the runtime."""
    paths: list[Path] = [spec.path]
    for model in spec.models:
        source = model.source
        if source.path is not None:
            paths.append(spec.resolve(source.path))
        if source.factory is not None:
            paths.extend(factory_sources(spec, source.factory))
        if source.builtin is not None:
            paths.append(builtin_backend_source(source.builtin))
    return tree_hash(paths, extra=[__version__, spec.runtime])


def _compiler_sources() -> list[Path]:
    return [Path(__file__).resolve().parent, PYTHON_BACKENDS_DIR, TEMPLATES_DIR]


def _build_key(out: Path) -> str | None:
    try:
        return (out / BUILD_KEY_NAME).read_text().strip()
    except (FileNotFoundError, NotADirectoryError):
        return None


def _manifest(spec: Spec, input_hash: str, artifacts: list[ModelArtifact]) -> dict[str, Any]:
    manifest = {
        "tritonize": __version__,
        "spec": spec.path.name,
        "input_hash": input_hash,
        "runtime": spec.runtime,
        "tools": _tool_versions(),
        "models": {a.name: a.manifest for a in artifacts},
        "perf": spec.perf.model_dump(),
    }
    if spec.runtime == "container":
        # What docker/serve.sh runs it in (LLM engines name their TensorRT-LLM image themselves).
        manifest["container"] = {"release": spec.container.release,
                                 "image": f"nvcr.io/nvidia/tritonserver:{spec.container.release}-py3"}
    return manifest


def _tool_versions() -> dict[str, str]:
    return {"python": ".".join(map(str, sys.version_info[:2])),
            **installed_versions("onnx", "onnxruntime", "skl2onnx", "onnxmltools", "scikit-learn", "xgboost-cpu",
                                 "lightgbm", "torch", "transformers", "nvidia-modelopt", "tritonclient",
                                 "nvidia-pytriton")}
