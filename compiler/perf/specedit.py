"""Write tuned serving settings back into a model.yaml, keeping everything else as written.

Only the text of the edited keys changes (each rewritten in flow style on one line); comments,
order and the rest of the file stay byte for byte. The result is validated with `load_spec`
before the original file is replaced.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import yaml

from ..errors import SpecError

TUNED_KEYS = ("max_batch_size", "dynamic_batching", "instance_group")


def flow_yaml(value: Any) -> str:
    """One-line flow YAML for the plain values tune writes (numbers, words, lists, mappings)."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{key}: {flow_yaml(item)}" for key, item in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(flow_yaml(item) for item in value) + "]"
    if isinstance(value, str):
        return value if value.isidentifier() else json.dumps(value)
    return json.dumps(value)


def model_settings_yaml(name: str, settings: dict[str, Any]) -> str:
    """The block to paste into the model's entry under `models:`."""
    lines = [f"  - name: {name}"]
    lines += [f"    {key}: {flow_yaml(settings[key])}" for key in TUNED_KEYS if key in settings]
    return "\n".join(lines) + "\n"


def write_model_settings(spec_path: Path, model: str, settings: dict[str, Any]) -> None:
    text = spec_path.read_text()
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    entry = _model_node(root, model, spec_path)
    edits: list[tuple[int, int, str]] = []  # (start, end, replacement), applied back to front
    present = {key.value: (key, value) for key, value in entry.value}
    indent = " " * entry.value[0][0].start_mark.column
    missing = []
    for key in TUNED_KEYS:
        if key not in settings:
            continue
        rendered = f"{key}: {flow_yaml(settings[key])}"
        if key in present:
            key_node, value_node = present[key]
            original = text[key_node.start_mark.index:value_node.end_mark.index]
            trailing = original[len(original.rstrip()):]  # a block value's span runs to the next key
            edits.append((key_node.start_mark.index, value_node.end_mark.index, rendered + trailing))
        else:
            missing.append(rendered)
    if missing:
        # After the `name:` line: the new keys sit together at the top of the entry.
        name_value = present["name"][1]
        line_end = text.find("\n", name_value.end_mark.index)
        line_end = len(text) if line_end < 0 else line_end
        edits.append((line_end, line_end, "".join(f"\n{indent}{line}" for line in missing)))
    for start, end, replacement in sorted(edits, reverse=True):
        text = text[:start] + replacement + text[end:]
    _replace_validated(spec_path, text)


def _model_node(root, model: str, spec_path: Path):
    if isinstance(root, yaml.MappingNode):
        for key, value in root.value:
            if key.value == "models" and isinstance(value, yaml.SequenceNode):
                for entry in value.value:
                    if isinstance(entry, yaml.MappingNode) and any(
                            k.value == "name" and v.value == model for k, v in entry.value):
                        return entry
    raise SpecError(f"no model named '{model}' under `models:`", file=spec_path, loc=("--model",),
                    fix="name a model declared in the spec")


def _replace_validated(spec_path: Path, text: str) -> None:
    from ..spec import load_spec

    # Same directory, so relative source paths resolve as they will in the final file.
    handle, temporary = tempfile.mkstemp(prefix=f".{spec_path.name}.", suffix=".yaml", dir=spec_path.parent)
    try:
        with os.fdopen(handle, "w") as out:
            out.write(text)
        load_spec(Path(temporary))
        os.replace(temporary, spec_path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
