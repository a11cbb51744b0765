"""The repository manifest (`tritonize.manifest.json`): what was built, from what, how it was
verified, the sample questions and answers `check` and `perf` replay, and the state of pending
TensorRT-LLM engines. This module is its only reader and writer.

The format is versioned (`format`); a manifest of another format is refused with a one-line
error naming the file and the fix. Serialization is stable (sorted keys, two-space indent, no
unset fields), because the manifest of the default build is committed and rebuilt byte for byte.

    python -m tritonize.manifest image REPO    # the container image REPO is served in (docker/serve.sh)
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from .errors import TritonizeError
from .samples import NUMPY_DTYPES

FORMAT = 1
MANIFEST_NAME = "tritonize.manifest.json"

EntryKind = Literal["onnx", "python", "ensemble", "llm-ensemble", "llm-preprocessing", "llm-postprocessing",
                    "llm-engine-cpu", "llm-engine-trtllm", "llm-bls", "llm-llmapi", "llm-llmapi-cpu"]
EngineStatus = Literal["not-needed", "pending", "built"]


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TensorSample(_Record):
    """A tensor as JSON: {"datatype": "FP32", "shape": [2, 4], "data": [[...], [...]]}."""

    datatype: str
    shape: list[int]
    data: Any

    def to_numpy(self) -> np.ndarray[Any, Any]:
        array: np.ndarray[Any, Any] = np.array(self.data, dtype=NUMPY_DTYPES[self.datatype.removeprefix("TYPE_")])
        return array.reshape(self.shape)

    @classmethod
    def of(cls, array: np.ndarray[Any, Any]) -> TensorSample:
        from .samples import as_str, triton_dtype_of

        if array.dtype.kind in "OSU":
            data = as_str(array).tolist()
        elif array.dtype.kind == "f":
            # float32 values round-trip exactly through repr of their float64 widening.
            data = array.astype(np.float64).tolist()
        else:
            data = array.tolist()
        return cls(datatype=triton_dtype_of(array), shape=list(array.shape), data=data)


class Tolerance(_Record):
    atol: float = 0.0
    rtol: float = 0.0


class Samples(_Record):
    """Recorded sample inputs, and, where the build knows them, the source's answers."""

    inputs: dict[str, TensorSample]
    outputs: dict[str, TensorSample] | None = None
    tolerance: dict[str, Tolerance] | None = None
    stream_join: str | None = None  # how a decoupled model's responses form one answer (check.STREAM_JOINS)
    # With no recorded answer, the outputs the check requests and checks by datatype (default: every
    # declared output, datatype and shape). An LLM ensemble answers its log-prob/logit/metric outputs
    # only when asked, and text_output flat under a declared [-1, -1].
    checked_outputs: list[str] | None = None
    parameters: dict[str, Any] | None = None  # request parameters sent with the sample

    @classmethod
    def of(cls, inputs: dict[str, np.ndarray[Any, Any]], outputs: dict[str, np.ndarray[Any, Any]] | None,
           tolerances: dict[str, dict[str, float]]) -> Samples:
        """Sample arrays (and the source's answers, when known) with per-output tolerances."""
        return cls(
            inputs={name: TensorSample.of(array) for name, array in inputs.items()},
            outputs=None if outputs is None else {name: TensorSample.of(array) for name, array in outputs.items()},
            tolerance=None if outputs is None else {name: Tolerance(**t) for name, t in tolerances.items()})


class EngineState(_Record):
    """The LLM engine of a model: built, pending (command and image to finish it), or not needed."""

    status: EngineStatus
    reason: str | None = None
    command: str | None = None
    script: str | None = None  # build script inside the model directory
    image: str | None = None  # the TensorRT-LLM image that builds and serves it
    cache_key: str | None = None
    gpu: str | None = None


