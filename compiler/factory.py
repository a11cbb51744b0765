"""Factories: `module:function` references in a spec, imported with the spec's directory on
sys.path and called to produce a model (an estimator, an nn.Module, a HuggingFace directory)."""
from __future__ import annotations

import contextlib
import importlib
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from .errors import ConversionError, MissingDependency

if TYPE_CHECKING:
    from .spec import ModelSpec, Spec


@contextlib.contextmanager
def spec_dir_on_path(spec: Spec) -> Iterator[None]:
    """Factories and pickled classes are importable from the spec's directory, as the spec promises."""
    directory = str(spec.base_dir)
    sys.path.insert(0, directory)
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(directory)


def call_factory(model: ModelSpec, spec: Spec) -> Any:
    """Import `module:function` (spec directory on sys.path) and call it."""
    reference = model.source.factory
    assert reference is not None
    module_name, function_name = reference.split(":")
    where = f"models.{model.name}.source.factory"
    with spec_dir_on_path(spec):
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and module_name.startswith(exc.name):
                raise ConversionError(f"cannot import module '{module_name}'", file=spec.path, field=where,
                                      fix=f"put {module_name.replace('.', '/')}.py next to the spec file") from None
            raise MissingDependency(exc.name or module_name, f"factory {reference}") from exc
        function = getattr(module, function_name, None)
        if not callable(function):
            raise ConversionError(f"module '{module_name}' has no function '{function_name}'", file=spec.path,
                                  field=where, fix="name a function that returns the model")
        try:
            return function()
        except ModuleNotFoundError as exc:  # the factory imports a package that is not installed
            raise MissingDependency(exc.name or str(exc), f"factory {reference}") from exc


def factory_sources(spec: Spec, factory: str) -> list[Path]:
    """The .py files of the factory's top-level package (a factory may import its siblings)."""
    top = factory.split(":")[0].split(".")[0]
    package = spec.base_dir / top
    if package.is_dir():
        return sorted(p for p in package.rglob("*.py") if "__pycache__" not in p.parts)
    module = spec.base_dir / f"{top}.py"
    return [module] if module.is_file() else []
