"""Where a loaded spec came from: its file and the YAML line of every field path, so that any
stage's error location (a `Loc` such as ("models", 0, "source", "path")) becomes
`model.yaml:12: models[0].source.path`. Also the one mapping from a place inside a generated
Triton config to the spec field it came from."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import Loc, SpecError, TritonizeError


@dataclass(frozen=True)
class SpecSource:
    path: Path  # resolved: relative paths in the spec resolve against its directory
    lines: dict[Loc, int] = field(default_factory=dict)
    shown: str = ""  # the path as the user gave it, for messages

    @property
    def name(self) -> str:
        return self.shown or str(self.path)

    def line(self, loc: Loc) -> int | None:
        """The line of the deepest known prefix of loc (a missing key points at its parent)."""
        loc = tuple(loc)
        while loc:
            if loc in self.lines:
                return self.lines[loc]
            loc = loc[:-1]
        return self.lines.get(())

    def error(self, loc: Loc, message: str, fix: str | None = None) -> SpecError:
        """A SpecError at loc (a full path from the top of the spec), with file and line."""
        error = SpecError(message, file=self.name, line=self.line(loc), loc=loc, fix=fix)
        error.placed = True
        return error

    def locate(self, error: TritonizeError) -> TritonizeError:
        """Name this spec file and the line of the error's location, unless it names a file already."""
        return error.at_file(self.name, self.line(error.loc) if error.loc else None)


# Field names inside a ModelConfig that are spelled differently in the spec (None: no spec field).
_CONFIG_TO_SPEC = {"ensemble_scheduling": None, "step": "steps", "input": "inputs", "output": "outputs",
                   "model_version": "version"}


def config_loc_to_spec(model_names: list[str], ensemble_names: list[str], model: str, loc: Loc) -> Loc:
    """Translate a path inside a generated ModelConfig (a rule violation's) into the spec's field
    path: ("input", 0, "dims") of models[2] -> ("models", 2, "inputs", 0, "dims")."""
    if model in model_names:
        prefix: Loc = ("models", model_names.index(model))
    elif model in ensemble_names:
        prefix = ("ensembles", ensemble_names.index(model))
    else:
        prefix = (model,)
    renamed = (_CONFIG_TO_SPEC.get(p, p) if isinstance(p, str) else p for p in loc)
    return prefix + tuple(p for p in renamed if p is not None)