class ModelEntry(_Record):
    kind: EntryKind
    framework: str | None = None
    source: str | None = None  # one line: the source model and the served signature
    # Every file of the model directory (config.pbtxt included; relative path -> "sha256:..."),
    # as `model_files` hashes it: `validate` and the unchanged-rebuild skip compare it to the disk.
    files: dict[str, str] | None = None
    verification: dict[str, Any] | None = None  # verify.VerificationReport.to_manifest()
    samples: Samples | None = None
    steps: list[str] | None = None
    decoupled: bool | None = None
    engine: EngineState | None = None
    checkpoint: str | None = None  # inside the model directory
    memory_plan: dict[str, Any] | None = None  # llm.engine.MemoryPlan.as_manifest()
    quantization: dict[str, Any] | None = None  # llm.quantize.QuantizationReport + budget
    release: str | None = None
    trtllm: str | None = None

    @property
    def is_decoupled(self) -> bool:
        return bool(self.decoupled)


class ContainerImage(_Record):
    release: str
    image: str


class PerfTolerances(_Record):
    tolerance: float
    latency_tolerance: float


class Manifest(_Record):
    format: int = FORMAT
    tritonize: str
    spec: str
    input_hash: str
    runtime: Literal["embedded", "container"]
    tools: dict[str, str]
    models: dict[str, ModelEntry]
    perf: PerfTolerances
    container: ContainerImage | None = None

    def serving_image(self) -> str:
        """The NGC image a container-runtime repository runs in: the TensorRT-LLM image its
        engines were (or will be) built with, else the plain tritonserver image."""
        if self.runtime != "container" or self.container is None:
            raise TritonizeError("this repository was built for the embedded server",
                                 fix="rebuild it with `tritonize build SPEC --runtime container` "
                                     "(or run `tritonize serve` for this one)")
        images = sorted({entry.engine.image for entry in self.models.values()
                         if entry.kind in ("llm-engine-trtllm", "llm-llmapi") and entry.engine and entry.engine.image})
        if len(images) > 1:
            raise TritonizeError(f"engines for several TensorRT-LLM images ({', '.join(images)})",
                                 fix="serve them from separate repositories")
        return images[0] if images else self.container.image

    def dumps(self) -> str:
        return json.dumps(self.model_dump(mode="json", exclude_none=True), indent=2, sort_keys=True) + "\n"


# The quantization errors (of the manifest entry and the checkpoint's report) that the calibrating
# machine's rounding decides.
QUANTIZATION_ERRORS = ("max_logit_error", "mean_logit_error", "token_agreement")


def masked(content: bytes, frameworks: set[str], trained: frozenset[str], placeholder: str) -> bytes:
    """A manifest's JSON with the values that the building machine computes replaced by placeholder
    (tritonize.buildcheck: another CPU rounds them differently): for the models of these frameworks
    the recorded outputs and the verification and quantization errors; for the `trained` entries
    (weights the build computes) also their files' hashes and the engine cache key. A manifest that
    is not one (a merge conflict, another format) is returned as it is: it then differs."""
    try:
        manifest = json.loads(content)
        entries = manifest["models"].items()
    except (ValueError, KeyError, TypeError, AttributeError):
        return content
    for name, entry in entries:
        if not isinstance(entry, dict) or entry.get("framework") not in frameworks:
            continue
        for output in ((entry.get("samples") or {}).get("outputs") or {}).values():
            output["data"] = placeholder
        for check in ((entry.get("verification") or {}).get("outputs") or {}).values():
            check.update(max_abs_error=placeholder, max_rel_error=placeholder)
        if isinstance(entry.get("quantization"), dict):
            entry["quantization"].update({key: placeholder for key in QUANTIZATION_ERRORS})
        if name in trained:
            entry["files"] = {path: placeholder for path in entry.get("files") or {}}
            if isinstance(entry.get("engine"), dict):
                entry["engine"]["cache_key"] = placeholder
    return json.dumps(manifest, indent=2, sort_keys=True).encode()


def path_of(repository: Path) -> Path:
    return Path(repository) / MANIFEST_NAME


