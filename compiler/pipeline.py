"""Build orchestration (`tritonize.build`): spec -> converted & verified models -> configs -> rule check -> repository.

Stages, each in its own module: spec (load_spec), converters (convert), verify (verify),
triton.config (configs), triton.rules (check_configs), emit (write_repository), manifest (what
was built). Which builder makes a model's directories comes from the framework registry
(frameworks.py): ONNX conversion, a python model, or the LLM path (tritonize.llm).

Stage code raises errors located relative to the model it was handed; `_compile` places them
under the model's spec entry and the spec file (errors.py explains the location type).
"""
from __future__ import annotations

import ast
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import __version__
from . import manifest as manifest_file
from .artifacts import ModelArtifact
from .emit import (
    LOCK_TIMEOUT_S,
    check_output_dir,
    clean_leftovers,
    make_parent,
    output_lock,
    pause_point,
    resolve_output,
    tree_hash,
    work_directory,
    write_repository,
)
from .errors import SpecError, TritonizeError, os_error
from .factory import factory_sources
from .frameworks import FRAMEWORKS
from .manifest import ContainerImage, Manifest, ModelEntry, PerfTolerances, Samples
from .resources import ONNX_RUNNER, PYTHON_BACKENDS_DIR, TEMPLATES_DIR, builtin_backend_source
from .spec import EnsembleSpec, ModelSpec, Spec, TensorSpec, config_loc_to_spec, load_spec
from .terminal import Terminal, default_terminal
from .triton.config import ensemble_config, onnx_model_config, python_model_config
from .versions import installed_versions

# Rows of verification samples recorded in the manifest for `tritonize check`.
CHECK_SAMPLE_ROWS = 4
# Not committed (gitignored): it keys the unchanged-rebuild skip on the compiler's own sources too,
# while the committed manifest stays stable across compiler edits that change no output.
BUILD_KEY_NAME = ".tritonize-build-key"


@dataclass
class BuildResult:
    repository: Path
    skipped: bool
    models: list[str] = field(default_factory=list)
    manifest: Manifest | None = None
    seconds: float = 0.0


def build(spec_path: str | Path, output: str | Path | None = None, *, force: bool = False,
          stage: str = "all", runtime: str | None = None, terminal: Terminal | None = None,
          lock_timeout: float = LOCK_TIMEOUT_S) -> BuildResult:
    """Compile a spec into a repository. Raises TritonizeError subclasses for user errors.

    runtime overrides the spec's `runtime` (one spec, two targets: embedded and container).
    lock_timeout: how long to wait for another build of the same output (emit.output_lock).
    """
    terminal = terminal or default_terminal
    started = time.perf_counter()
    spec = load_spec(spec_path, runtime=runtime)
    if stage not in ("all", "engines"):
        raise SpecError(f"unknown build stage '{stage}'", loc=("--stage",), fix="use one of: all, engines")
    out = resolve_output(Path(output) if output is not None else spec.base_dir / spec.repository)
    try:
        check_output_dir(out)
        make_parent(out)
        with output_lock(out, timeout=lock_timeout, terminal=terminal):
            removed = clean_leftovers(out)
            if removed:
                terminal.info(f"removed {len(removed)} directories left by interrupted builds: "
                              + ", ".join(p.name for p in removed))
            result = _build_locked(spec, out, force=force, stage=stage, terminal=terminal)
    except OSError as exc:
        error = os_error(exc)
        if error is None:
            raise
        raise error from None
    result.seconds = time.perf_counter() - started
    if not result.skipped and stage == "all":
        terminal.success(f"built {len(result.models)} models into {out} in {result.seconds:.1f} s")
    return result


def _build_locked(spec: Spec, out: Path, *, force: bool, stage: str, terminal: Terminal) -> BuildResult:
    if stage == "engines":
        from .llm import build_engines

        try:
            built = build_engines(spec, out, terminal=terminal)
        except TritonizeError as error:
            raise spec.source.locate(error) from None
        return BuildResult(out, skipped=False, models=built)

    input_hash = _input_hash(spec)
    build_key = tree_hash(_compiler_sources(), extra=[input_hash])
    previous = manifest_file.read(out)
    if not force and previous is not None and _build_key(out) == build_key:
        damage = manifest_file.check_files(out, previous)
        if not damage:
            terminal.success(f"{out} is up to date (inputs unchanged), skipped")
            return BuildResult(out, skipped=True, models=list(previous.models), manifest=previous)
        terminal.warning(f"inputs unchanged, but {len(damage)} built file(s) differ from the manifest "
                         f"(first: {damage[0].one_line()}); rebuilding")

    with work_directory() as work:
        artifacts = _compile(spec, work, terminal)
        manifest = _manifest(spec, input_hash, artifacts)
        with terminal.status(f"writing {out}"):
            write_repository(artifacts, out, manifest, extra_files={BUILD_KEY_NAME: build_key + "\n"})
    return BuildResult(out, skipped=False, models=[a.name for a in artifacts], manifest=manifest)


