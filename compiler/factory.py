"""Factories: `module:function` references in a spec, imported with the spec's directory on
sys.path and called to produce a model (an estimator, an nn.Module, a HuggingFace directory)."""
from __future__ import annotations

import contextlib
import importlib
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

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
    """Import `module:function` (spec directory on sys.path) and call it. The factory is the user's
    code: whatever it raises (a syntax error, an exception, sys.exit) is the user's error, one line
    naming the factory, the exception and the line of their code it came from; the traceback is
    kept for `--verbose`. Ctrl-C (KeyboardInterrupt) goes on up: the CLI exits 130."""
    reference = model.source.factory
    assert reference is not None
    module_name, function_name = reference.split(":")
    where = ("source", "factory")
    with spec_dir_on_path(spec):
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and module_name.startswith(exc.name):
                raise ConversionError(f"cannot import module '{module_name}'", loc=where,
                                      fix=f"put {module_name.replace('.', '/')}.py next to the spec file") from None
            raise MissingDependency(exc.name or module_name, f"factory {reference}") from exc
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # noqa: BLE001 - the module's own code failed (SystemExit included)
            raise _failure(reference, f"while importing {module_name}", exc, spec) from None
        function = getattr(module, function_name, None)
        if not callable(function):
            raise ConversionError(f"module '{module_name}' has no function '{function_name}'", loc=where,
                                  fix="name a function that returns the model")
        try:
            return function()
        except ModuleNotFoundError as exc:  # the factory imports a package that is not installed
            raise MissingDependency(exc.name or str(exc), f"factory {reference}") from exc
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # noqa: BLE001 - SystemExit too: sys.exit(0) must not end a build "successfully"
            raise _failure(reference, "", exc, spec) from None


def _failure(reference: str, during: str, exc: BaseException, spec: Spec) -> ConversionError:
    if isinstance(exc, SystemExit):
        what = f"called sys.exit({exc.code!r})"
    elif isinstance(exc, SyntaxError):
        what = f"has a syntax error ({exc.msg})"
    else:
        text = (str(exc).strip().splitlines() or [""])[0]
        what = f"raised {type(exc).__name__}" + (f": {text}" if text else "")
    where = _user_location(exc, spec.base_dir)
    message = f"factory {reference} {what}" + (f" {during}" if during else "") + (f" at {where}" if where else "")
    error = ConversionError(message, loc=("source", "factory"),
                            fix="fix the factory; `tritonize build --verbose` prints its traceback")
    error.details = "".join(traceback.format_exception(exc))
    return error


def _user_location(exc: BaseException, base_dir: Path) -> str | None:
    """file:line of the innermost frame in the user's code (under the spec directory), else of the
    innermost frame; a syntax error's own file and line."""
    if isinstance(exc, SyntaxError) and exc.filename:
        return f"{_shown(Path(exc.filename), base_dir)}:{exc.lineno}"
    frames = [(Path(frame.f_code.co_filename), line) for frame, line in _walk(exc.__traceback__)]
    ours = Path(__file__).resolve().parent
    frames = [(path, line) for path, line in frames if ours not in path.resolve().parents]
    inside = [(path, line) for path, line in frames if base_dir in path.resolve().parents]
    if not (inside or frames):
        return None
    path, line = (inside or frames)[-1]
    return f"{_shown(path, base_dir)}:{line}"


def _walk(tb: TracebackType | None) -> Iterator[tuple[Any, int]]:
    while tb is not None:
        yield tb.tb_frame, tb.tb_lineno
        tb = tb.tb_next


def _shown(path: Path, base_dir: Path) -> str:
    resolved = path.resolve()
    return resolved.relative_to(base_dir).as_posix() if base_dir in resolved.parents else str(path)


def factory_sources(spec: Spec, factory: str) -> list[Path]:
    """The .py files of the factory's top-level package (a factory may import its siblings)."""
    top = factory.split(":")[0].split(".")[0]
    package = spec.base_dir / top
    if package.is_dir():
        return sorted(p for p in package.rglob("*.py") if "__pycache__" not in p.parts)
    module = spec.base_dir / f"{top}.py"
    return [module] if module.is_file() else []
