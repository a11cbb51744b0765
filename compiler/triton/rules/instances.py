"""Rules for where a model runs: instance groups (kinds, GPU ids, profiles) and the `runtime`
field (the backend library Triton loads).

Instance groups follow triton-inference-server/core r24.10 src/model_config_utils.cc
`ValidateInstanceGroup` (after `NormalizeInstanceGroup` resolved KIND_AUTO); the runtime follows
src/backend_model.cc `TritonModel::GetBackendLibraryProperties` / `FindBackendLibraryPath`.

GPUs depend on the machine that serves: tritonserver 2.51 on a machine without GPUs refuses
KIND_GPU ("has kind KIND_GPU but no GPUs are available") and any listed gpu id ("specifies
invalid or unsupported gpu id 0"), seen on this project's CPU machines. A repository is often
validated on another machine than the one that serves it, so those two are warnings naming the
GPUs found here; a negative gpu id is an error everywhere.
"""
from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

from .violation import ERROR, WARNING, Violation

Group = mc.ModelInstanceGroup
PYTHON_RUNTIME = "model.py"  # backend_model.cc kPythonFilename: a python-based backend


@lru_cache(maxsize=1)
def local_gpu_ids() -> frozenset[int]:
    """GPU ordinals of this machine as the NVIDIA driver lists them (none without the driver)."""
    gpus = Path("/proc/driver/nvidia/gpus")
    count = len(list(gpus.iterdir())) if gpus.is_dir() else 0
    return frozenset(range(count))


def check_instance_groups(name: str, config: mc.ModelConfig, platform: str,
                          gpu_ids: frozenset[int]) -> list[Violation]:
    out: list[Violation] = []
    here = ", ".join(map(str, sorted(gpu_ids))) or "none"
    for g, group in enumerate(config.instance_group):
        label = f"instance group {group.name or f'{name}_{g}'} of model {name}"

        def add(field: str, message: str, fix: str, severity: str = ERROR,
                g: int = g, label: str = label) -> None:  # bound per group
            out.append(Violation(name, ("instance_group", g, field), "instance-group",
                                 f"{label} {message}", fix, severity))

        gpus = list(group.gpus)
        if group.kind in (Group.KIND_CPU, Group.KIND_MODEL) and gpus:
            add("gpus", f"has kind {Group.Kind.Name(group.kind)} but specifies one or more GPUs",
                "remove gpus, or use kind: KIND_GPU")
        elif group.kind == Group.KIND_GPU:
            negative = [gpu for gpu in gpus if gpu < 0]
            missing = [gpu for gpu in gpus if gpu >= 0 and gpu not in gpu_ids]
            if negative:
                add("gpus", f"specifies invalid or unsupported gpu id {negative[0]}",
                    "use GPU ordinals 0, 1, ... or leave gpus out (all GPUs)")
            elif not gpus and not gpu_ids:
                add("kind", "has kind KIND_GPU but no GPUs are available (on this machine; a "
                    "tritonserver here refuses it)", "serve it on a machine with a GPU, or use "
                    "KIND_CPU / KIND_AUTO to run here", WARNING)
            elif missing:
                add("gpus", f"specifies invalid or unsupported gpu id {missing[0]} (GPUs on this "
                    f"machine: {here}; a tritonserver here refuses it)", "serve it on a machine "
                    "with those GPUs, or list GPUs that exist", WARNING)
        if group.profile and platform != "tensorrt_plan":
            add("profile", "specifies profile field which is only supported for TensorRT models",
                "remove profile")
    return out


def check_runtime(name: str, config: mc.ModelConfig, backend: str,
                  model_dir: Path | None) -> list[Violation]:
    """`runtime` names the backend library: Triton searches <model>/<version>/, <model>/ and the
    backend directory's <backend>/ for it; "model.py" means a python-based backend, whose
    <backend>/model.py must exist (so never with backend "python" itself)."""
    runtime = config.runtime
    if not runtime or runtime == f"libtriton_{backend}.so":
        return []

    def violation(message: str, fix: str) -> list[Violation]:
        return [Violation(name, ("runtime",), "runtime", message, fix)]

    if runtime == PYTHON_RUNTIME:
        if backend == "python":
            return violation(f"unable to find Python backend based backend library '{runtime}' "
                             f"for model '{name}': runtime \"model.py\" names a python-based "
                             "backend, and backend \"python\" is the python backend itself",
                             "remove runtime (or set libtriton_python.so)")
        return []
    if "/" in runtime or ".." in runtime:
        return violation(f"backend library name '{runtime}' escapes the backend directory",
                         "give a file name only")
    if model_dir is not None and _in_model_dir(model_dir, runtime):
        return []
    return violation(f"unable to find backend library '{runtime}' for model '{name}' (Triton "
                     f"looks in {name}/<version>/, {name}/ and the backend directory's "
                     f"{backend or '<backend>'}/)", f"remove runtime (backend '{backend}' loads "
                     f"libtriton_{backend}.so), or put {runtime} in the model directory")


def _in_model_dir(model_dir: Path, runtime: str) -> bool:
    if (model_dir / runtime).is_file():
        return True
    return any((sub / runtime).is_file() for sub in model_dir.iterdir()
               if sub.is_dir() and re.fullmatch(r"\d+", sub.name))
