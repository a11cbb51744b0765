"""The python_backends/ directory: model.py sources that generated repositories ship."""
from __future__ import annotations

from pathlib import Path

# python_backends/ sits next to compiler/ in the source tree (editable install) and is the one
# place these sources live.
BACKENDS_DIR = Path(__file__).resolve().parent.parent / "python_backends"


def builtin_backend_names() -> list[str]:
    return sorted(p.name for p in BACKENDS_DIR.iterdir() if (p / "model.py").is_file())


def builtin_backend_source(name: str) -> Path:
    return BACKENDS_DIR / name / "model.py"
