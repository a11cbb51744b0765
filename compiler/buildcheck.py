"""`tritonize build SPEC --check`: is the committed repository what SPEC builds?

The spec is built into a temporary directory and compared with the repository, which is never
written. Text files (configs, model.py, the manifest) are compared byte for byte. Binaries
(ONNX models, weights) are usually not committed (.gitignore), so they are compared by the
content hashes the manifests record: the freshly built manifest against the committed one, and a
committed binary that is present against its own manifest's hash.

Values the building machine's CPU computes with torch are kept apart: another CPU rounds their
float arithmetic differently in the last bits. They are the recorded outputs and errors of the
MACHINE_ROUNDED_FRAMEWORKS' models, and the weights (file hashes, engine cache key) of those the
build trains or calibrates itself (trained_in_build). An Intel Xeon with AVX-512 built the demo's
digits_mlp (trained in examples/torch_mlp.py) and tiny_llm (FP8-calibrated) to other weights than
the AMD EPYC machines that built the committed model_repo/, so to other ONNX/checkpoint hashes,
recorded outputs, verification and quantization errors, and engine cache key; pinning torch's and MKL's kernels
(ATEN_CPU_CAPABILITY, MKL_CBWR) did not make them agree. A difference in nothing but those values
is `rounded`: reported, not a failure unless `--strict`. Whatever decides those values is still
compared exactly: the spec and its sources (the manifest's input_hash) and the tool versions.
"""
from __future__ import annotations

import difflib
import hashlib
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import manifest as manifest_file
from .llm.build import QUANTIZATION_REPORT_NAME, masked_quantization_report
from .terminal import Terminal

# The files a build emits as text (and that are committed); the rest are binaries.
TEXT_SUFFIXES = {".pbtxt", ".py", ".json", ".txt", ".sh", ".md", ".jinja", ".model", ".yaml", ".yml"}

MACHINE_ROUNDED_FRAMEWORKS = {"pytorch", "huggingface"}
MACHINE_ROUNDED = "<rounded by the building machine's CPU>"
ENGINE_KEY = re.compile(rb"sha256:[0-9a-f]{64}")  # build_engine.sh's cache key hashes the checkpoint


@dataclass(frozen=True)
class Difference:
    path: str          # relative to the repository
    kind: str          # "differs" | "missing" (built, not committed) | "extra" (committed, not built)
    #                    | "rounded" (differs only in values the building CPU rounds: module docstring)
    detail: str = ""   # a short unified diff for text files, the reason for binaries

    def one_line(self) -> str:
        return f"{self.kind:8} {self.path}" + (f" ({self.detail})" if self.detail and "\n" not in self.detail else "")


def check_build(spec_path: Path, output: Path | None = None, *, runtime: str | None = None,
                terminal: Terminal) -> tuple[Path, list[Difference]]:
    """Build SPEC into a temp dir; the committed repository and how it differs (empty: current)."""
    from .pipeline import build
    from .spec import load_spec

    spec = load_spec(spec_path, runtime=runtime)
    committed = Path(output) if output is not None else spec.resolve(spec.repository)
    with tempfile.TemporaryDirectory(prefix="tritonize-check-") as work:
        built = Path(work) / "repository"
        with terminal.status(f"building {spec_path} into a temporary directory to compare with {committed}"):
            build(spec_path, built, force=True, runtime=runtime, terminal=Terminal(quiet=True))
        return committed, differences(built, committed, trained_in_build(spec))


def trained_in_build(spec: Any) -> frozenset[str]:
    """The spec's models whose weights the build itself computes with torch: a pytorch or huggingface
    factory (it may train, as examples/torch_mlp.py does) or an LLM it quantizes (FP8 calibration).
    A model exported from a saved file is the same bytes on every CPU."""
    return frozenset(model.name for model in spec.models if model.source.framework in MACHINE_ROUNDED_FRAMEWORKS
                     and (model.source.factory is not None
                          or (model.llm is not None and model.llm.quantization.mode != "none")))


def rounded_entries(repository: Path, trained: frozenset[str]) -> frozenset[str]:
    """The manifest entries built from weights the build computed: the trained models and the steps
    of their ensembles (an LLM's engine holds its checkpoint)."""
    manifest = manifest_file.read(repository)
    if manifest is None:
        return frozenset()
    names = trained | {step for name in trained if name in manifest.models for step in manifest.models[name].steps or []}
    return frozenset(name for name in names if name in manifest.models
                     and manifest.models[name].framework in MACHINE_ROUNDED_FRAMEWORKS)


