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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import manifest as manifest_file
from ..artifacts import ModelArtifact
from ..emit import replace_repository
from ..errors import ConversionError, SpecError, TritonizeError
from ..factory import call_factory
from ..manifest import EngineState, EntryKind, ModelEntry, Samples, TensorSample, Tolerance
from ..resources import PYTHON_BACKENDS_DIR
from ..spec import LlmSpec, ModelSpec, Spec, engine_of, release_of
from ..terminal import Terminal
from ..versions import installed_versions
from . import checkpoint_config, llmapi, quantize
from . import engine as engine_step
from . import repository as repo
from .quantize import torch, transformers
from .targets import Release

QUANTIZATION_REPORT_NAME = "tritonize-quantization.json"  # next to the checkpoint: its measured errors


def masked_quantization_report(content: bytes, placeholder: str) -> bytes:
    """A quantization report with the errors the calibrating machine's rounding decides replaced by
    placeholder (tritonize.buildcheck)."""
    try:
        report = json.loads(content)
        report.update({key: placeholder for key in manifest_file.QUANTIZATION_ERRORS})
    except (ValueError, TypeError, AttributeError):  # not a report (a merge conflict): it then differs
        return content
    return json.dumps(report, indent=2, sort_keys=True).encode()

# The CPU engine's checkpoint loaders: the served model, so part of the checkpoint cache key.
LOADER_FILES = ("trtllm_checkpoint.py", "hf_checkpoint.py")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")
SAMPLE_PROMPT_WORDS = 4
SAMPLE_MAX_TOKENS = 16
# Ships next to the CPU engine, the postprocessing and the BLS model (they send the engine cancellations and acknowledgements).
BACK_CHANNEL_SOURCE = PYTHON_BACKENDS_DIR / "llm_cpu_engine" / "back_channel.py"


def cache_root(spec: Spec) -> Path:
    return Path(os.environ.get("TRITONIZE_CACHE") or spec.base_dir / ".cache" / "tritonize")


def build_llm(model: ModelSpec, spec: Spec, terminal: Terminal, *, work_dir: Path) -> list[ModelArtifact]:
    """The repository's model directories for one huggingface model (runtime from the spec).

    work_dir is scratch space for this build; what is worth keeping goes to cache_root(spec)."""
    llm = model.llm
    assert llm is not None, "the framework registry sends only models with an llm block here"
    release = release_of(llm, spec)
    names = repo.Names.of(model.name)
    hf_dir = _hf_dir(model, spec)
    hf_config = check_model_dir(model, hf_dir)
    family = checkpoint_config.family_of(hf_config, release.tag, engine_of(llm, spec))

    plan = engine_step.memory_plan(llm, hf_config)
    terminal.table(f"{model.name}: GPU memory plan on {llm.target_gpu} (tp={llm.tensor_parallel})",
                   ["item", "size"], plan.rows())
    engine_step.require_fit(plan, llm)
    if engine_of(llm, spec) == "llmapi":
        return [_llmapi_model(model, spec, llm, release, hf_dir, family, plan, terminal, work_dir)]

    # Both runtimes serve the exported checkpoint, quantized or not: the CPU engine reads it alone.
    checkpoint, quant_report = _checkpoint(model, spec, llm, hf_dir, terminal, work_dir, family)

    version = model.version
    tokenizer_files = _tokenizer_files(hf_dir, version)
    tokens = special_tokens(hf_dir, llm)
    if spec.runtime == "embedded":
        engine = _cpu_engine(names, llm, hf_dir, checkpoint, version, tokens, release,
                             cpu_threads=1 if plan.parameters < ONE_THREAD_BELOW_PARAMETERS else 0)
    else:
        assert checkpoint is not None  # the container runtime always exports one
        engine = _trtllm_engine(names, llm, release, spec, checkpoint, version, terminal)
    assert engine.entry is not None
    engine.entry = engine.entry.model_copy(update={
        "memory_plan": plan.as_manifest(), "release": release.tag, "trtllm": release.trtllm,
        "quantization": quant_report})

    pre = ModelArtifact(names.preprocessing, repo.preprocessing_config(names, llm, add_bos=tokens.add_bos),
                        {f"{version}/model.py": PYTHON_BACKENDS_DIR / "llm_preprocessing" / "model.py",
                         **tokenizer_files},
                        ModelEntry(kind="llm-preprocessing", framework="huggingface"), version=version)
    post = ModelArtifact(names.postprocessing, repo.postprocessing_config(names, llm),
                         {f"{version}/model.py": PYTHON_BACKENDS_DIR / "llm_postprocessing" / "model.py",
                          f"{version}/detokenize.py": PYTHON_BACKENDS_DIR / "llm_postprocessing" / "detokenize.py",
                          f"{version}/back_channel.py": BACK_CHANNEL_SOURCE,
                          **tokenizer_files},
                         ModelEntry(kind="llm-postprocessing", framework="huggingface"), version=version)
    ensemble_entry = ModelEntry(
        kind="llm-ensemble", framework="huggingface", steps=[names.preprocessing, names.engine, names.postprocessing],
        samples=_samples(llm, hf_dir, checkpoint, expected=spec.runtime == "embedded", terminal=terminal, model=model,
                         tokens=tokens),
        decoupled=True if llm.streaming else None)
    ensemble = ModelArtifact(names.ensemble, repo.ensemble_config(names, llm, release, cpu_engine=spec.runtime == "embedded"), {}, ensemble_entry)
    artifacts = [pre, engine, post, ensemble]
    if llm.bls:
        artifacts.append(ModelArtifact(names.bls, repo.bls_config(names, llm, release, cpu_engine=spec.runtime == "embedded"),
                                       {f"{version}/model.py": PYTHON_BACKENDS_DIR / "llm_bls" / "model.py",
                                        f"{version}/back_channel.py": BACK_CHANNEL_SOURCE},
                                       ensemble_entry.model_copy(update={"kind": "llm-bls"}), version=version))
    terminal.success(f"{model.name}: ensemble {names.ensemble} = {names.preprocessing} -> {names.engine} "
                     f"-> {names.postprocessing} ({'CPU engine' if spec.runtime == 'embedded' else 'tensorrtllm'})"
                     + (f", and {names.bls}" if llm.bls else ""))
    return artifacts


