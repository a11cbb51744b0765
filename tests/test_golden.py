"""Golden files: rebuilding the root model.yaml reproduces the committed model_repo/ text files
byte for byte, and the container-runtime build reproduces tests/golden/container/ (but for the
values that torch's training rounds differently on another CPU: TRAINED_BY_TORCH).

Regenerate after an intended change with `make golden` and review the diff.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import tritonize
from tritonize import manifest as manifest_file
from tritonize.terminal import Terminal
from tritonize.triton.rules import check_repository

REPO_ROOT = Path(__file__).resolve().parents[1]
# Text files are committed; binaries (ONNX models, weights) are rebuilt and listed in .gitignore.
TEXT_SUFFIXES = {".pbtxt", ".py", ".json", ".txt", ".sh", ".md", ".jinja", ".model"}


# Models that torch trains and calibrates on the building machine (examples/torch_mlp.py,
# examples/tiny_llm): another CPU rounds their float arithmetic differently in the last bits (an
# Intel Xeon with AVX-512 against the AMD EPYC VMs the golden files came from: other weights, so
# other ONNX/checkpoint bytes, recorded outputs, errors and engine cache key; pinning torch's and
# MKL's kernels with ATEN_CPU_CAPABILITY/MKL_CBWR did not make them agree). Those values are
# compared as placeholders; everything else, and every other model, byte for byte.
TRAINED_BY_TORCH = {"pytorch", "huggingface"}
MACHINE_ROUNDED = "<rounded by the building machine's CPU>"
QUANTIZATION_ERRORS = ("max_logit_error", "mean_logit_error", "token_agreement")
ENGINE_KEY = re.compile(rb"sha256:[0-9a-f]{64}")


def text_files(repository: Path) -> dict[str, bytes]:
    return {name: machine_independent(name, p.read_bytes())
            for p in sorted(repository.rglob("*"))
            if p.is_file() and p.suffix in TEXT_SUFFIXES and not p.name.startswith(".")
            for name in [p.relative_to(repository).as_posix()]}


def machine_independent(name: str, content: bytes) -> bytes:
    """content with the values of TRAINED_BY_TORCH models that depend on the CPU's rounding replaced."""
    if name == manifest_file.MANIFEST_NAME:
        manifest = json.loads(content)
        for entry in manifest["models"].values():
            if entry.get("framework") not in TRAINED_BY_TORCH:
                continue
            entry["files"] = {path: MACHINE_ROUNDED for path in entry["files"]}
            for output in entry.get("samples", {}).get("outputs", {}).values():
                output["data"] = MACHINE_ROUNDED
            for check in entry.get("verification", {}).get("outputs", {}).values():
                check.update(max_abs_error=MACHINE_ROUNDED, max_rel_error=MACHINE_ROUNDED)
            if "quantization" in entry:
                entry["quantization"].update({key: MACHINE_ROUNDED for key in QUANTIZATION_ERRORS})
            if "engine" in entry:
                entry["engine"]["cache_key"] = MACHINE_ROUNDED
        return json.dumps(manifest, indent=2, sort_keys=True).encode()
    if name.endswith("checkpoint/tritonize-quantization.json"):
        report = json.loads(content)
        report.update({key: MACHINE_ROUNDED for key in QUANTIZATION_ERRORS})
        return json.dumps(report, indent=2, sort_keys=True).encode()
    if name.endswith("/build_engine.sh"):  # the engine cache key hashes the checkpoint
        return ENGINE_KEY.sub(MACHINE_ROUNDED.encode(), content)
    return content


@pytest.fixture(scope="module")
def embedded_build(demo_repository) -> Path:
    return demo_repository


@pytest.fixture(scope="module")
def container_build(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("golden") / "container_repo"
    tritonize.build(REPO_ROOT / "model.yaml", out, runtime="container", terminal=Terminal(quiet=True))
    return out


@pytest.mark.parametrize("build, golden", [("embedded_build", REPO_ROOT / "model_repo"),
                                           ("container_build", REPO_ROOT / "tests" / "golden" / "container")])
def test_rebuild_matches_committed_text_files(request, build: str, golden: Path):
    built_tools = manifest_file.load(request.getfixturevalue(build)).tools
    golden_tools = manifest_file.load(golden).tools
    drift = {name: (version, golden_tools.get(name)) for name, version in built_tools.items()
             if golden_tools.get(name) != version}
    assert not drift, (f"installed tool versions differ from the golden build's (installed, golden): {drift}; "
                       "install the pinned ones with `make setup` (constraints.txt), or `make lock golden`")
    built = text_files(request.getfixturevalue(build))
    committed = text_files(golden)
    assert sorted(built) == sorted(committed), "file set differs: run `make golden` and review"
    changed = [name for name in built if built[name] != committed[name]]
    assert not changed, f"rebuilt files differ from the committed ones: {changed} (run `make golden` and review)"


@pytest.mark.parametrize("build", ["embedded_build", "container_build"])
def test_everything_build_emits_passes_validate(request, build: str):
    violations = check_repository(request.getfixturevalue(build))
    assert [v.one_line() for v in violations if v.is_error] == []
    # Warnings only where the serving machine decides: KIND_GPU of the container build on a
    # machine without GPUs.
    assert {v.rule for v in violations} <= {"instance-group"}


def test_container_runtime_uses_native_backends(container_build: Path):
    config = (container_build / "digits_mlp" / "config.pbtxt").read_text()
    assert 'platform: "onnxruntime_onnx"' in config and 'backend: "onnxruntime"' in config
    assert "KIND_GPU" in config
    assert not (container_build / "digits_mlp" / "1" / "model.py").exists()