def load(repository: Path) -> Manifest:
    """The manifest of a built repository, or a one-line user error saying what is wrong."""
    repository = Path(repository)
    path = path_of(repository)
    if not repository.is_dir():
        raise TritonizeError("model repository not found", file=repository,
                             fix="give the directory `tritonize build` wrote")
    if not path.is_file():
        raise TritonizeError("no tritonize manifest in this repository", file=path,
                             fix="build the repository with `tritonize build model.yaml`")
    return _parse(path.read_bytes(), path)


def read(repository: Path) -> Manifest | None:
    """The manifest if the repository has a readable one of this format, else None (the build's
    unchanged-rebuild check: anything else means "rebuild")."""
    try:
        return load(repository)
    except TritonizeError:
        return None


def write(manifest: Manifest, repository: Path) -> None:
    path_of(repository).write_text(manifest.dumps())


# Written by the python backend when it imports a model.py: not part of what was built.
_RUNTIME_DIRS = ("__pycache__",)


def file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return "sha256:" + digest.hexdigest()


def model_files(model_dir: Path) -> dict[str, str]:
    """The `files` of a model directory: every regular file (symlinks followed) by relative path."""
    return {p.relative_to(model_dir).as_posix(): file_hash(p) for p in sorted(model_dir.rglob("*"))
            if p.is_file() and not any(part in _RUNTIME_DIRS for part in p.relative_to(model_dir).parts)}


def check_files(repository: Path, manifest: Manifest) -> list[TritonizeError]:
    """Each file of the repository's models that differs from what the manifest recorded: changed,
    missing, or extra (one error per file, naming it)."""
    problems: list[TritonizeError] = []
    rebuild = "rebuild it with `tritonize build`; a built repository is not edited by hand"
    for name, entry in sorted(manifest.models.items()):
        if entry.files is None:
            continue
        model_dir = Path(repository) / name
        if not model_dir.is_dir():
            problems.append(TritonizeError("model directory listed in the manifest is missing", file=model_dir,
                                           fix=rebuild))
            continue
        found = model_files(model_dir)
        for relative in sorted(set(entry.files) | set(found)):
            recorded, actual = entry.files.get(relative), found.get(relative)
            if recorded == actual:
                continue
            problem = ("missing (the manifest lists it)" if actual is None else
                       "extra file (not in the manifest)" if recorded is None else
                       "changed since tritonize built it (its sha256 differs from the manifest's)")
            problems.append(TritonizeError(problem, file=model_dir / relative, fix=rebuild))
    return problems


def _parse(raw: bytes, path: Path) -> Manifest:
    rebuild = "rebuild the repository with `tritonize build`"
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        line = getattr(exc, "lineno", None)
        raise TritonizeError(f"the manifest is not valid JSON ({getattr(exc, 'msg', exc)})", file=path,
                             line=line, fix=rebuild) from None
    if not isinstance(data, dict) or not isinstance(data.get("models"), dict):
        raise TritonizeError("the manifest has no 'models' mapping", file=path, fix=rebuild)
    found = data.get("format")
    if found != FORMAT:
        written = "an older tritonize (no format field)" if found is None else f"format {found!r}"
        raise TritonizeError(f"the manifest was written by {written}; this tritonize reads format {FORMAT}",
                             file=path, loc=("format",), fix=rebuild)
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        raise TritonizeError(f"the manifest does not match format {FORMAT}: {error['msg']}", file=path,
                             loc=tuple(error["loc"]), fix=rebuild) from None


def main(argv: list[str]) -> int:
    """`python -m tritonize.manifest image REPO`: print what a shell script needs to know."""
    if len(argv) != 2 or argv[0] != "image":
        print("usage: python -m tritonize.manifest image REPOSITORY", file=sys.stderr)
        return 2
    try:
        print(load(Path(argv[1])).serving_image())
    except TritonizeError as error:
        print(f"error: {error.one_line()}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
