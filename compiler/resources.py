"""Data the compiler ships besides its code: python_backends/ (model.py sources generated
repositories contain) and templates/ (Jinja2). In a source checkout they sit next to compiler/;
in an installed wheel they are inside the tritonize package."""
from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

from .optional import optional

_PACKAGE_DIR = Path(__file__).resolve().parent


def _data_dir(name: str) -> Path:
    for candidate in (_PACKAGE_DIR / name, _PACKAGE_DIR.parent / name):  # wheel, then checkout
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"tritonize is installed without its {name}/ directory: reinstall it")


PYTHON_BACKENDS_DIR = _data_dir("python_backends")
TEMPLATES_DIR = _data_dir("templates")
# The python-backend model that serves model.onnx in the embedded server (no onnxruntime backend).
ONNX_RUNNER = "onnx_runner"


jinja2 = optional("jinja2", purpose="rendering templates")


@cache
def back_channel() -> Any:
    """The CPU engine's back_channel.py (stdlib only), the one owner of what the engine and its
    clients agree on (e.g. MULTI_TOKEN_PARAMETER, the request parameter that asks for paced streams)."""
    import importlib.util

    path = PYTHON_BACKENDS_DIR / "llm_cpu_engine" / "back_channel.py"
    spec = importlib.util.spec_from_file_location("tritonize_back_channel", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@cache
def _environment():
    # StrictUndefined: a value the caller forgot fails the render instead of writing an empty
    # string (the unfilled-placeholder failure Triton users hit with hand-filled templates).
    return jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES_DIR)),
                              undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                              trim_blocks=True, lstrip_blocks=True, autoescape=False)


def render_template(name: str, **context) -> str:
    """Render templates/<name> (e.g. "perf/report.md.j2") with StrictUndefined."""
    return _environment().get_template(name).render(**context)


def builtin_backend_names() -> list[str]:
    """The model.py sources in python_backends/ a spec can name as `source.builtin`."""
    return sorted(p.name for p in PYTHON_BACKENDS_DIR.iterdir() if (p / "model.py").is_file())


def builtin_backend_source(name: str) -> Path:
    return PYTHON_BACKENDS_DIR / name / "model.py"
