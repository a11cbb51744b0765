"""Errors: user errors (one line, exit 2) kept apart from internal bugs (traceback, exit 1)."""
from __future__ import annotations

from pathlib import Path


class TritonizeError(Exception):
    """A problem with the user's input: printed as one line, no traceback, exit code 2.

    The line names where (file[:line]), what (field path), and the fix.
    """

    exit_code = 2

    def __init__(self, message: str, *, file: str | Path | None = None, line: int | None = None,
                 field: str | None = None, fix: str | None = None):
        self.message = message
        self.file = str(file) if file is not None else None
        self.line = line
        self.field = field
        self.fix = fix
        super().__init__(self.one_line())

    def located(self, file: str | Path) -> "TritonizeError":
        """The same error, naming `file` if it named no file yet (a stage deep in the build knows
        the model, the caller knows which spec it came from)."""
        if self.file is None:
            self.file = str(file)
            self.args = (self.one_line(),)
        return self

    def one_line(self) -> str:
        where = ""
        if self.file:
            where = self.file + (f":{self.line}" if self.line else "")
        parts = [p for p in (where, self.field) if p]
        head = " ".join(parts)
        text = f"{head}: {self.message}" if head else self.message
        if self.fix:
            text += f" (fix: {self.fix})"
        return " ".join(text.split())  # always exactly one line


class SpecError(TritonizeError):
    """The spec file is malformed or inconsistent."""


class ConversionError(TritonizeError):
    """A model could not be converted, or the converted model disagrees with its source."""


class ValidationFailed(TritonizeError):
    """A repository breaks Triton's schema or load rules."""


class MissingDependency(TritonizeError):
    """An optional heavy package is not installed."""

    def __init__(self, package: str, purpose: str, extra: str | None = None):
        hint = f'pip install "tritonize[{extra}]"' if extra else f"pip install {package}"
        super().__init__(f"{purpose} needs the Python package '{package}', which is not installed",
                         fix=hint)


def lazy_import(module: str, *, purpose: str, extra: str | None = None, package: str | None = None):
    """Import a heavy optional module on first use, with an actionable message if it is missing."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # only a missing top-level package is the user's to fix
        if exc.name and exc.name.split(".")[0] == module.split(".")[0]:
            raise MissingDependency(package or module.split(".")[0], purpose, extra) from exc
        raise