def _llmapi_model(model: ModelSpec, spec: Spec, llm: LlmSpec, release: Release, hf_dir: Path,
                  family: checkpoint_config.Family, plan: engine_step.MemoryPlan, terminal: Terminal,
                  work_dir: Path) -> ModelArtifact:
    """The llmapi target: one model named as the spec's, upstream's layout (llm/llmapi.py), the
    HF export in its version directory. Embedded: the CPU engine serves it; container: upstream's
    model.py, which install_model_py.sh puts in place, drives TensorRT-LLM's PyTorch backend."""
    checkpoint, quant_report = _checkpoint(model, spec, llm, hf_dir, terminal, work_dir, family, hf_export=True)
    version, name = model.version, model.name
    tokens = special_tokens(hf_dir, llm)
    config = llmapi.model_config(name, llm)
    files: dict[str, Any] = {f"{version}/{llmapi.CHECKPOINT_DIR}": checkpoint}
    if spec.runtime == "embedded":
        sources = PYTHON_BACKENDS_DIR / "llm_cpu_engine"
        files.update({f"{version}/model.py": PYTHON_BACKENDS_DIR / "llm_llmapi_cpu" / "model.py",
                      f"{version}/cpu_engine.py": sources / "model.py",
                      f"{version}/trtllm_checkpoint.py": sources / "trtllm_checkpoint.py",
                      f"{version}/hf_checkpoint.py": sources / "hf_checkpoint.py",
                      f"{version}/back_channel.py": BACK_CHANNEL_SOURCE,  # cpu_engine imports it
                      f"{version}/detokenize.py": PYTHON_BACKENDS_DIR / "llm_postprocessing" / "detokenize.py"})
        llmapi.set_cpu_parameters(config, llm, end_id=tokens.end_id, pad_id=tokens.pad_id, add_bos=tokens.add_bos,
                                  bos_id=tokens.bos_id)
        model_path = llmapi.CHECKPOINT_DIR  # the CPU engine resolves it against its version directory
        engine = EngineState(status="not-needed", reason="the embedded runtime serves with the CPU engine "
                             "(python backend, transformers); `--runtime container` targets TensorRT-LLM's LLM API")
        kind: EntryKind = "llm-llmapi-cpu"
    else:
        model_path = llmapi.container_model_path(name, version)
        # A placeholder that fails the load naming the script, until the script replaces it.
        files[f"{version}/model.py"] = PYTHON_BACKENDS_DIR / "llm_llmapi_pending" / "model.py"
        files[f"{version}/{llmapi.INSTALL_SCRIPT}"] = llmapi.install_script(
            name=name, version=version, release=release, repository_name=spec.repository).encode()
        engine = EngineState(status="pending", reason=f"upstream's llmapi model.py is not shipped: run "
                             f"{name}/{version}/{llmapi.INSTALL_SCRIPT}", script=f"{version}/{llmapi.INSTALL_SCRIPT}",
                             image=release.image, gpu=llm.target_gpu)
        kind = "llm-llmapi"
        terminal.warning(f"{name}: run {name}/{version}/{llmapi.INSTALL_SCRIPT} to copy upstream's llmapi model.py "
                         f"(TensorRT-LLM v{release.trtllm}) into the model; the server cannot load it until then")
    files[f"{version}/{llmapi.MODEL_YAML}"] = llmapi.model_yaml(llm, release, model=model_path, name=name).encode()
    samples = _llmapi_samples(llm, hf_dir, checkpoint, expected=spec.runtime == "embedded", terminal=terminal,
                              model=model, tokens=tokens)
    entry = ModelEntry(kind=kind, framework="huggingface", decoupled=llm.streaming, engine=engine,
                       checkpoint=f"{version}/{llmapi.CHECKPOINT_DIR}", memory_plan=plan.as_manifest(),
                       release=release.tag, trtllm=release.trtllm, quantization=quant_report, samples=samples)
    terminal.success(f"{name}: TensorRT-LLM LLM API model ({'CPU engine' if spec.runtime == 'embedded' else 'llmapi'}"
                     f", {family.model_type}, {llm.quantization.mode})")
    return ModelArtifact(name, config, files, entry, version=version)


