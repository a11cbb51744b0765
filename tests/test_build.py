"""Emission behaviour of `tritonize build`: determinism, unchanged-rebuild skip, safe swap,
and that `validate` accepts what `build` emits. Python-only specs keep these fast."""
from __future__ import annotations

from pathlib import Path

import pytest

import tritonize
from specs import MODEL_PY, VALID
from tritonize import manifest as manifest_file
from tritonize.cli import main
from tritonize.errors import TritonizeError
from tritonize.manifest import ModelEntry
from tritonize.terminal import Terminal
from tritonize.triton.rules import check_repository

QUIET = Terminal(quiet=True)



def _texts(repository: Path) -> dict[str, bytes]:
    return {p.relative_to(repository).as_posix(): p.read_bytes()
            for p in sorted(repository.rglob("*")) if p.is_file()}


def test_build_is_deterministic(spec: Path, tmp_path: Path):
    first = tritonize.build(spec, tmp_path / "a", terminal=QUIET)
    second = tritonize.build(spec, tmp_path / "b", terminal=QUIET)
    assert not first.skipped and not second.skipped
    assert _texts(tmp_path / "a") == _texts(tmp_path / "b")
    assert sorted(first.models) == ["pipe", "post", "pre"]


def test_unchanged_rebuild_is_skipped_and_a_change_rebuilds(spec: Path, tmp_path: Path):
    out = tmp_path / "repo"
    assert not tritonize.build(spec, out, terminal=QUIET).skipped
    assert tritonize.build(spec, out, terminal=QUIET).skipped
    (tmp_path / "pre.py").write_text(MODEL_PY + "# changed\n")
    assert not tritonize.build(spec, out, terminal=QUIET).skipped
    assert (out / "pre" / "1" / "model.py").read_text().endswith("# changed\n")
    assert tritonize.build(spec, out, force=True, terminal=QUIET).skipped is False


def test_build_output_passes_validate(spec: Path, tmp_path: Path):
    out = tmp_path / "repo"
    tritonize.build(spec, out, terminal=QUIET)
    assert check_repository(out) == []
    manifest = manifest_file.load(out)
    pipe = manifest.models["pipe"]
    assert pipe.model_copy(update={"files": None}) == ModelEntry(kind="ensemble", steps=["pre", "post"])
    assert sorted(pipe.files or {}) == ["config.pbtxt"]  # every file of each model directory is hashed
    assert sorted(manifest.models["pre"].files or {}) == ["1/model.py", "config.pbtxt"]
    assert (out / "pipe" / "1").is_dir()  # Triton needs a version directory for ensembles too
    assert 'platform: "ensemble"' in (out / "pipe" / "config.pbtxt").read_text()


def test_build_refuses_a_directory_it_did_not_build(spec: Path, tmp_path: Path):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "data.txt").write_text("not a model repository")
    with pytest.raises(TritonizeError, match="was not built by tritonize"):
        tritonize.build(spec, out, terminal=QUIET)
    assert (out / "data.txt").read_text() == "not a model repository"


def test_max_batch_size_zero_is_written_explicitly(spec: Path, tmp_path: Path):
    spec.write_text(VALID.replace("max_batch_size: 8\n    inputs: [{name: X", "max_batch_size: 0\n    inputs: [{name: X", 1)
                    .replace("  - name: pipe\n    max_batch_size: 8", "  - name: pipe\n    max_batch_size: 0")
                    .replace("dims: [4]}]\n    outputs: [{name: Y", "dims: [-1, 4]}]\n    outputs: [{name: Y"))
    tritonize.build(spec, tmp_path / "repo", terminal=QUIET)
    assert "max_batch_size: 0\n" in (tmp_path / "repo" / "post" / "config.pbtxt").read_text()


def test_validate_cli_reports_each_violation_on_one_line(spec: Path, tmp_path: Path, capsys):
    out = tmp_path / "repo"
    tritonize.build(spec, out, terminal=QUIET)
    config = out / "post" / "config.pbtxt"
    config.write_text(config.read_text().replace('name: "post"', 'name: "other"'))
    assert main(["validate", str(out)]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    # The rule violation, and the edit itself: the file no longer is what the manifest hashed.
    assert len(lines) == 2 and "post" in lines[0] and "other" in lines[0]
    assert lines[1] == (f"error: {config}: changed since tritonize built it (its sha256 differs from the "
                        "manifest's) (fix: rebuild it with `tritonize build`; a built repository is not edited by hand)")


def test_validate_cli_accepts_a_valid_repository(spec: Path, tmp_path: Path, capsys):
    tritonize.build(spec, tmp_path / "repo", terminal=QUIET)
    assert main(["validate", str(tmp_path / "repo")]) == 0
    assert "every model passes" in capsys.readouterr().out
