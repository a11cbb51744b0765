"""One LLM in the spec -> its model directories (see repository.py for the names).

Stages, each cached under the cache root (TRITONIZE_CACHE, default <spec dir>/.cache/tritonize)
by a hash of everything it depends on, so an unchanged rebuild skips the expensive work:
  1. memory plan for the target GPU (refuses a plan that cannot fit)
  2. TensorRT-LLM checkpoint via ModelOpt (FP8-quantized or not), with the FP8 error measured
     against the original on held-out prompts and held to the spec's budget
  3. engine: `trtllm-build` where TensorRT-LLM is installed; elsewhere the exact command and
     image are written next to the checkpoint and the step is marked pending
  4. configs and files for preprocessing, engine, postprocessing and the ensemble
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from ..artifacts import ModelArtifact
from ..errors import ConversionError, TritonizeError, lazy_import
from ..factory import call_factory
from ..resources import PYTHON_BACKENDS_DIR
from ..spec import ModelSpec, Spec
from ..terminal import Terminal
from ..versions import installed_versions
from . import engine as engine_step
from . import quantize
from . import repository as repo
from .spec import LlmSpec, Release, check_model_dir, release_of

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
SAMPLE_PROMPT_WORDS = 4
SAMPLE_MAX_TOKENS = 16


def cache_root(spec: Spec) -> Path:
    return Path(os.environ.get("TRITONIZE_CACHE") or spec.base_dir / ".cache" / "tritonize")


def build_llm(model: ModelSpec, spec: Spec, terminal: Terminal, *, work_dir: Path) -> list[ModelArtifact]:
    """The repository's model directories for one huggingface model (runtime from the spec).

    work_dir is scratch space for this build; what is worth keeping goes to cache_root(spec)."""
    llm = model.llm
    release = release_of(llm, spec)
    names = repo.Names.of(model.name)
    hf_dir = _hf_dir(model, spec)
    hf_config = check_model_dir(spec, model, hf_dir)
    _require_llama(hf_config, model)
    field = f"models[{spec.models.index(model)}].llm"

    plan = engine_step.memory_plan(llm, hf_config)
    terminal.table(f"{model.name}: GPU memory plan on {llm.target_gpu} (tp={llm.tensor_parallel})",
                   ["item", "size"], plan.rows())
    engine_step.require_fit(plan, llm, spec_path=spec.path, field=f"{field}.limits")

    checkpoint, quant_report = None, None
    if llm.quantization.mode == "fp8" or spec.runtime == "container":
        checkpoint, quant_report = _checkpoint(model, spec, llm, hf_dir, terminal, field, work_dir)

    version = model.version
    tokenizer_files = _tokenizer_files(hf_dir, version, model)
    if spec.runtime == "embedded":
        engine = _cpu_engine(names, llm, hf_dir, checkpoint, version)
    else:
        engine = _trtllm_engine(names, llm, release, spec, checkpoint, version, terminal)
    engine.manifest.update({"memory_plan": plan.as_manifest(), "release": release.tag, "trtllm": release.trtllm})
    if quant_report is not None:
        engine.manifest["quantization"] = quant_report

    pre = ModelArtifact(names.preprocessing, repo.preprocessing_config(names, llm),
                        {f"{version}/model.py": PYTHON_BACKENDS_DIR / "llm_preprocessing" / "model.py",
                         **tokenizer_files},
                        {"kind": "llm-preprocessing", "framework": "huggingface"}, version=version)
    post = ModelArtifact(names.postprocessing, repo.postprocessing_config(names, llm),
                         {f"{version}/model.py": PYTHON_BACKENDS_DIR / "llm_postprocessing" / "model.py",
                          **tokenizer_files},
                         {"kind": "llm-postprocessing", "framework": "huggingface"}, version=version)
    ensemble = ModelArtifact(names.ensemble, repo.ensemble_config(names, llm), {}, {
        "kind": "llm-ensemble", "framework": "huggingface",
        "steps": [names.preprocessing, names.engine, names.postprocessing],
        "samples": _samples(llm, hf_dir, checkpoint if spec.runtime == "embedded" else None,
                            expected=spec.runtime == "embedded", terminal=terminal, model=model),
    })
    if llm.streaming:
        ensemble.manifest["decoupled"] = True
    artifacts = [pre, engine, post, ensemble]
    if llm.bls:
        artifacts.append(ModelArtifact(names.bls, repo.bls_config(names, llm),
                                       {f"{version}/model.py": PYTHON_BACKENDS_DIR / "llm_bls" / "model.py"},
                                       {**ensemble.manifest, "kind": "llm-bls"}, version=version))
    terminal.success(f"{model.name}: ensemble {names.ensemble} = {names.preprocessing} -> {names.engine} "
                     f"-> {names.postprocessing} ({'CPU engine' if spec.runtime == 'embedded' else 'tensorrtllm'})"
                     + (f", and {names.bls}" if llm.bls else ""))
    return artifacts


def _require_llama(hf_config: dict, model: ModelSpec) -> None:
    if hf_config.get("model_type") != "llama":
        raise ConversionError(f"model_type '{hf_config.get('model_type')}' is not supported yet (the LLM path "
                              "exports and serves Llama-family models)", field=f"{model.name}.source.path",
                              fix="use a Llama-architecture HuggingFace model")


def _hf_dir(model: ModelSpec, spec: Spec) -> Path:
    """The HuggingFace model directory: `path`, or what `factory` returns (a function that may
    create the directory first, as the demo's tiny model does, offline)."""
    if model.source.factory is None:
        return spec.resolve(model.source.path)
    return Path(call_factory(model, spec)).resolve()


def _tokenizer_files(hf_dir: Path, version: int, model: ModelSpec) -> dict[str, Path]:
    if not (hf_dir / "tokenizer.json").is_file():
        raise ConversionError(f"{hf_dir} has no tokenizer.json (a fast tokenizer is required)",
                              field=f"{model.name}.source.path",
                              fix="save the tokenizer with save_pretrained from a fast (tokenizers) tokenizer")
    return {f"{version}/{repo.TOKENIZER_DIR}/{name}": hf_dir / name for name in TOKENIZER_FILES
            if (hf_dir / name).is_file()}


# -- checkpoint + quantization ---------------------------------------------------------------


def _checkpoint(model: ModelSpec, spec: Spec, llm: LlmSpec, hf_dir: Path, terminal: Terminal,
                field: str, work_dir: Path) -> tuple[Path, dict | None]:
    quant = llm.quantization
    text_file = spec.resolve(quant.calibration.text_file) if quant.calibration.text_file else None
    calibration, held_out = ([], []) if quant.mode != "fp8" else quantize.calibration_texts(
        quant.calibration, text_file, field=f"{field}.quantization.calibration.text_file")
    modelopt_version = _version("nvidia-modelopt")
    # The error budget is checked on every build, so changing it does not redo the export.
    recipe = quant.model_dump(exclude={"max_logit_error", "min_token_agreement"})
    key = _hash({"model": dir_hash(hf_dir), "quantization": recipe, "dtype": llm.dtype,
                 "tp": llm.tensor_parallel, "calibration": calibration, "held_out": held_out,
                 "modelopt": modelopt_version,
                 "loader": _file_hash(PYTHON_BACKENDS_DIR / "llm_cpu_engine" / "trtllm_checkpoint.py"),
                 # The code that exports and measures: a change to it must not reuse old results.
                 "quantize": _file_hash(Path(quantize.__file__))})
    target = cache_root(spec) / "checkpoints" / key.removeprefix("sha256:")[:32]
    report_path = target / "tritonize-quantization.json"
    if (target / "config.json").is_file() and (report_path.is_file() or quant.mode == "none"):
        terminal.success(f"{model.name}: TensorRT-LLM checkpoint unchanged, reused from cache ({target})")
    else:
        partial = work_dir / "checkpoint"  # moved into the cache only once complete and measured
        shutil.rmtree(partial, ignore_errors=True)
        what = "FP8 calibration + checkpoint export" if quant.mode == "fp8" else "checkpoint export"
        with terminal.status(f"{model.name}: {what} with ModelOpt {modelopt_version}"):
            quantize.export_checkpoint(hf_dir, partial, quant, dtype=llm.dtype, tensor_parallel=llm.tensor_parallel,
                                       calibration=calibration)
        if quant.mode == "fp8":
            with terminal.status(f"{model.name}: measuring FP8 error on {len(held_out)} held-out prompts"):
                report = quantize.measure(hf_dir, partial, quant, held_out, _served_model_loader())
            report.calibration_samples = len(calibration)
            (partial / report_path.name).write_text(json.dumps(report.as_manifest(), indent=2) + "\n")
        shutil.rmtree(target, ignore_errors=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(partial), str(target))
    if quant.mode == "none":
        return target, None
    report = json.loads(report_path.read_text())
    report["budget"] = {"max_logit_error": quant.max_logit_error, "min_token_agreement": quant.min_token_agreement}
    terminal.table(f"{model.name}: FP8 cost on {report['held_out_prompts']} held-out prompts",
                   ["measure", "value", "budget"],
                   [["max logit error", report["max_logit_error"], f"<= {quant.max_logit_error}"],
                    ["mean logit error", report["mean_logit_error"], ""],
                    ["next-token agreement", report["token_agreement"], f">= {quant.min_token_agreement}"]])
    quantize.check_budget(quantize.QuantizationReport(**report), field, spec.path)
    return target, report


def _served_model_loader():
    """trtllm_checkpoint.load_model from the CPU engine's sources: the measured model is the served one."""
    import importlib.util

    path = PYTHON_BACKENDS_DIR / "llm_cpu_engine" / "trtllm_checkpoint.py"
    module_spec = importlib.util.spec_from_file_location("tritonize_trtllm_checkpoint", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.load_model


# -- engine model -----------------------------------------------------------------------------


def _cpu_engine(names: repo.Names, llm: LlmSpec, hf_dir: Path, checkpoint: Path | None, version: int) -> ModelArtifact:
    sources = PYTHON_BACKENDS_DIR / "llm_cpu_engine"
    files: dict[str, Any] = {f"{version}/model.py": sources / "model.py",
                             f"{version}/trtllm_checkpoint.py": sources / "trtllm_checkpoint.py"}
    if checkpoint is None:
        for path in sorted(hf_dir.iterdir()):
            if path.is_file() and path.name not in TOKENIZER_FILES:
                files[f"{version}/{repo.HF_MODEL_DIR}/{path.name}"] = path
    else:  # FP8: serve the exported checkpoint; the HF dir contributes only its config
        for name in ("config.json", "generation_config.json"):
            if (hf_dir / name).is_file():
                files[f"{version}/{repo.HF_MODEL_DIR}/{name}"] = hf_dir / name
        files[f"{version}/{repo.CHECKPOINT_DIR}"] = checkpoint
    config = repo.cpu_engine_config(names, llm, checkpoint=checkpoint is not None)
    manifest = {"kind": "llm-engine-cpu", "framework": "huggingface", "decoupled": llm.streaming,
                "engine": {"status": "not-needed", "reason": "the embedded runtime serves with the CPU engine "
                           "(python backend, transformers); `--runtime container` builds for tensorrtllm"}}
    return ModelArtifact(names.engine, config, files, manifest, version=version)


def _trtllm_engine(names: repo.Names, llm: LlmSpec, release: Release, spec: Spec, checkpoint: Path, version: int,
                   terminal: Terminal) -> ModelArtifact:
    key = engine_step.engine_cache_key(dir_hash(checkpoint), llm, release)
    script = engine_step.render_build_script(
        model=names.ensemble, engine_model=names.engine, version=version, llm=llm, release=release,
        repository_name=spec.repository, container_repository=repo.CONTAINER_REPOSITORY,
        checkpoint_dir=repo.CHECKPOINT_DIR, engine_dir=repo.ENGINE_DIR, cache_key=key)
    files: dict[str, Any] = {f"{version}/{repo.CHECKPOINT_DIR}": checkpoint,
                             f"{version}/build_engine.sh": script.encode()}
    cached = _engine_cache(spec, key)
    if not cached.is_dir() and shutil.which("trtllm-build"):
        _run_trtllm_build(llm, release, checkpoint, cached, key, terminal, names.engine)
    command = engine_step.engine_command(llm, repo.CHECKPOINT_DIR, repo.ENGINE_DIR)
    engine = {"command": " ".join(command), "script": f"{version}/build_engine.sh", "image": release.image,
              "cache_key": key, "gpu": llm.target_gpu}
    if cached.is_dir():
        files[f"{version}/{repo.ENGINE_DIR}"] = cached
        engine["status"] = "built"
        terminal.success(f"{names.engine}: TensorRT engine for {llm.target_gpu} ready ({cached})")
    else:
        engine["status"] = "pending"
        terminal.warning(f"{names.engine}: TensorRT-LLM is not installed here, so the engine was NOT built. "
                         f"Run {names.engine}/{version}/build_engine.sh inside {release.image} on a {llm.target_gpu}, "
                         "or `tritonize build --stage engines` where TensorRT-LLM is installed; the server cannot "
                         "load this model until then")
    config = repo.trtllm_engine_config(names, llm, release, version=version)
    manifest = {"kind": "llm-engine-trtllm", "framework": "huggingface", "decoupled": llm.streaming,
                # Inside the model directory: the cache path would differ per machine and per clone.
                "checkpoint": f"{version}/{repo.CHECKPOINT_DIR}", "engine": engine}
    return ModelArtifact(names.engine, config, files, manifest, version=version)


def _engine_cache(spec: Spec, key: str) -> Path:
    return cache_root(spec) / "engines" / key.removeprefix("sha256:")[:32]


def _run_trtllm_build(llm: LlmSpec, release: Release, checkpoint: Path, target: Path, key: str, terminal: Terminal,
                      model_name: str) -> None:
    installed = _version("tensorrt_llm") or _version("tensorrt-llm")
    if installed is not None and installed != release.trtllm:
        raise TritonizeError(f"TensorRT-LLM {installed} is installed but release {release.tag} serves with "
                             f"{release.trtllm}; an engine from another version fails to load (version tag mismatch)",
                             field=f"{model_name}.llm.release",
                             fix=f"build inside {release.image}, or set llm.release to the installed version's release")
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    command = engine_step.engine_command(llm, str(checkpoint), str(partial))
    with terminal.status(f"{model_name}: trtllm-build ({release.trtllm}, {llm.target_gpu})"):
        done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        tail = " | ".join(done.stderr.strip().splitlines()[-3:])
        raise ConversionError(f"trtllm-build failed (exit {done.returncode}): {tail}", field=f"{model_name}.llm",
                              fix="see the command in the engine model's build_engine.sh and run it to read the full log")
    (partial / "tritonize-engine-key").write_text(key + "\n")
    partial.rename(target)


def build_engines(spec: Spec, repository: Path, *, terminal: Terminal) -> list[str]:
    """Finish pending engine builds of an already built repository (`tritonize build --stage engines`).

    Returns the engine models built. Needs TensorRT-LLM (its NGC container) and a GPU."""
    from ..emit import MANIFEST_NAME, load_manifest

    manifest = load_manifest(repository)
    built = []
    for model in spec.models:
        if model.llm is None:
            continue
        names = repo.Names.of(model.name)
        entry = manifest["models"].get(names.engine, {})
        engine = entry.get("engine", {})
        if engine.get("status") != "pending":
            continue
        if shutil.which("trtllm-build") is None:
            raise TritonizeError(f"{names.engine}: TensorRT-LLM is not installed here, so the engine cannot be built",
                                 fix=f"run bash {repository / names.engine / engine['script']} inside {engine['image']}"
                                     f" on a {engine['gpu']}")
        llm = model.llm
        release = release_of(llm, spec)
        version_dir = repository / names.engine / str(model.version)
        cached = _engine_cache(spec, engine["cache_key"])
        if not cached.is_dir():
            _run_trtllm_build(llm, release, version_dir / repo.CHECKPOINT_DIR, cached, engine["cache_key"], terminal,
                              names.engine)
        shutil.rmtree(version_dir / repo.ENGINE_DIR, ignore_errors=True)
        shutil.copytree(cached, version_dir / repo.ENGINE_DIR)
        engine["status"] = "built"
        built.append(names.engine)
        terminal.success(f"{names.engine}: engine built into {version_dir / repo.ENGINE_DIR}")
    (repository / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return built


# -- samples for `tritonize check` --------------------------------------------------------------


def _samples(llm: LlmSpec, hf_dir: Path, checkpoint: Path | None, *, expected: bool, terminal: Terminal,
             model: ModelSpec) -> dict[str, Any]:
    from .corpus import corpus_lines

    prompt = " ".join(corpus_lines()[0].split()[:SAMPLE_PROMPT_WORDS])
    max_tokens = min(SAMPLE_MAX_TOKENS, llm.limits.max_output_len)
    samples: dict[str, Any] = {"inputs": {
        "text_input": {"datatype": "STRING", "shape": [1, 1], "data": [[prompt]]},
        "max_tokens": {"datatype": "INT32", "shape": [1, 1], "data": [[max_tokens]]},
    }}
    if expected and llm.sampling.top_k == 1:  # greedy defaults: the answer is deterministic
        with terminal.status(f"{model.name}: greedy reference generation for the check sample"):
            text = greedy_text(hf_dir, checkpoint, prompt, max_tokens)
        samples["outputs"] = {"text_output": {"datatype": "STRING", "shape": [1, 1], "data": [[text]]}}
        samples["tolerance"] = {"text_output": {"atol": 0, "rtol": 0}}
    return samples


def greedy_text(hf_dir: Path, checkpoint: Path | None, prompt: str, max_tokens: int) -> str:
    """Greedy continuation of prompt by the model as served (from checkpoint when given)."""
    torch = lazy_import("torch", purpose="LLM reference generation", extra="llm")
    transformers = lazy_import("transformers", purpose="LLM reference generation", extra="llm")
    quantize.quiet_transformers()
    tokenizer = transformers.AutoTokenizer.from_pretrained(hf_dir)
    model = _served_model_loader()(str(hf_dir), str(checkpoint) if checkpoint else None)
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).input_ids
    eos = tokenizer.eos_token_id
    config = transformers.GenerationConfig(do_sample=False, max_new_tokens=max_tokens, eos_token_id=eos,
                                           pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos)
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=config)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


# -- hashing ------------------------------------------------------------------------------------


def _hash(payload: Any) -> str:
    return "sha256:" + hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def dir_hash(directory: Path) -> str:
    """Hash of every file's relative path and content under directory (cache keys)."""
    entries = [(str(p.relative_to(directory)), _file_hash(p)) for p in sorted(directory.rglob("*"))
               if p.is_file() and not p.name.startswith("tritonize-")]
    return _hash(entries)


def _version(package: str) -> str | None:
    return installed_versions(package).get(package)