def check_model_dir(model: ModelSpec, hf_dir: Path) -> dict:
    """Checks that need the HuggingFace directory (which a factory may only create at build
    time); returns its config.json."""
    llm = model.llm
    assert llm is not None
    hf_config = hf_dir / "config.json"
    if not hf_config.is_file():
        raise SpecError(f"{hf_dir} is not a HuggingFace model directory (no config.json)", loc=("source",),
                        fix="point source.path at a directory written by save_pretrained")
    config = json.loads(hf_config.read_text())
    positions = config.get("max_position_embeddings")
    if positions is not None and llm.limits.max_seq_len > positions:
        raise SpecError(f"max_input_len + max_output_len = {llm.limits.max_seq_len} exceeds the model's "
                        f"max_position_embeddings {positions}", loc=("llm", "limits", "max_output_len"),
                        fix="lower max_input_len or max_output_len")
    return config


@dataclass(frozen=True)
class SpecialTokens:
    add_bos: bool        # prepend bos_id to every prompt
    bos_id: int | None
    end_id: int
    pad_id: int


def special_tokens(hf_dir: Path, llm: LlmSpec) -> SpecialTokens:
    """BOS/EOS/PAD ids from the tokenizer; whether prompts start with BOS from the tokenizer's own
    config (transformers applies add_bos_token / the tokenizer.json post-processor when
    add_special_tokens is true, upstream preprocessing's default), unless llm.add_bos_token says."""
    quantize.quiet_transformers()
    tokenizer = transformers.AutoTokenizer.from_pretrained(hf_dir)
    bos = tokenizer.bos_token_id
    probe = tokenizer("a", add_special_tokens=True).input_ids
    adds_bos = bos is not None and bool(probe) and probe[0] == bos
    if llm.add_bos_token is not None:
        adds_bos = llm.add_bos_token
    if adds_bos and bos is None:
        raise ConversionError("add_bos_token is true but the tokenizer has no bos_token", loc=("llm", "add_bos_token"),
                              fix="set add_bos_token: false, or give the tokenizer a bos_token")
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ConversionError("the tokenizer has no eos_token (generation could not stop)", loc=("source",),
                              fix="set eos_token in the tokenizer's tokenizer_config.json")
    pad = tokenizer.pad_token_id
    return SpecialTokens(add_bos=adds_bos, bos_id=bos, end_id=int(eos), pad_id=int(pad if pad is not None else eos))


