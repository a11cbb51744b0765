"""Emission: write ModelArtifacts into a staging directory, then swap it into place.

A failed build never touches the existing repository; a directory that tritonize did not build is
never overwritten.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable

from .artifacts import ModelArtifact
from .errors import TritonizeError
from .model_config import CONFIG_NAME, to_pbtxt

MANIFEST_NAME = "tritonize.manifest.json"


def read_manifest(repository: Path) -> dict[str, Any] | None:
    try:
        return json.loads((repository / MANIFEST_NAME).read_text())
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
        return None


def load_manifest(repository: Path) -> dict[str, Any]:
    """The manifest of a built repository, or a one-line user error saying what is wrong."""
    path = repository / MANIFEST_NAME
    if not repository.is_dir():
        raise TritonizeError("model repository not found", file=repository,
                             fix="give the directory `tritonize build` wrote")
    if not path.is_file():
        raise TritonizeError("no tritonize manifest in this repository", file=path,
                             fix="build the repository with `tritonize build model.yaml`")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise TritonizeError(f"the manifest is not valid JSON ({exc.msg})", file=path, line=exc.lineno,
                             fix="rebuild the repository with `tritonize build`") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("models"), dict):
        raise TritonizeError("the manifest has no 'models' mapping", file=path,
                             fix="rebuild the repository with `tritonize build`")
    return manifest


def check_output_dir(out: Path) -> None:
    """Refuse to replace a non-empty directory that tritonize did not build."""
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MANIFEST_NAME).exists())):
        raise TritonizeError(f"output directory {out} exists and was not built by tritonize (no {MANIFEST_NAME})",
                             field="repository",
                             fix="choose another output with -o, or remove that directory first")


def write_repository(artifacts: Iterable[ModelArtifact], out: Path, manifest: dict[str, Any]) -> None:
    out = out.resolve()
    check_output_dir(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-", dir=out.parent))
    try:
        for artifact in artifacts:
            _write_model(staging, artifact)
        (staging / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        _swap(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _write_model(root: Path, artifact: ModelArtifact) -> None:
    model_dir = root / artifact.name
    model_dir.mkdir()
    (model_dir / CONFIG_NAME).write_text(to_pbtxt(artifact.config))
    for relative, content in sorted(artifact.files.items()):
        target = model_dir / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            target.write_bytes(content)
        elif content.is_dir():
            shutil.copytree(content, target)
        else:
            shutil.copyfile(content, target)
    # Ensembles and models whose files live elsewhere still need a version directory.
    (model_dir / str(artifact.version)).mkdir(exist_ok=True)


def _swap(staging: Path, out: Path) -> None:
    """Replace out with staging using renames (same filesystem), so readers never see half a repository."""
    if not out.exists():
        os.rename(staging, out)
        return
    retired = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    retired.rmdir()
    os.rename(out, retired)
    try:
        os.rename(staging, out)
    except BaseException:
        os.rename(retired, out)
        raise
    shutil.rmtree(retired, ignore_errors=True)


def sha256_bytes(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def file_hashes(artifact: ModelArtifact) -> dict[str, str]:
    """Content hashes of an artifact's files, for the manifest."""
    hashes: dict[str, str] = {}
    for relative, content in sorted(artifact.files.items()):
        if isinstance(content, bytes):
            hashes[relative] = sha256_bytes(content)
        elif content.is_dir():
            hashes[relative] = tree_hash([content])
        else:
            hashes[relative] = sha256_bytes(content.read_bytes())
    return hashes


def tree_hash(paths: Iterable[Path], extra: Iterable[str] = ()) -> str:
    """One hash over files and directory trees (contents and relative names) plus extra strings."""
    digest = hashlib.sha256()
    for text in extra:
        digest.update(text.encode() + b"\0")
    for path in paths:
        files = sorted(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts) \
            if path.is_dir() else [path]
        for file in files:
            name = file.relative_to(path).as_posix() if path.is_dir() else file.name
            digest.update(name.encode() + b"\0")
            digest.update(hashlib.sha256(file.read_bytes()).digest())
    return "sha256:" + digest.hexdigest()
