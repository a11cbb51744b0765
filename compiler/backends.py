"""The python_backends/ directory: model.py sources that generated repositories ship."""
from __future__ import annotations

from pathlib import Path

from .resources import PYTHON_BACKENDS_DIR


def builtin_backend_names() -> list[str]:
    return sorted(p.name for p in PYTHON_BACKENDS_DIR.iterdir() if (p / "model.py").is_file())


def builtin_backend_source(name: str) -> Path:
    return PYTHON_BACKENDS_DIR / name / "model.py"