def _hf_dir(model: ModelSpec, spec: Spec) -> Path:
    """The HuggingFace model directory: `path`, or what `factory` returns (a function that may
    create the directory first, as the demo's tiny model does, offline)."""
    if model.source.factory is None:
        return spec.resolve(str(model.source.path))
    return Path(call_factory(model, spec)).resolve()


def _tokenizer_files(hf_dir: Path, version: int) -> dict[str, Path]:
    if not (hf_dir / "tokenizer.json").is_file():
        raise ConversionError(f"{hf_dir} has no tokenizer.json (a fast tokenizer is required)", loc=("source",),
                              fix="save the tokenizer with save_pretrained from a fast (tokenizers) tokenizer")
    return {f"{version}/{repo.TOKENIZER_DIR}/{name}": hf_dir / name for name in TOKENIZER_FILES
            if (hf_dir / name).is_file()}


# -- checkpoint + quantization ---------------------------------------------------------------


def _checkpoint(model: ModelSpec, spec: Spec, llm: LlmSpec, hf_dir: Path, terminal: Terminal,
                work_dir: Path, family: checkpoint_config.Family, *, hf_export: bool = False) -> tuple[Path, dict | None]:
    """The exported checkpoint in the cache (and its FP8 report): a TensorRT-LLM checkpoint for
    the engine target, a HuggingFace export (hf_export) for the llmapi target."""
    quant = llm.quantization
    text_file = spec.resolve(quant.calibration.text_file) if quant.calibration.text_file else None
    calibration, held_out = ([], []) if quant.mode != "fp8" else quantize.calibration_texts(
        quant.calibration, text_file)
    modelopt_version = _version("nvidia-modelopt")
    # The error budget is checked on every build, so changing it does not redo the export.
    recipe = quant.model_dump(exclude={"max_logit_error", "min_token_agreement"})
    key = _hash({"model": dir_hash(hf_dir), "quantization": recipe, "dtype": llm.dtype,
                 "tp": llm.tensor_parallel, "calibration": calibration, "held_out": held_out,
                 "modelopt": modelopt_version,
                 "format": "hf" if hf_export else "trtllm",
                 "loader": [_file_hash(PYTHON_BACKENDS_DIR / "llm_cpu_engine" / f) for f in LOADER_FILES],
                 # The code that exports and measures: a change to it must not reuse old results.
                 "quantize": _file_hash(Path(quantize.__file__)),
                 "checkpoint_config": _file_hash(Path(checkpoint_config.__file__))})
    target = cache_root(spec) / "checkpoints" / key.removeprefix("sha256:")[:32]
    what_kind = "HuggingFace (LLM API)" if hf_export else "TensorRT-LLM"
    loader = _served_model_loader("hf_checkpoint" if hf_export else "trtllm_checkpoint")
    report_path = target / QUANTIZATION_REPORT_NAME
    if (target / "config.json").is_file() and (report_path.is_file() or quant.mode == "none"):
        terminal.success(f"{model.name}: {what_kind} checkpoint unchanged, reused from cache ({target})")
    else:
        partial = work_dir / "checkpoint"  # moved into the cache only once complete and measured
        shutil.rmtree(partial, ignore_errors=True)
        what = "FP8 calibration + checkpoint export" if quant.mode == "fp8" else "checkpoint export"
        with terminal.status(f"{model.name}: {what} with ModelOpt {modelopt_version}"):
            if hf_export:
                quantize.export_hf(hf_dir, partial, quant, dtype=llm.dtype, calibration=calibration,
                                   tokenizer_files=TOKENIZER_FILES)
            else:
                assert family.decoder is not None, "family_of refuses the engine target for families without one"
                quantize.export_checkpoint(hf_dir, partial, quant, dtype=llm.dtype,
                                           tensor_parallel=llm.tensor_parallel, calibration=calibration,
                                           decoder=family.decoder)
        if quant.mode == "fp8":
            with terminal.status(f"{model.name}: measuring FP8 error on {len(held_out)} held-out prompts"):
                report = quantize.measure(hf_dir, partial, quant, held_out, loader.load_model)
            report.calibration_samples = len(calibration)
            (partial / report_path.name).write_text(json.dumps(report.as_manifest(), indent=2) + "\n")
        shutil.rmtree(target, ignore_errors=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(partial), str(target))
    # Every build, the cached checkpoint too: what TensorRT-LLM (and the CPU engine) will read.
    source_config = transformers.AutoConfig.from_pretrained(hf_dir)
    if hf_export:
        checkpoint_config.verify_hf(target, source_config)
    else:
        checkpoint_config.verify(target, source_config)
    if quant.mode == "none":
        return target, None
    report = json.loads(report_path.read_text())
    report["budget"] = {"max_logit_error": quant.max_logit_error, "min_token_agreement": quant.min_token_agreement}
    terminal.table(f"{model.name}: FP8 cost on {report['held_out_prompts']} held-out prompts",
                   ["measure", "value", "budget"],
                   [["max logit error", report["max_logit_error"], f"<= {quant.max_logit_error}"],
                    ["mean logit error", report["mean_logit_error"], ""],
                    ["next-token agreement", report["token_agreement"], f">= {quant.min_token_agreement}"]])
    quantize.check_budget(quantize.QuantizationReport(**report))
    return target, report


