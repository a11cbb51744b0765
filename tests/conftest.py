"""Session-wide test helpers: the repository root and a factory that runs real tritonservers."""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

# Before torch loads (tritonize imports it lazily, the tests at collection): the kernels the
# Makefile pins, so the demo trains to the committed goldens' bytes on AVX-512 and AVX2 machines
# of the CPU kind that built them (other CPUs: tritonize.buildcheck.machine_independent).
os.environ.setdefault("ATEN_CPU_CAPABILITY", "avx2")
os.environ.setdefault("MKL_CBWR", "AVX2")

import pytest  # noqa: E402

from tritonize.triton.server import TritonServer  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def demo_repository(tmp_path_factory) -> Path:
    """The root model.yaml built once per test session (embedded runtime)."""
    from tritonize import build
    from tritonize.terminal import Terminal

    out = tmp_path_factory.mktemp("demo") / "model_repo"
    return build(REPO_ROOT / "model.yaml", out, terminal=Terminal(quiet=True, stderr=True)).repository


@pytest.fixture()
def spec(tmp_path: Path) -> Path:
    """The python-only spec of specs.py written to tmp_path (builds in well under a second)."""
    from specs import MODEL_PY, VALID

    (tmp_path / "pre.py").write_text(MODEL_PY)
    path = tmp_path / "spec.yaml"
    path.write_text(VALID)
    return path


@pytest.fixture(scope="module")
def triton_server(tmp_path_factory) -> Callable[..., TritonServer]:
    """Start a ready TritonServer on a repository: `server = triton_server(repo, **kwargs)`.

    Module-scoped, so one server can serve a whole test module; every server started through it is
    stopped (and its process group reaped) when the module ends, also after a failure.
    """
    started: list[TritonServer] = []

    def start(repository: Path, **kwargs) -> TritonServer:
        kwargs.setdefault("log_path", tmp_path_factory.mktemp("tritonserver") / "tritonserver.log")
        server = TritonServer(repository, **kwargs)
        started.append(server)
        server.start()
        server.wait_ready()
        return server

    yield start
    for server in started:
        server.stop()