def _compile(spec: Spec, work: Path, terminal: Terminal) -> list[ModelArtifact]:
    artifacts: list[ModelArtifact] = []
    with terminal.progress("compiling models", total=len(spec.models) + len(spec.ensembles)) as advance:
        for index, model in enumerate(spec.models):
            builder = BUILDERS[FRAMEWORKS[model.source.framework].builder_for(model)]
            try:
                artifacts.extend(builder(spec, model, work / model.name, terminal))
            except TritonizeError as error:
                raise spec.source.locate(error.within("models", index)) from None
            advance(f"compiled {model.name}")
        for ensemble in spec.ensembles:
            artifacts.append(_ensemble(ensemble))
            advance(f"compiled {ensemble.name}")
    pause_point("compile")
    _check_rules(spec, artifacts)
    return artifacts


def _converted_model(spec: Spec, model: ModelSpec, work: Path, terminal: Terminal) -> list[ModelArtifact]:
    from .converters import convert
    from .samples import make_samples
    from .verify import MISSING_DESCRIBED, verify, with_missing_values

    with terminal.status(f"{model.name}: converting {model.source.framework} model to ONNX"):
        converted = convert(model, spec)
    for note in converted.notes:
        terminal.warning(f"{model.name}: {note}")
    with terminal.status(f"{model.name}: verifying against {model.source.framework} on "
                         f"{model.verify.samples} samples"):
        samples = make_samples(model, converted.inputs, batch=model.verify.samples, seed=model.verify.seed,
                               choices=converted.choices, ranges=converted.ranges)
        report = verify(converted, samples, model.verify)
        missing = with_missing_values(converted, samples, model.verify.seed) \
            if model.sample_inputs is None and model.verify.missing_values else None
        if missing is not None:
            report.missing_values = verify(converted, missing, model.verify, described=MISSING_DESCRIBED).samples
    onnx_bytes = converted.onnx_model.SerializeToString()
    config = onnx_model_config(model, converted.inputs, converted.outputs, runtime=spec.runtime,
                               container=spec.container)
    files: dict[str, bytes | Path] = {f"{model.version}/model.onnx": onnx_bytes}
    if spec.runtime == "embedded":
        files[f"{model.version}/model.py"] = builtin_backend_source(ONNX_RUNNER)
    artifact = ModelArtifact(model.name, config, files, version=model.version)
    check_inputs = {name: array[:CHECK_SAMPLE_ROWS] for name, array in samples.items()}
    expected = converted.reference(check_inputs) if converted.reference is not None else None
    artifact.entry = ModelEntry(
        kind="onnx", framework=model.source.framework, source=converted.summary,
        verification=report.to_manifest(), samples=Samples.of(check_inputs, expected, report.tolerances()))
    with_nan = f", and {report.missing_values} with missing values (NaN)" if report.missing_values else ""
    terminal.success(f"{model.name}: {converted.summary}; verified on {report.samples} sample{'' if report.samples == 1 else 's'}{with_nan}")
    if report.constant:
        where = ("sample_inputs" if model.sample_inputs is not None else
                 "samples (drawn from each input's range: the spec's, else the span of a tree model's "
                 "split thresholds, else [0, 1])")
        ranges = model.sample_inputs is None and not any(t.dtype == "STRING" for t in converted.inputs)
        terminal.warning(f"{model.name}: {model.source.framework} answered every verification sample with the same "
                         f"{', '.join(report.constant)}: the {where} may miss where the model varies; give "
                         + ("each input a range covering the training data (inputs[i].range)" if ranges else
                            "sample_inputs that cover the training data"))
    return [artifact]


def _python_model(spec: Spec, model: ModelSpec, work: Path, terminal: Terminal) -> list[ModelArtifact]:
    source = model.source
    model_py = builtin_backend_source(source.builtin) if source.builtin else spec.resolve(str(source.path))
    if not source.builtin:
        check_python_model(model_py, shown=str(source.path))
    config = python_model_config(model, runtime=spec.runtime, container=spec.container)
    artifact = ModelArtifact(model.name, config, {f"{model.version}/model.py": model_py}, version=model.version)
    samples = None
    if model.sample_inputs is not None:
        assert model.inputs is not None  # a python model declares its inputs (the spec checks)
        samples = Samples.of(_sample_arrays(model.sample_inputs, model.inputs, model.max_batch_size), None, {})
    artifact.entry = ModelEntry(kind="python", framework="python", samples=samples,
                                decoupled=True if model.decoupled else None)
    return [artifact]


