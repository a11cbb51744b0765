"""Triton's load rules, checked without a server.

`check_configs` checks ModelConfig objects (and, given their directories, the files Triton looks
for); `check_repository` reads a model repository from disk and checks it the same way. Each
problem is a `Violation` naming the model, the field inside its config, a stable rule id, what is
wrong and the fix.

The rules follow what tritonserver (2.51, triton-inference-server/core) does when it loads a
repository (triton-inference-server/core r24.10): `AutoCompleteBackendFields`,
`ValidateModelConfig`, `ValidateModelIOConfig`, `ValidateBatchIO`, `ValidateInstanceGroup`,
`ValidateEnsembleSchedulingConfig` (src/model_config_utils.cc), `ValidateEnsembleConfig`
(src/ensemble_scheduler/ensemble_utils.cc), `VersionsToLoad`
(src/model_repository_manager/model_lifecycle.cc), `CheckNode`
(src/model_repository_manager/model_repository_manager.cc), the backend library lookup
(src/backend_model.cc), plus the backends' model-file lookups. Each rule is checked against the
real tritonserver 2.51 in tests/test_rules_server.py.

A violation is an ERROR where Triton refuses to load the model and a WARNING where it loads and
only logs (a non-version subdirectory, a specific version without directory, a step writing to
an ensemble input, a model without config.pbtxt that auto-complete fills in), or where the answer
depends on the serving machine (KIND_GPU and gpu ids, judged by the GPUs of this machine). A few
checks are stricter than the server where it silently ignores a likely mistake (a duplicated map
key, a duplicated tensor name); their messages say so.

By subject: `model` (one config: autofill, fields, tensors, reshape, dynamic batching),
`batching` (batch_input/batch_output, sequence-batching controls), `instances` (instance groups,
runtime), `files` (version directories and model files), `ensemble` (steps and the tensors
between them), `text` (parse errors, duplicated map keys); `violation` holds `Violation`.
"""
from __future__ import annotations

from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from ..config import CONFIG_NAME, parse_pbtxt
from .ensemble import check_ensemble, ensemble_model_cycles
from .files import check_directory, versions_to_load
from .instances import check_instance_groups, check_runtime, local_gpu_ids
from .model import ENSEMBLE, autofill, check_model
from .text import duplicate_map_keys, parse_message
from .violation import ERROR, WARNING, Violation

__all__ = ["ERROR", "WARNING", "Violation", "check_configs", "check_repository"]


def check_configs(configs: dict[str, mc.ModelConfig], model_dirs: dict[str, Path] | None = None,
                  versions: dict[str, list[int]] | None = None) -> list[Violation]:
    """Check a set of model configs keyed by model (directory) name.

    With model_dirs (model name -> its directory) the version directories and model files are
    checked too, and platform/backend are auto-filled from the files as Triton does. versions
    (model name -> the version directories it will have) stands in for a directory not written
    yet, so ensemble steps' model_version can be checked. Ensemble steps must name models in
    `configs`.
    """
    return _check(configs, model_dirs or {}, unreadable=frozenset(), versions=versions or {})


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
            violations.append(_config_missing(name, model_dir))
            continue
        text = config_file.read_text(encoding="utf-8", errors="replace")
        try:
            config = parse_pbtxt(text)
        except text_format.ParseError as exc:
            unreadable.add(name)
            violations.append(Violation(name, (), "parse", "failed to read text proto: "
                                        + parse_message(exc),
                                        "fix the protobuf text at that line (field names and enum "
                                        "values are those of Triton's model_config.proto)"))
            continue
        configs[name] = config
        dirs[name] = model_dir
        violations.extend(duplicate_map_keys(name, text))
    violations.extend(_check(configs, dirs, frozenset(unreadable), versions={}))
    return violations


def _config_missing(name: str, model_dir: Path) -> Violation:
    """No config.pbtxt: Triton (auto-complete on, its default) builds the config from the model
    file when a backend can be told from the files; python models from model.py's
    auto_complete_config. Seen with 2.51: a model.py without config.pbtxt loads."""
    _, backend, _ = autofill(name, mc.ModelConfig(), model_dir)
    if backend:
        return Violation(name, (), "config-missing", f"model directory '{name}' has no "
                         f"{CONFIG_NAME}: Triton auto-completes the config from the {backend} model "
                         "(unless started with --disable-auto-complete-config), so its load rules "
                         "cannot be checked here", f"write {name}/{CONFIG_NAME} to have it checked",
                         WARNING)
    return Violation(name, (), "config-missing", f"model directory '{name}' has no {CONFIG_NAME}, "
                     f"and Triton: Could not determine backend for model '{name}': no model file it "
                     "knows in the first version directory, and the name is not of the form "
                     "'model.<backend_name>'", f"write {name}/{CONFIG_NAME}, or move the directory "
                     "out of the repository")


def _check(configs: dict[str, mc.ModelConfig], model_dirs: dict[str, Path],
           unreadable: frozenset[str], versions: dict[str, list[int]]) -> list[Violation]:
    violations: list[Violation] = []
    loaded_versions: dict[str, list[int]] = {}
    filled: dict[str, tuple[str, str, str]] = {}
    for name in sorted(configs):
        filled[name] = autofill(name, configs[name], model_dirs.get(name))
        model_dir = model_dirs.get(name)
        if model_dir is not None:
            found, loaded_versions[name] = check_directory(name, configs[name], model_dir, *filled[name])
            violations.extend(found)
        elif name in versions:
            loaded_versions[name] = versions_to_load(name, configs[name], set(versions[name]))[0]
    for name in sorted(configs):
        config = configs[name]
        platform, backend, model_file = filled[name]
        violations += check_model(name, config, platform, backend, model_file)
        if platform != ENSEMBLE and not config.HasField("ensemble_scheduling"):
            violations += check_instance_groups(name, config, platform, local_gpu_ids())
            violations += check_runtime(name, config, backend, model_dirs.get(name))
        if config.HasField("ensemble_scheduling"):
            violations += check_ensemble(name, config, configs, unreadable, loaded_versions)
    violations.extend(ensemble_model_cycles(configs))
    return violations
