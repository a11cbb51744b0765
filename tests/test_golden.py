"""Golden files: rebuilding the root model.yaml reproduces the committed model_repo/ text files
byte for byte, and the container-runtime build reproduces tests/golden/container/ (but for the
values that torch's training rounds differently on another CPU: tritonize.buildcheck.machine_independent).

Regenerate after an intended change with `make golden` and review the diff.
"""
from __future__ import annotations

from pathlib import Path

import pytest

import tritonize
from tritonize import manifest as manifest_file
from tritonize.buildcheck import machine_independent, rounded_entries, trained_in_build
from tritonize.spec import load_spec
from tritonize.terminal import Terminal
from tritonize.triton.rules import check_repository

REPO_ROOT = Path(__file__).resolve().parents[1]
# Text files are committed; binaries (ONNX models, weights) are rebuilt and listed in .gitignore.
TEXT_SUFFIXES = {".pbtxt", ".py", ".json", ".txt", ".sh", ".md", ".jinja", ".model"}


def text_files(repository: Path, rounded: frozenset[str]) -> dict[str, bytes]:
    """The text files, with the values the building CPU rounds replaced (tritonize.buildcheck: the
    golden files came from other CPUs than some that run this test)."""
    return {name: machine_independent(name, p.read_bytes(), rounded)
            for p in sorted(repository.rglob("*"))
            if p.is_file() and p.suffix in TEXT_SUFFIXES and not p.name.startswith(".")
            for name in [p.relative_to(repository).as_posix()]}


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
    # digits_mlp (trained by its factory) and tiny_llm (FP8-calibrated): their weights' hashes too.
    trained = trained_in_build(load_spec(REPO_ROOT / "model.yaml"))
    assert trained == {"digits_mlp", "tiny_llm"}
    built = text_files(request.getfixturevalue(build), rounded_entries(request.getfixturevalue(build), trained))
    committed = text_files(golden, rounded_entries(golden, trained))
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