def check_python_model(path: Path, *, shown: str) -> None:
    """What the python backend needs of a model.py before it can load it: Python source that
    compiles, with a module-level `TritonPythonModel` (triton-inference-server/python_backend, main,
    src/pb_stub.cc: `sys.attr("TritonPythonModel")` on the imported module, then an
    instance of it). Compiled with this interpreter: the server's stub may run another 3.x."""
    loc = ("source", "path")
    try:
        raw = path.read_bytes()
        if b"\0" in raw:
            raise SpecError(f"{shown} is not Python source (it is binary: it contains NUL bytes)", loc=loc,
                            fix="point source.path at the model.py the python backend should run")
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise SpecError(f"{shown} is not Python source (not UTF-8 text)", loc=loc,
                        fix="point source.path at the model.py the python backend should run") from None
    except IsADirectoryError:
        raise SpecError(f"{shown} is a directory, not a model.py", loc=loc,
                        fix="point source.path at the model.py file") from None
    try:
        tree = ast.parse(text, filename=shown)
        compile(tree, shown, "exec")
    except SyntaxError as exc:
        raise SpecError(f"{shown} does not compile: {exc.msg} ({shown}:{exc.lineno})", loc=loc,
                        fix="fix the syntax error: the python backend could not import the file") from None
    except ValueError as exc:  # e.g. NUL bytes: not Python at all
        raise SpecError(f"{shown} is not Python source ({exc})", loc=loc,
                        fix="point source.path at the model.py the python backend should run") from None
    if "TritonPythonModel" not in _module_names(tree.body):
        raise SpecError(f"{shown} defines no TritonPythonModel class (the python backend instantiates "
                        "`TritonPythonModel` from model.py)", loc=loc,
                        fix="define `class TritonPythonModel:` with an execute(self, requests) method")


def _module_names(body: list[ast.stmt]) -> set[str]:
    """Names bound at module level (through if/try/with blocks, not inside functions or classes)."""
    names: set[str] = set()
    for node in body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            names.add(node.name)
            continue
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
        for block in (getattr(node, "body", []), getattr(node, "orelse", []), getattr(node, "finalbody", []),
                      *(handler.body for handler in getattr(node, "handlers", []))):
            names |= _module_names(block)
    return names


def _llm_model(spec: Spec, model: ModelSpec, work: Path, terminal: Terminal) -> list[ModelArtifact]:
    from .llm import build_llm

    return build_llm(model, spec, terminal, work_dir=work)


def _encoder_model(spec: Spec, model: ModelSpec, work: Path, terminal: Terminal) -> list[ModelArtifact]:
    from .encoder import build_encoder

    return build_encoder(model, spec, terminal)


Builder = Callable[[Spec, ModelSpec, Path, Terminal], list[ModelArtifact]]
# frameworks.Framework.builder -> the function that makes that framework's model directories.
BUILDERS: dict[str, Builder] = {"onnx": _converted_model, "python": _python_model, "llm": _llm_model,
                                "encoder": _encoder_model}


def _ensemble(ensemble: EnsembleSpec) -> ModelArtifact:
    samples = None
    if ensemble.sample_inputs is not None:
        samples = Samples.of(_sample_arrays(ensemble.sample_inputs, ensemble.inputs, ensemble.max_batch_size), None, {})
    return ModelArtifact(ensemble.name, ensemble_config(ensemble),
                         entry=ModelEntry(kind="ensemble", steps=[step.model for step in ensemble.steps],
                                          samples=samples))


def _sample_arrays(sample_inputs: dict[str, list], tensors: list[TensorSpec],
                   max_batch_size: int) -> dict[str, np.ndarray]:
    from .samples import sample_array

    by_name = {t.name: t for t in tensors}
    return {name: sample_array(name, values, by_name[name], max_batch_size) for name, values in sample_inputs.items()}


def _check_rules(spec: Spec, artifacts: list[ModelArtifact]) -> None:
    """Run the same load-rule checker as `tritonize validate` before anything is written, and
    report the first violation at the spec field it came from."""
    from .triton.rules import check_configs

    violations = [v for v in check_configs({a.name: a.config for a in artifacts},
                                           versions={a.name: [a.version] for a in artifacts}) if v.is_error]
    if violations:
        v = violations[0]
        loc = config_loc_to_spec([m.name for m in spec.models], [e.name for e in spec.ensembles], v.model, v.loc)
        raise spec.source.error(loc, v.message, fix=v.fix)


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


def _manifest(spec: Spec, input_hash: str, artifacts: list[ModelArtifact]) -> Manifest:
    container = None
    if spec.runtime == "container":
        # What docker/serve.sh runs it in (LLM engines name their TensorRT-LLM image themselves).
        container = ContainerImage(release=spec.container.release,
                                   image=f"nvcr.io/nvidia/tritonserver:{spec.container.release}-py3")
    models = {}
    for artifact in artifacts:
        assert artifact.entry is not None, f"builder left {artifact.name} without a manifest entry"
        models[artifact.name] = artifact.entry
    return Manifest(tritonize=__version__, spec=spec.path.name, input_hash=input_hash, runtime=spec.runtime,
                    tools=_tool_versions(), models=models, perf=PerfTolerances(**spec.perf.model_dump()),
                    container=container)


def _tool_versions() -> dict[str, str]:
    return {"python": ".".join(map(str, sys.version_info[:2])),
            **installed_versions("onnx", "onnxruntime", "skl2onnx", "onnxmltools", "scikit-learn", "xgboost-cpu",
                                 "lightgbm", "torch", "transformers", "nvidia-modelopt", "tritonclient",
                                 "nvidia-pytriton")}