def _served_model_loader(name: str = "trtllm_checkpoint"):
    """The CPU engine's checkpoint loader module (trtllm_checkpoint or hf_checkpoint; its
    load_model: checkpoint_dir -> model) from the sources that ship: the measured model is the
    served one."""
    import importlib.util

    path = PYTHON_BACKENDS_DIR / "llm_cpu_engine" / f"{name}.py"
    module_spec = importlib.util.spec_from_file_location(f"tritonize_{name}", path)
    assert module_spec is not None and module_spec.loader is not None, path
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


# -- engine model -----------------------------------------------------------------------------

# A model this small decodes a step in well under a millisecond of math: torch's OpenMP threads
# then cost more in synchronisation than they share, and on a shared machine they spin against
# the server's own threads. Measured with tiny_llm (0.2 M parameters, batch 4, 2 cores under
# load 4-22): the engine's forward pass 17.8 -> 5.8 ms per step, transformers' generate 8 -> 63-165
# tokens/s, from torch's default (2 threads) to one. Larger models keep torch's default.
ONE_THREAD_BELOW_PARAMETERS = 20_000_000



def _cpu_engine(names: repo.Names, llm: LlmSpec, hf_dir: Path, checkpoint: Path, version: int,
                tokens: SpecialTokens, release: Release, *, cpu_threads: int) -> ModelArtifact:
    """The exported checkpoint alone is served, quantized or not, as a GPU would load it."""
    sources = PYTHON_BACKENDS_DIR / "llm_cpu_engine"
    files: dict[str, Any] = {f"{version}/model.py": sources / "model.py",
                             f"{version}/trtllm_checkpoint.py": sources / "trtllm_checkpoint.py",
                             f"{version}/{repo.CHECKPOINT_DIR}": checkpoint,
                             f"{version}/back_channel.py": BACK_CHANNEL_SOURCE}
    config = repo.cpu_engine_config(names, llm, release=release, cpu_threads=cpu_threads)
    repo.set_engine_token_defaults(config, end_id=tokens.end_id, pad_id=tokens.pad_id)
    entry = ModelEntry(kind="llm-engine-cpu", framework="huggingface", decoupled=llm.streaming,
                       engine=EngineState(status="not-needed", reason="the embedded runtime serves with the CPU "
                                          "engine (python backend, transformers); `--runtime container` builds for "
                                          "tensorrtllm"))
    return ModelArtifact(names.engine, config, files, entry, version=version)


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
    command = engine_step.engine_command(llm, release, repo.CHECKPOINT_DIR, repo.ENGINE_DIR)
    engine = EngineState(status="built" if cached.is_dir() else "pending", command=" ".join(command),
                         script=f"{version}/build_engine.sh", image=release.image, cache_key=key, gpu=llm.target_gpu)
    if cached.is_dir():
        files[f"{version}/{repo.ENGINE_DIR}"] = cached
        terminal.success(f"{names.engine}: TensorRT engine for {llm.target_gpu} ready ({cached})")
    else:
        terminal.warning(f"{names.engine}: TensorRT-LLM is not installed here, so the engine was NOT built. "
                         f"Run {names.engine}/{version}/build_engine.sh inside {release.image} on a {llm.target_gpu}, "
                         "or `tritonize build --stage engines` where TensorRT-LLM is installed; the server cannot "
                         "load this model until then")
    window = json.loads((checkpoint / "config.json").read_text()).get("sliding_window")
    config = repo.trtllm_engine_config(names, llm, release, version=version, attention_window=window)
    # The checkpoint is named inside the model directory: the cache path would differ per machine and clone.
    entry = ModelEntry(kind="llm-engine-trtllm", framework="huggingface", decoupled=llm.streaming,
                       checkpoint=f"{version}/{repo.CHECKPOINT_DIR}", engine=engine)
    return ModelArtifact(names.engine, config, files, entry, version=version)


