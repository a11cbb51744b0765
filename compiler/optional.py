"""Heavy and optional dependencies, declared once at the top of the module that uses them and
imported on first use (Polygraphy's `mod.lazy_import` pattern):

    torch = optional("torch", purpose="converting a PyTorch model", extra="torch")
    ...
    module = torch.nn.Linear(4, 2)      # torch is imported here, the first time it is touched

`tritonize --help`, `validate` and `check` therefore never import torch, onnxruntime,
transformers or modelopt (tests/test_structure.py holds that). A package that is missing
becomes a one-line MissingDependency naming the package and the pip extra that installs it.
`loaded(module)` imports one now, where the moment matters (e.g. with warnings silenced).
"""
from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

from .errors import MissingDependency


class OptionalModule:
    """A module imported on first attribute access. Its own names are private, so that every
    public attribute (`onnx.load`, `torch.load`) is the real module's."""

    def __init__(self, name: str, *, purpose: str, extra: str | None = None, package: str | None = None):
        self._name = name
        self._purpose = purpose
        self._extra = extra
        self._package = package or name.split(".")[0]

    def _import(self) -> ModuleType:
        # Not cached here: sys.modules is the cache (import_module is a dict lookup once loaded),
        # and a package removed from it, as tests do to play "not installed", is seen as missing.
        try:
            return importlib.import_module(self._name)
        except ImportError as exc:
            # Only a missing top-level package is the user's to fix; a broken install is a bug.
            if exc.name and exc.name.split(".")[0] == self._name.split(".")[0]:
                raise MissingDependency(self._package, self._purpose, self._extra) from exc
            raise

    def __getattr__(self, attribute: str) -> Any:
        if attribute.startswith("_"):
            raise AttributeError(attribute)
        return getattr(self._import(), attribute)

    def __repr__(self) -> str:
        return f"<optional module {self._name}>"


def optional(name: str, *, purpose: str, extra: str | None = None, package: str | None = None) -> Any:
    """Declare a lazily imported module (typed Any: attribute access goes to the real module)."""
    return OptionalModule(name, purpose=purpose, extra=extra, package=package)


def loaded(module: Any) -> ModuleType:
    """Import a declared optional module now and return the real module."""
    if isinstance(module, OptionalModule):
        return module._import()
    assert isinstance(module, ModuleType), f"{module!r} is not a module"
    return module