def differences(built: Path, committed: Path, trained: frozenset[str] = frozenset()) -> list[Difference]:
    """How committed differs from built; `trained`: the spec models whose weights the build computes
    (trained_in_build), whose files' hashes may be `rounded`."""
    rounded = rounded_entries(built, trained)
    built_files, committed_files = _files(built), _files(committed) if committed.is_dir() else {}
    built_hashes = _manifest_hashes(built)
    committed_hashes = _manifest_hashes(committed)
    found = []
    for relative in sorted(built_files.keys() | committed_files.keys()):
        text = Path(relative).suffix in TEXT_SUFFIXES
        if relative not in committed_files:
            if text:
                found.append(Difference(relative, "missing"))
            continue  # an uncommitted binary is judged by the manifests' hashes below
        if relative not in built_files:
            found.append(Difference(relative, "extra"))
            continue
        if text:
            new, old = built_files[relative].read_bytes(), committed_files[relative].read_bytes()
            if new != old:
                same = machine_independent(relative, new, rounded) == machine_independent(relative, old, rounded)
                found.append(Difference(relative, "rounded" if same else "differs", _short_diff(old, new, relative)))
        elif relative not in built_hashes and \
                built_files[relative].read_bytes() != committed_files[relative].read_bytes():
            found.append(Difference(relative, "differs", "binary content"))
    for relative, digest in sorted(built_hashes.items()):
        if relative not in committed_hashes:
            continue  # the manifest itself differs and is listed; so is the file when committed
        if committed_hashes[relative] != digest:
            kind = "rounded" if relative.split("/", 1)[0] in rounded else "differs"
            found.append(Difference(relative, kind, "content hash in the manifest"))
        elif relative in committed_files and not committed_files[relative].is_dir() and \
                _sha256(committed_files[relative]) != digest:
            found.append(Difference(relative, "differs", "committed file does not match its manifest hash"))
    return _unique(found)


def machine_independent(relative: str, content: bytes, rounded: frozenset[str]) -> bytes:
    """A text file of a repository with the values that the building CPU rounds (module docstring)
    replaced by MACHINE_ROUNDED: equal for two builds that differ in nothing else. `rounded`: the
    entries built from weights the build computed (rounded_entries)."""
    if relative == manifest_file.MANIFEST_NAME:
        return manifest_file.masked(content, MACHINE_ROUNDED_FRAMEWORKS, rounded, MACHINE_ROUNDED)
    if relative.endswith(f"checkpoint/{QUANTIZATION_REPORT_NAME}"):
        return masked_quantization_report(content, MACHINE_ROUNDED)
    if relative.endswith("/build_engine.sh") and relative.split("/", 1)[0] in rounded:
        return ENGINE_KEY.sub(MACHINE_ROUNDED.encode(), content)
    return content


def _files(root: Path) -> dict[str, Path]:
    return {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*"))
            if p.is_file() and not any(part.startswith(".") or part == "__pycache__"
                                       for part in p.relative_to(root).parts)}


def _manifest_hashes(repository: Path) -> dict[str, str]:
    """'model/relative/path' -> 'sha256:...' for every file the manifest hashes."""
    manifest = manifest_file.read(repository)
    if manifest is None:
        return {}
    return {f"{model}/{relative}": digest for model, entry in manifest.models.items()
            for relative, digest in (entry.files or {}).items()}


def _sha256(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def _short_diff(old: bytes, new: bytes, name: str, limit: int = 12) -> str:
    lines = list(difflib.unified_diff(old.decode(errors="replace").splitlines(),
                                      new.decode(errors="replace").splitlines(),
                                      f"committed/{name}", f"built/{name}", lineterm="", n=1))
    return "\n".join(lines[:limit] + (["..."] if len(lines) > limit else []))


def _unique(found: list[Difference]) -> list[Difference]:
    seen, unique = set(), []
    for difference in found:
        if difference.path not in seen:
            seen.add(difference.path)
            unique.append(difference)
    return unique


def failures(found: list[Difference], strict: bool) -> list[Difference]:
    """The differences that make the repository stale: all of them when strict, else the unrounded."""
    return found if strict else [difference for difference in found if difference.kind != "rounded"]


def report(committed: Path, spec_path: Path, found: list[Difference], terminal: Terminal, *,
           strict: bool = False) -> None:
    failing = failures(found, strict)
    if not failing:
        terminal.success(f"{committed} is what {spec_path} builds")
        if found:
            terminal.warning(f"{len(found)} files differ only in values this machine's CPU rounds differently "
                             f"(torch models' recorded outputs and errors, the weights of those the build trains or "
                             f"calibrates): {', '.join(d.path for d in found)}; `--check --strict` fails on them")
        return
    terminal.error(f"{committed} is not what {spec_path} builds: {len(failing)} files differ "
                   f"(rebuild with `tritonize build {spec_path}` and commit the result)")
    for difference in failing:
        terminal.info("  " + difference.one_line())
        if "\n" in difference.detail:
            terminal.info("\n".join("      " + line for line in difference.detail.splitlines()))

