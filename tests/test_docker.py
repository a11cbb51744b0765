"""docker/serve.sh picks the NGC image a repository's manifest names. No Docker engine runs
here, so a `docker` on PATH that prints its arguments stands in for the client only."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tritonize.manifest import ContainerImage, Manifest, ModelEntry, PerfTolerances

REPO_ROOT = Path(__file__).resolve().parents[1]
SERVE = REPO_ROOT / "docker" / "serve.sh"


def _serve(repository: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    shim = tmp_path / "bin"
    shim.mkdir(exist_ok=True)
    (shim / "docker").write_text('#!/bin/sh\necho "docker $*"\n')
    (shim / "docker").chmod(0o755)
    env = {**os.environ, "PATH": f"{shim}:{os.environ['PATH']}", "TRITONIZE_PYTHON": sys.executable}
    return subprocess.run(["bash", str(SERVE), str(repository)], capture_output=True, text=True, env=env)


def _repository(tmp_path: Path, runtime: str, models: dict[str, ModelEntry],
                container: ContainerImage | None = None) -> Path:
    repository = tmp_path / "repo"
    repository.mkdir()
    manifest = Manifest(tritonize="0", spec="model.yaml", input_hash="sha256:0", runtime=runtime, tools={},
                        models=models, perf=PerfTolerances(tolerance=0.1, latency_tolerance=0.25),
                        container=container)
    (repository / "tritonize.manifest.json").write_text(manifest.dumps())
    return repository


def test_committed_container_build_runs_in_its_trtllm_image(tmp_path: Path):
    result = _serve(REPO_ROOT / "tests" / "golden" / "container", tmp_path)
    assert result.returncode == 0, result.stderr
    assert "nvcr.io/nvidia/tritonserver:24.10-trtllm-python-py3" in result.stdout
    assert "--gpus all" in result.stdout and "tritonserver --model-repository=/models" in result.stdout


def test_onnx_only_repository_runs_in_the_plain_image(tmp_path: Path):
    repository = _repository(tmp_path, "container", {"m": ModelEntry(kind="onnx")},
                             ContainerImage(release="24.12", image="nvcr.io/nvidia/tritonserver:24.12-py3"))
    result = _serve(repository, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "nvcr.io/nvidia/tritonserver:24.12-py3 bash -c" in result.stdout


def test_embedded_repository_is_refused_with_the_fix(tmp_path: Path):
    result = _serve(_repository(tmp_path, "embedded", {}), tmp_path)
    assert result.returncode != 0
    assert "rebuild it with `tritonize build SPEC --runtime container`" in result.stderr


def test_manifest_of_an_older_format_is_refused_with_the_fix(tmp_path: Path):
    repository = tmp_path / "repo"
    repository.mkdir()
    (repository / "tritonize.manifest.json").write_text('{"runtime": "container", "models": {}}')
    result = _serve(repository, tmp_path)
    assert result.returncode != 0
    assert result.stderr.strip() == (
        f"error: {repository}/tritonize.manifest.json: format: the manifest was written by an older tritonize "
        "(no format field); this tritonize reads format 1 (fix: rebuild the repository with `tritonize build`)")


def test_ports_are_published_on_loopback_unless_told_and_the_key_stays_off_the_command_line(tmp_path: Path):
    repository = _repository(tmp_path, "container", {"m": ModelEntry(kind="onnx")},
                             ContainerImage(release="24.10", image="nvcr.io/nvidia/tritonserver:24.10-py3"))
    result = _serve(repository, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "-p 127.0.0.1:8000:8000 -p 127.0.0.1:8001:8001 -p 127.0.0.1:8002:8002" in result.stdout
    assert "--user " in result.stdout and "-e TRITONIZE_API_KEY " in result.stdout
    key_file = Path(result.stdout.split("restricted APIs key (header triton-admin-key): ")[1].split()[0])
    assert key_file.stat().st_mode & 0o077 == 0
    assert key_file.read_text() not in result.stdout.replace(str(key_file), "")  # only the script inside reads it
    key_file.unlink()
    assert "--http-restricted-api=" in result.stdout and "--grpc-restricted-protocol=" in result.stdout
    env = {**os.environ, "TRITONIZE_HOST": "0.0.0.0", "TRITONIZE_HTTP_PORT": "9000", "TRITONIZE_API_KEY": "k3y"}
    shim = tmp_path / "bin"
    wide = subprocess.run(["bash", str(SERVE), str(repository)], capture_output=True, text=True,
                          env={**env, "PATH": f"{shim}:{os.environ['PATH']}", "TRITONIZE_PYTHON": sys.executable})
    assert "-p 0.0.0.0:9000:8000" in wide.stdout and "k3y" not in wide.stdout


def test_dockerfile_runs_unprivileged_with_restricted_apis_and_checks_every_model():
    text = (REPO_ROOT / "docker" / "Dockerfile").read_text()
    assert "\nUSER 10001" in text
    assert "--http-restricted-api=$apis:triton-admin-key=$key" in text and "--grpc-restricted-protocol=" in text
    assert "--exit-timeout-secs=" in text
    assert "/v2/models/$(basename" in text and "(triton_python_b) Z" in text


def test_the_image_installs_what_the_models_requirements_name(tmp_path: Path):
    """An encoder's tokenizer step imports tokenizers, which NGC's images lack (the server's
    v2.51.0 build.py installs numpy only for the python backend): docker/Dockerfile pip-installs
    every model directory's requirements.txt before dropping root. Its RUN line runs here on a
    repository of two models, with pip resolving the packages for real (--dry-run)."""
    text = (REPO_ROOT / "docker" / "Dockerfile").read_text()
    run = text[text.index("RUN cat /models/*/requirements.txt"):]
    run = run[len("RUN "):run.index("\n\n") if "\n\n" in run else None].split("\nUSER")[0].replace("\\\n", " ")
    assert text.index("RUN cat /models/*/requirements.txt") < text.index("\nUSER 10001")
    models = tmp_path / "models"
    for name in ("a_tokenizer", "b_tokenizer", "c_onnx"):
        (models / name).mkdir(parents=True)
    import tokenizers

    for name in ("a_tokenizer", "b_tokenizer"):
        (models / name / "requirements.txt").write_text(f"tokenizers=={tokenizers.__version__}\n")
    script = (run.replace("/models", str(models)).replace("/tmp/requirements.txt", str(tmp_path / "req.txt"))
              .replace("python3 -m pip install", f"{sys.executable} -m pip install --dry-run"))
    result = subprocess.run(["sh", "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert f"Requirement already satisfied: tokenizers=={tokenizers.__version__}" in result.stdout or \
        "Would install" in result.stdout, result.stdout
    assert not (tmp_path / "req.txt").exists()
    # A repository without requirements installs nothing.
    for name in ("a_tokenizer", "b_tokenizer"):
        (models / name / "requirements.txt").unlink()
    result = subprocess.run(["sh", "-c", script], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout == "", (result.stdout, result.stderr)


def test_serve_installs_the_models_requirements_before_the_server_starts(tmp_path: Path):
    repository = _repository(tmp_path, "container", {"m": ModelEntry(kind="onnx")},
                             ContainerImage(release="24.10", image="nvcr.io/nvidia/tritonserver:24.10-py3"))
    result = _serve(repository, tmp_path)
    assert result.returncode == 0, result.stderr
    script = result.stdout[result.stdout.index("bash -c"):]
    assert script.index("python3 -m pip install --user --no-cache-dir -r /tmp/tritonize-requirements.txt") < \
        script.index("exec tritonserver")
