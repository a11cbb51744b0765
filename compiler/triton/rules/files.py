"""Rules for a model's directory: version directories, the version policy, the model file
(triton-inference-server/core r24.10 src/model_repository_manager/model_lifecycle.cc
`VersionsToLoad`, the backends' model-file lookups)."""
from __future__ import annotations

import re
from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

from .model import ENSEMBLE
from .violation import WARNING, Violation

# A model file that may be a directory (ONNX models with external data, TF SavedModel).
DIRECTORY_MODEL_OK = frozenset({"onnxruntime", "tensorflow"})
# Subdirectories of a model directory that are not versions (VersionsToLoad skips them).
NON_VERSION_DIRS = frozenset({"warmup", "initial_state", "configs"})

# Triton reads a version directory name with stoll and skips names with leading zeros; version
# 0 loads (seen with 2.51).
_VERSION_RE = re.compile(r"^(0|[1-9][0-9]*)$")


def check_directory(name: str, config: mc.ModelConfig, model_dir: Path, platform: str,
                    backend: str, model_file: str) -> tuple[list[Violation], list[int]]:
    """The directory's violations and the versions Triton will load from it."""
    out, versions = _version_dirs(name, model_dir)
    to_load, policy_violations = versions_to_load(name, config, versions)
    out += policy_violations
    if not to_load:
        # model_lifecycle.cc: "at least one version must be available under the version
        # policy of model"
        if versions:
            message = (f"at least one version must be available under the version policy of "
                       f"model '{name}': none of its version directories is one the policy loads")
        else:
            message = (f"at least one version must be available under the version policy of "
                       f"model '{name}': model directory '{name}' has no version directory "
                       "(every model, ensembles too, needs one)")
        fix = f"create {name}/1/" + ("" if platform == ENSEMBLE else " holding the model file")
        out.append(Violation(name, (), "version-dir", message, fix))
        return out, to_load
    if platform == ENSEMBLE or not model_file:
        return out, to_load
    loc = ("default_model_filename",) if config.default_model_filename else ()
    for version in to_load:
        path = model_dir / str(version) / model_file
        ok = path.exists() if backend in DIRECTORY_MODEL_OK else path.is_file()
        if not ok:
            out.append(Violation(name, loc, "model-file", f"version {version} has no {model_file} "
                                 f"for backend '{backend}' ({path} is missing)",
                                 f"put the model file at {name}/{version}/{model_file}"
                                 + (", or fix default_model_filename" if loc else "")))
    return out, to_load


def _version_dirs(name: str, model_dir: Path) -> tuple[list[Violation], set[int]]:
    """Version numbers of the subdirectories; others are skipped with Triton's warning
    (model_lifecycle.cc VersionsToLoad: LOG_WARNING "ignore version directory ...")."""
    out: list[Violation] = []
    versions: set[int] = set()
    for sub in sorted(p for p in model_dir.iterdir() if p.is_dir()):
        if sub.name in NON_VERSION_DIRS:
            continue
        if _VERSION_RE.match(sub.name):
            versions.add(int(sub.name))
            continue
        why = ("which contains leading zeros in its directory name" if sub.name[:1] == "0"
               and sub.name.isdigit() else "which fails to convert to integral number")
        out.append(Violation(name, (), "version-dir", f"ignore version directory '{sub.name}' {why} "
                             "(Triton loads the model without it)", "rename it to a version number "
                             "such as '1', or move it out of the model directory", WARNING))
    return out, versions


def versions_to_load(name: str, config: mc.ModelConfig,
                     versions: set[int]) -> tuple[list[int], list[Violation]]:
    """The versions the policy loads out of those present, and a warning for a specific
    version without directory."""
    policy = config.version_policy
    choice = policy.WhichOneof("policy_choice")
    if choice == "specific":
        missing = [v for v in policy.specific.versions if v not in versions]
        out = []
        if missing:
            # VersionsToLoad logs this (LOG_ERROR) and loads the versions that exist.
            out.append(Violation(name, ("version_policy", "specific", "versions"), "version-policy",
                                 f"version {missing[0]} is specified for model '{name}', but the "
                                 "version directory is not present (Triton loads the others)",
                                 f"create {name}/{missing[0]}/ or remove it from the policy",
                                 WARNING))
        return sorted(v for v in policy.specific.versions if v in versions), out
    if choice == "all":
        return sorted(versions), []
    count = policy.latest.num_versions if choice == "latest" else 1  # Triton's default: latest 1
    return (sorted(versions)[-count:] if count else []), []