def _engine_cache(spec: Spec, key: str) -> Path:
    return cache_root(spec) / "engines" / key.removeprefix("sha256:")[:32]


def _run_trtllm_build(llm: LlmSpec, release: Release, checkpoint: Path, target: Path, key: str, terminal: Terminal,
                      model_name: str) -> None:
    """trtllm-build into the engine cache; errors are located at the model's llm block."""
    installed = _version("tensorrt_llm") or _version("tensorrt-llm")
    if installed is not None and installed != release.trtllm:
        raise TritonizeError(f"TensorRT-LLM {installed} is installed but release {release.tag} serves with "
                             f"{release.trtllm}; an engine from another version fails to load (version tag mismatch)",
                             loc=("llm", "release"),
                             fix=f"build inside {release.image}, or set llm.release to the installed version's release")
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    command = engine_step.engine_command(llm, release, str(checkpoint), str(partial))
    with terminal.status(f"{model_name}: trtllm-build ({release.trtllm}, {llm.target_gpu})"):
        done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        tail = " | ".join(done.stderr.strip().splitlines()[-3:])
        raise ConversionError(f"trtllm-build failed (exit {done.returncode}): {tail}", loc=("llm",),
                              fix="see the command in the engine model's build_engine.sh and run it to read the full log")
    (partial / "tritonize-engine-key").write_text(key + "\n")
    partial.rename(target)


def build_engines(spec: Spec, repository: Path, *, terminal: Terminal) -> list[str]:
    """Finish pending engine builds of an already built repository (`tritonize build --stage engines`).

    Returns the engine models built. Needs TensorRT-LLM (its NGC container) and a GPU. The new
    repository (engines in, manifest updated) is staged and swapped in like every build, so a
    failure leaves the repository as it was."""
    manifest = manifest_file.load(repository)
    pending = []
    for index, model in enumerate(spec.models):
        if model.llm is None:
            continue
        names = repo.Names.of(model.name)
        entry = manifest.models.get(names.engine)
        if entry is None or entry.engine is None or entry.engine.status != "pending":
            continue
        if shutil.which("trtllm-build") is None:
            raise TritonizeError(f"{names.engine}: TensorRT-LLM is not installed here, so the engine cannot be built",
                                 loc=("llm",),
                                 fix=f"run bash {repository / names.engine / str(entry.engine.script)} inside "
                                     f"{entry.engine.image} on a {entry.engine.gpu}").within("models", index)
        pending.append((index, model, names, entry))
    if not pending:
        terminal.success(f"{repository}: no engine is pending")
        return []
    engines: dict[str, Path] = {}
    for index, model, names, entry in pending:
        assert model.llm is not None and entry.engine is not None and entry.engine.cache_key is not None
        cached = _engine_cache(spec, entry.engine.cache_key)
        checkpoint = repository / names.engine / str(model.version) / repo.CHECKPOINT_DIR
        try:
            if not cached.is_dir():
                _run_trtllm_build(model.llm, release_of(model.llm, spec), checkpoint, cached, entry.engine.cache_key,
                                  terminal, names.engine)
        except TritonizeError as error:
            raise error.within("models", index) from None
        engines[f"{names.engine}/{model.version}/{repo.ENGINE_DIR}"] = cached
        manifest.models[names.engine] = entry.model_copy(
            update={"engine": entry.engine.model_copy(update={"status": "built"})})
    with terminal.status(f"writing {repository}"):
        replace_repository(repository, manifest, add=engines)
    for engine_dir in engines:
        terminal.success(f"{engine_dir.split('/')[0]}: engine built into {repository / engine_dir}")
    return [engine_dir.split("/")[0] for engine_dir in engines]


