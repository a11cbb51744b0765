"""YAML loading for specs: duplicate keys rejected, every value's line remembered for errors.

Hostile or broken files end in one line too: a file that is not UTF-8 text, a YAML alias bomb
("billion laughs": aliases nest so the expanded document is exponentially larger than the file)
and recursive aliases are refused, with the number of values a spec may expand to bounded.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ..errors import Loc, SpecError

# A real spec expands to hundreds of values (a thousand-model spec to some tens of thousands);
# the bound stops an alias bomb within a fraction of a second.
MAX_VALUES = 100_000
MAX_DEPTH = 64
MAX_BYTES = 16 << 20
_PLAIN_COLLECTIONS = ("tag:yaml.org,2002:map", "tag:yaml.org,2002:seq")


def load_yaml_with_lines(path: Path) -> tuple[Any, dict[Loc, int]]:
    """Parse YAML into plain Python data plus a map from field path to 1-based line number."""
    text = _read_text(path)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SpecError(f"invalid YAML: {problem}", file=path, line=mark.line + 1 if mark else None,
                        fix="correct the YAML syntax at that line") from None
    except RecursionError:
        raise SpecError("invalid YAML: nested too deeply", file=path,
                        fix=f"a spec nests at most {MAX_DEPTH} levels") from None
    if root is None:
        raise SpecError("spec file is empty", file=path, fix="declare at least `models:`")
    lines: dict[Loc, int] = {}
    data = _Constructor(path, lines).construct(root, ())
    return data, lines


def _read_text(path: Path) -> str:
    try:
        if path.stat().st_size > MAX_BYTES:
            raise SpecError(f"spec file is {path.stat().st_size >> 20} MiB, not a spec", file=path,
                            fix=f"pass the model.yaml (a spec is at most {MAX_BYTES >> 20} MiB)")
        raw = path.read_bytes()
    except FileNotFoundError:
        raise SpecError("spec file not found", file=path, fix="pass the path of an existing model.yaml") from None
    except OSError as exc:
        raise SpecError(f"cannot read spec file: {exc.strerror}", file=path) from None
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise SpecError("spec file is UTF-16 text", file=path, fix="save the file as UTF-8")
    if b"\0" in raw:
        raise SpecError("spec file is binary (it contains NUL bytes), not YAML text", file=path,
                        fix="pass the model.yaml")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise SpecError(f"spec file is not UTF-8 text (byte 0x{raw[exc.start]:02x} at line {line})", file=path,
                        line=line, fix="save the file as UTF-8") from None


class _Constructor:
    def __init__(self, path: Path, lines: dict[Loc, int]):
        self.path = path
        self.lines = lines
        self.count = 0
        self.active: set[int] = set()  # nodes being built: meeting one again is a recursive alias
        self.loader = yaml.SafeLoader("")

    def construct(self, node: yaml.Node, loc: Loc) -> Any:
        self.count += 1
        line = node.start_mark.line + 1
        if self.count > MAX_VALUES:
            raise SpecError(f"the spec expands to more than {MAX_VALUES} values (a YAML alias bomb?)",
                            file=self.path, line=line, fix="write the spec without nested aliases")
        if len(loc) > MAX_DEPTH:
            raise SpecError(f"the spec nests deeper than {MAX_DEPTH} levels", file=self.path, line=line,
                            fix="flatten the structure: no spec field nests that deep")
        if id(node) in self.active:
            raise SpecError("a YAML alias refers to the value that contains it (a recursive alias)",
                            file=self.path, line=line, fix="remove the recursive alias")
        self.lines[loc] = line
        if not isinstance(node, yaml.ScalarNode) and node.tag not in _PLAIN_COLLECTIONS:
            raise SpecError(f"invalid YAML value: tag {node.tag} is not allowed", file=self.path, line=line,
                            fix="write a plain mapping or list (tags such as !!python/... are not allowed)")
        if isinstance(node, yaml.MappingNode):
            self.active.add(id(node))
            out: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    raise SpecError("YAML merge keys (<<) are not supported", file=self.path,
                                    line=key_node.start_mark.line + 1, fix="write the keys out")
                if not isinstance(key_node, yaml.ScalarNode):
                    raise SpecError("a mapping key must be a plain name, not a list or mapping", file=self.path,
                                    line=key_node.start_mark.line + 1, loc=loc, fix="write the key as a name")
                key = self._scalar(key_node)
                if key in out:
                    raise SpecError(f"duplicate key '{key}'", file=self.path, line=key_node.start_mark.line + 1,
                                    loc=loc + (key,), fix="remove one of the two entries")
                out[key] = self.construct(value_node, loc + (key,))
                # A field's line is its key's: a block mapping or list value starts a line later.
                self.lines[loc + (key,)] = key_node.start_mark.line + 1
            self.active.discard(id(node))
            return out
        if isinstance(node, yaml.SequenceNode):
            self.active.add(id(node))
            items = [self.construct(item, loc + (i,)) for i, item in enumerate(node.value)]
            self.active.discard(id(node))
            return items
        return self._scalar(node)

    def _scalar(self, node: yaml.Node) -> Any:
        try:
            value = self.loader.construct_object(node, deep=True)
        except yaml.YAMLError as exc:  # an unknown tag (!!python/object), a bad !!binary, ...
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise SpecError(f"invalid YAML value: {problem}", file=self.path, line=node.start_mark.line + 1,
                            fix="write a plain value (tags such as !!python/... are not allowed)") from None
        except (ValueError, OverflowError) as exc:  # e.g. a timestamp out of range
            raise SpecError(f"invalid YAML value: {exc}", file=self.path, line=node.start_mark.line + 1,
                            fix="write a plain value") from None
        if isinstance(value, bytes):
            raise SpecError("invalid YAML value: binary data (!!binary) is not allowed", file=self.path,
                            line=node.start_mark.line + 1, fix="write the value as text")
        if isinstance(value, float) and value != value:  # noqa: PLR0124 - NaN: no spec number is NaN
            raise SpecError("'.nan' is not a number a spec accepts", file=self.path, line=node.start_mark.line + 1,
                            fix="write a number")
        return value
