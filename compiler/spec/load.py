"""`load_spec`: the one way from a model.yaml to a validated Spec, with one-line errors."""
from __future__ import annotations

import re
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from ..errors import Loc, SpecError, TritonizeError
from ..frameworks import FRAMEWORKS
from ..resources import builtin_backend_names
from .llm import validate_llm_blocks
from .models import RUNTIMES, FixableValueError, Spec
from .source import SpecSource
from .yaml_loader import load_yaml_with_lines


def load_spec(path: str | Path, *, runtime: str | None = None) -> Spec:
    """Load and validate a spec file; raises SpecError (one line) on any problem.

    runtime overrides the spec's `runtime` before validation (one spec, two targets)."""
    path = Path(path)
    data, lines = load_yaml_with_lines(path)
    source = SpecSource(path.resolve(), lines, shown=str(path))
    if not isinstance(data, dict):
        raise SpecError("the spec must be a mapping at the top level", file=source.name, line=1,
                        fix="start with keys such as `repository:` and `models:`")
    if runtime is not None:
        if runtime not in RUNTIMES:
            raise SpecError(f"unknown runtime '{runtime}'", loc=("--runtime",),
                            fix=f"use one of: {', '.join(RUNTIMES)}")
        data["runtime"] = runtime
    try:
        spec = Spec.model_validate(data)
    except ValidationError as exc:
        loc, message, fix = describe_validation_error(exc, Spec)
        raise source.error(loc, message, fix) from None
    spec._source = source
    _check_sources_exist(spec, source)
    _check_parameters(spec, source)
    _check_sample_inputs(spec, source)
    validate_llm_blocks(spec, source)
    return spec


def describe_validation_error(exc: ValidationError, root: type[BaseModel]) -> tuple[Loc, str, str | None]:
    """The first pydantic error as (field path, one-line message, fix), phrased for YAML authors."""
    error = exc.errors()[0]
    loc = tuple(p for p in error["loc"] if not (isinstance(p, str) and p.startswith(("function-", "tagged"))))
    kind = error["type"]
    message = error["msg"].removeprefix("Value error, ")
    fix = None
    if kind == "extra_forbidden":
        owner = _model_at(root, loc[:-1])
        message = f"unknown key '{loc[-1]}'"
        fix = f"use one of: {', '.join(owner.model_fields)}" if owner else "remove it"
    elif kind == "missing":
        message, fix = f"required key '{loc[-1]}' is missing", f"add `{loc[-1]}:`"
    elif kind == "literal_error":
        message = f"{error['input']!r} is not allowed"
        fix = f"use one of: {error.get('ctx', {}).get('expected', '')}"
    elif kind.endswith("_type") or kind.endswith("_parsing"):
        message = f"{message}, got {error['input']!r}"
    elif isinstance(original := error.get("ctx", {}).get("error"), FixableValueError):
        fix = original.fix
    return loc, message, fix


def _model_at(root: type[BaseModel], loc: Loc) -> type[BaseModel] | None:
    """Walk the models along a field path to find which model a key was unknown in."""
    current: type[BaseModel] | None = root
    for part in loc:
        if isinstance(part, int) or current is None:
            continue
        field = current.model_fields.get(part)
        current = _inner_model(field.annotation) if field is not None else None
        if current is None:
            return None
    return current


def _inner_model(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside an annotation such as `list[TensorSpec] | None`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _inner_model(arg)
        if found is not None:
            return found
    return None


def _check_sources_exist(spec: Spec, source: SpecSource) -> None:
    for i, model in enumerate(spec.models):
        src = model.source
        try:
            found = src.path is None or spec.resolve(src.path).exists()
        except (RuntimeError, OSError):  # Python 3.11's resolve() reports a symlink loop as RuntimeError
            raise source.error(("models", i, "source", "path"), f"{src.path} is a loop of symbolic links",
                               fix="point source.path at a file") from None
        if not found:
            raise source.error(("models", i, "source", "path"), f"file not found: {src.path}",
                               fix="give a path relative to the spec file")
        if src.builtin is not None:
            names = builtin_backend_names()
            if src.builtin not in names:
                raise source.error(("models", i, "source", "builtin"),
                                   f"unknown builtin python model '{src.builtin}'",
                                   fix=f"use one of: {', '.join(names)}")


def _check_parameters(spec: Spec, source: SpecSource) -> None:
    """Parameters of converted models that their backend parses (triton.config.PARAMETER_TYPES)."""
    from ..triton.config import PARAMETER_TYPES

    typed = PARAMETER_TYPES[spec.runtime]
    for i, model in enumerate(spec.models):
        if FRAMEWORKS[model.source.framework].builder != "onnx":
            continue
        for key, value in model.parameters.items():
            if key in typed and not re.fullmatch(typed[key][0], value):
                raise source.error(("models", i, "parameters", key),
                                   f"parameter {key} is {value!r}; the backend serving this model reads it as "
                                   f"{typed[key][1]}", fix=f"write {key}: 1, for example")


def _check_sample_inputs(spec: Spec, source: SpecSource) -> None:
    """Each sample_inputs array fits its declared input's dtype and shape (samples.sample_array);
    those of a converted model that declares no inputs are checked against the graph's, once known."""
    from ..samples import sample_array

    entries = [("models", i, m) for i, m in enumerate(spec.models)] + \
              [("ensembles", i, e) for i, e in enumerate(spec.ensembles)]
    for kind, i, entry in entries:
        tensors = {t.name: t for t in entry.inputs or []}
        for name, values in (entry.sample_inputs or {}).items():
            if name not in tensors:
                continue
            try:
                sample_array(name, values, tensors[name], entry.max_batch_size)
            except TritonizeError as error:
                raise source.error((kind, i, *error.loc), error.message, error.fix) from None
