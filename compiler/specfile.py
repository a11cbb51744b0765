"""YAML loading for specs: duplicate keys rejected, every value's line remembered for errors."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .errors import SpecError

Loc = tuple[Any, ...]


def load_yaml_with_lines(path: Path) -> tuple[Any, dict[Loc, int]]:
    """Parse YAML into plain Python data plus a map from field path to 1-based line number."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise SpecError("spec file not found", file=path, fix="pass the path of an existing model.yaml") from None
    except OSError as exc:
        raise SpecError(f"cannot read spec file: {exc.strerror}", file=path) from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SpecError(f"invalid YAML: {problem}", file=path, line=mark.line + 1 if mark else None,
                        fix="correct the YAML syntax at that line") from None
    if root is None:
        raise SpecError("spec file is empty", file=path, fix="declare at least `models:`")
    lines: dict[Loc, int] = {}
    data = _construct(root, (), lines, path)
    return data, lines


def _construct(node: yaml.Node, loc: Loc, lines: dict[Loc, int], path: Path) -> Any:
    lines[loc] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise SpecError("YAML merge keys (<<) are not supported", file=path,
                                line=key_node.start_mark.line + 1, fix="write the keys out")
            key = _scalar(key_node)
            if key in out:
                dotted = _dotted(loc + (key,))
                raise SpecError(f"duplicate key '{key}'", file=path, line=key_node.start_mark.line + 1,
                                field=dotted, fix="remove one of the two entries")
            out[key] = _construct(value_node, loc + (key,), lines, path)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_construct(item, loc + (i,), lines, path) for i, item in enumerate(node.value)]
    return _scalar(node)


def _scalar(node: yaml.Node) -> Any:
    loader = yaml.SafeLoader("")
    return loader.construct_object(node, deep=True)


def _dotted(loc: Loc) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += ("." if text else "") + str(part)
    return text


def field_path(loc: Loc) -> str:
    return _dotted(loc) or "(top level)"


def line_for(lines: dict[Loc, int], loc: Loc) -> int | None:
    """The line of the deepest known prefix of loc (a missing key points at its parent)."""
    loc = tuple(loc)
    while loc:
        if loc in lines:
            return lines[loc]
        loc = loc[:-1]
    return lines.get(())
