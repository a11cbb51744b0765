"""docker/serve.sh picks the NGC image a repository's manifest names. No Docker engine runs
here, so a `docker` on PATH that prints its arguments stands in for the client only."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SERVE = REPO_ROOT / "docker" / "serve.sh"


def _serve(repository: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    shim = tmp_path / "bin"
    shim.mkdir(exist_ok=True)
    (shim / "docker").write_text('#!/bin/sh\necho "docker $*"\n')
    (shim / "docker").chmod(0o755)
    env = {**os.environ, "PATH": f"{shim}:{os.environ['PATH']}"}
    return subprocess.run(["bash", str(SERVE), str(repository)], capture_output=True, text=True, env=env)


def _repository(tmp_path: Path, manifest: dict) -> Path:
    repository = tmp_path / "repo"
    repository.mkdir()
    (repository / "tritonize.manifest.json").write_text(json.dumps(manifest))
    return repository


def test_committed_container_build_runs_in_its_trtllm_image(tmp_path: Path):
    result = _serve(REPO_ROOT / "tests" / "golden" / "container", tmp_path)
    assert result.returncode == 0, result.stderr
    assert "nvcr.io/nvidia/tritonserver:24.10-trtllm-python-py3" in result.stdout
    assert "--gpus all" in result.stdout and "tritonserver --model-repository=/models" in result.stdout


def test_onnx_only_repository_runs_in_the_plain_image(tmp_path: Path):
    repository = _repository(tmp_path, {"runtime": "container", "models": {"m": {"kind": "onnx"}},
                                        "container": {"release": "24.12",
                                                      "image": "nvcr.io/nvidia/tritonserver:24.12-py3"}})
    result = _serve(repository, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "nvcr.io/nvidia/tritonserver:24.12-py3 bash -c" in result.stdout


def test_embedded_repository_is_refused_with_the_fix(tmp_path: Path):
    result = _serve(_repository(tmp_path, {"runtime": "embedded", "models": {}}), tmp_path)
    assert result.returncode != 0
    assert "rebuild it with `tritonize build SPEC --runtime container`" in result.stderr
