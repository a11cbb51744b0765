"""Where the embedded tritonserver lives (the nvidia-pytriton wheel) and the backend directory it
runs with: the python backend plus the stub for the running Python, copied once per user into a
cache shared by every run."""
from __future__ import annotations

import os
import shutil
import sys
import sysconfig
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ...errors import MissingDependency, TritonizeError

PYTRITON_PACKAGE = "nvidia-pytriton"
PYTRITON_VERSION = "0.7.0"  # ships Triton Inference Server 2.51.0 (NGC 24.10)


@dataclass(frozen=True)
class ServerInstall:
    """Where the embedded tritonserver lives and what it needs in its environment."""

    binary: Path
    backend_dir: Path  # holds python/{libtriton_python.so, triton_python_backend_utils.py, triton_python_backend_stub}
    cache_dir: Path  # response-cache plugins (local/libtritoncache_local.so)
    library_dirs: tuple[Path, ...]
    python_bin_dir: Path

    def environment(self, base: dict[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ if base is None else base)
        libs = [str(p) for p in self.library_dirs]
        if env.get("LD_LIBRARY_PATH"):
            libs.append(env["LD_LIBRARY_PATH"])
        env["LD_LIBRARY_PATH"] = os.pathsep.join(libs)
        # The stub embeds Python and finds its prefix by looking up `python3` on PATH; the first
        # one found decides the environment (its pyvenv.cfg, its site-packages) that model.py runs in.
        env["PATH"] = os.pathsep.join([str(self.python_bin_dir), env.get("PATH", "")])
        return env

    def command(self, repository: Path, http_port: int, grpc_port: int, metrics_port: int,
                model_control: str = "none", extra_args: Sequence[str] = ()) -> list[str]:
        return [str(self.binary), f"--model-repository={repository}", f"--backend-directory={self.backend_dir}",
                f"--cache-directory={self.cache_dir}", f"--http-port={http_port}", f"--grpc-port={grpc_port}",
                f"--metrics-port={metrics_port}", f"--model-control-mode={model_control}", *extra_args]


def find_tritonserver() -> ServerInstall:
    """Locate the wheel's tritonserver and prepare its backend directory (idempotent, safe to race)."""
    import importlib.metadata
    import importlib.util

    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependency(f"{PYTRITON_PACKAGE}=={PYTRITON_VERSION}", "running tritonserver")
    package_dir = Path(next(iter(spec.submodule_search_locations)))
    dist_dir = package_dir / "tritonserver"
    binary = dist_dir / "bin" / "tritonserver"
    python_backend = dist_dir / "backends" / "python"
    if not binary.is_file() or not (python_backend / "libtriton_python.so").is_file():
        raise TritonizeError(f"the installed {PYTRITON_PACKAGE} has no tritonserver binary",
                             file=dist_dir, fix=f"pip install --force-reinstall {PYTRITON_PACKAGE}=={PYTRITON_VERSION}")
    python_version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = dist_dir / "python_backend_stubs" / python_version / "triton_python_backend_stub"
    if not stub.is_file():
        shipped = sorted(p.name for p in (dist_dir / "python_backend_stubs").iterdir())
        raise TritonizeError(f"{PYTRITON_PACKAGE} has no python-backend stub for Python {python_version}",
                             file=stub.parent.parent, fix=f"run tritonize with Python {', '.join(shipped)}")
    version = importlib.metadata.version(PYTRITON_PACKAGE)
    prepared = _prepare_backends(dist_dir, stub, key=f"pytriton-{version}-py{python_version}")

    library_dirs = [package_dir.parent / "nvidia_pytriton.libs"]
    # The stub links libpython3.X.so.1.0: prefer the running interpreter's own, so the stub's C
    # library matches the standard library it will import.
    libpython_dir = Path(sysconfig.get_config_var("LIBDIR") or "")
    ldlibrary = sysconfig.get_config_var("INSTSONAME") or ""
    if ldlibrary and (libpython_dir / ldlibrary).is_file():
        library_dirs.append(libpython_dir)
    return ServerInstall(binary=binary, backend_dir=prepared / "backends", cache_dir=prepared / "caches",
                         library_dirs=tuple(library_dirs), python_bin_dir=Path(sys.executable).parent)


def _cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tritonize" / "tritonserver"


def _prepare_backends(dist_dir: Path, stub: Path, key: str) -> Path:
    """Copy backends/python + the stub and caches/ into <cache>/<key>/ once.

    Built in a temporary sibling directory and renamed into place, so concurrent callers either
    see a complete directory or none; the loser of a rename race drops its copy.
    """
    final = _cache_root() / key
    if _backends_complete(final):
        return final
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except OSError:  # no writable home (CI users, containers): a per-user temp dir serves as well
        final = Path(tempfile.gettempdir()) / f"tritonize-{os.getuid()}" / "tritonserver" / key
        if _backends_complete(final):
            return final
        final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=final.parent))
    try:
        shutil.copytree(dist_dir / "backends", staging / "backends",
                        ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy2(stub, staging / "backends" / "python" / "triton_python_backend_stub")
        shutil.copytree(dist_dir / "caches", staging / "caches")
        if final.exists() and not _backends_complete(final):
            shutil.rmtree(final, ignore_errors=True)  # a partial copy left by hand or a full disk
        try:
            os.rename(staging, final)
        except OSError:
            if not _backends_complete(final):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def _backends_complete(root: Path) -> bool:
    python = root / "backends" / "python"
    return all((python / name).is_file() for name in
               ("libtriton_python.so", "triton_python_backend_utils.py", "triton_python_backend_stub"))
