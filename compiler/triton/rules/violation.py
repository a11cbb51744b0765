"""`Violation`: one broken load rule, and how its location inside a ModelConfig reads as text."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ...errors import Loc

ERROR = "error"
WARNING = "warning"  # Triton loads the model and only logs the problem
# Fields whose next loc element is a map key.
MAP_FIELDS = frozenset({"input_map", "output_map", "parameters", "priority_queue_policy"})


@dataclass(frozen=True)
class Violation:
    """One broken load rule: where (model, field path), which rule, what is wrong, the fix."""

    model: str  # model (directory) name, or "" for repository-level problems
    loc: Loc  # path inside the ModelConfig, e.g. ("input", 0, "dims")
    rule: str  # short stable id, e.g. "dims", "ensemble-edge-shape"
    message: str
    fix: str
    severity: str = ERROR  # ERROR: Triton refuses to load; WARNING: it loads and logs it

    @property
    def is_error(self) -> bool:
        return self.severity == ERROR

    @property
    def field(self) -> str:
        """loc as text: ("ensemble_scheduling", "step", 1, "input_map", "X") ->
        'ensemble_scheduling.step[1].input_map["X"]'."""
        text = ""
        previous = None
        for part in self.loc:
            if isinstance(part, int):
                text += f"[{part}]"
            elif previous in MAP_FIELDS:
                text += f'["{part}"]'
            else:
                text += f".{part}" if text else str(part)
            previous = part
        return text

    def one_line(self, file: str | Path | None = None) -> str:
        """'model_repo/x/config.pbtxt: input[0].dims: ... (fix: ...)'; without a file the model
        name leads."""
        head = [str(file) if file is not None else self.model, self.field]
        text = ": ".join([h for h in head if h] + [self.message])
        if self.fix:
            text += f" (fix: {self.fix})"
        return " ".join(text.split())