# -- samples for `tritonize check` --------------------------------------------------------------


def _samples(llm: LlmSpec, hf_dir: Path, checkpoint: Path, *, expected: bool, terminal: Terminal,
             model: ModelSpec, tokens: SpecialTokens) -> Samples:
    from .corpus import corpus_lines

    prompt = " ".join(corpus_lines()[0].split()[:SAMPLE_PROMPT_WORDS])
    max_tokens = min(SAMPLE_MAX_TOKENS, llm.limits.max_output_len)
    samples = Samples(inputs={
        "text_input": TensorSample(datatype="STRING", shape=[1, 1], data=[[prompt]]),
        "max_tokens": TensorSample(datatype="INT32", shape=[1, 1], data=[[max_tokens]]),
    }, checked_outputs=["text_output"])
    if expected and llm.sampling.top_k == 1:  # greedy defaults: the answer is deterministic
        with terminal.status(f"{model.name}: greedy reference generation for the check sample"):
            text = greedy_text(hf_dir, checkpoint, prompt, max_tokens, bos_id=tokens.bos_id if tokens.add_bos else None)
        # Flat per batch entry, as the postprocessing answers (upstream's shape).
        samples.outputs = {"text_output": TensorSample(datatype="STRING", shape=[1], data=[text])}
        samples.tolerance = {"text_output": Tolerance(atol=0, rtol=0)}
    return samples


def _llmapi_samples(llm: LlmSpec, hf_dir: Path, checkpoint: Path, *, expected: bool, terminal: Terminal,
                    model: ModelSpec, tokens: SpecialTokens) -> Samples:
    """The llmapi model's check sample: a prompt and max_tokens under upstream's input names."""
    from .corpus import corpus_lines

    prompt = " ".join(corpus_lines()[0].split()[:SAMPLE_PROMPT_WORDS])
    max_tokens = min(SAMPLE_MAX_TOKENS, llm.limits.max_output_len)
    samples = Samples(inputs={
        "text_input": TensorSample(datatype="STRING", shape=[1], data=[prompt]),
        "sampling_param_max_tokens": TensorSample(datatype="INT32", shape=[1], data=[max_tokens]),
    }, checked_outputs=["text_output"], stream_join="last")  # the last response has the whole text
    if expected and llm.sampling.top_k == 1:
        with terminal.status(f"{model.name}: greedy reference generation for the check sample"):
            text = greedy_text(hf_dir, checkpoint, prompt, max_tokens, bos_id=tokens.bos_id if tokens.add_bos else None,
                               loader="hf_checkpoint")
        samples.outputs = {"text_output": TensorSample(datatype="STRING", shape=[1], data=[text])}
        samples.tolerance = {"text_output": Tolerance(atol=0, rtol=0)}
    return samples


def greedy_text(hf_dir: Path, checkpoint: Path, prompt: str, max_tokens: int, *, bos_id: int | None,
                loader: str = "trtllm_checkpoint") -> str:
    """Greedy continuation of prompt by the model as served (from the exported checkpoint, read
    by the CPU engine's loader), the prompt tokenized as the preprocessing model does (bos_id
    prepended when given)."""
    quantize.quiet_transformers()
    tokenizer = transformers.AutoTokenizer.from_pretrained(hf_dir)
    model = _served_model_loader(loader).load_model(str(checkpoint))
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).input_ids
    if bos_id is not None:
        ids = torch.cat([torch.tensor([[bos_id]]), ids], dim=1)
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
