"""Errors: user errors (one line, exit 2) kept apart from internal bugs (traceback, exit 1).

Every user error carries its location as one type, `Loc`: a tuple of field names and list indices
into the spec, e.g. ``("models", 0, "source", "path")``, or a command-line option ``("--stage",)``.
A stage deep in the build raises with a location relative to what it was handed (a converter
knows its model, not the model's index) and no file; the orchestrator prefixes the model's place
(`within`) and the spec turns the location into ``file:line`` (`SpecSource.locate`). There is one
formatter, `TritonizeError.one_line`:

    model.yaml:12: models[0].source.path: file not found: m.joblib (fix: give a path relative to the spec file)
"""
from __future__ import annotations

import errno
from pathlib import Path
from typing import Union

Loc = tuple[Union[str, int], ...]


def format_loc(loc: Loc) -> str:
    """("models", 0, "source", "path") -> 'models[0].source.path'; an option ("--stage",) stays '--stage'."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += ("." if text else "") + str(part)
    return text


class TritonizeError(Exception):
    """A problem with the user's input: printed as one line, no traceback, exit code 2.

    The line names where (file[:line]), what (field path), and the fix.
    """

    exit_code = 2

    def __init__(self, message: str, *, file: str | Path | None = None, line: int | None = None,
                 loc: Loc = (), fix: str | None = None):
        self.message = message
        self.file = str(file) if file is not None else None
        self.line = line
        self.loc: Loc = tuple(loc)
        self.fix = fix
        # True once loc is a full path from the top of the spec (not relative to a model).
        self.placed = False
        # The user's own traceback (a failing factory), printed only with --verbose.
        self.details: str | None = None
        super().__init__(self.one_line())

    def within(self, *prefix: str | int) -> TritonizeError:
        """The same error with its location under `prefix` (the caller knows where its part sits
        in the spec). An error already placed in the spec is left as it is."""
        if not self.placed:
            self.loc = tuple(prefix) + self.loc
            self.placed = True
            self._refresh()
        return self

    def at_file(self, file: str | Path, line: int | None = None) -> TritonizeError:
        """The same error naming `file` (and line) if it named no file yet."""
        if self.file is None:
            self.file, self.line = str(file), line
            self._refresh()
        return self

    def one_line(self) -> str:
        where = ""
        if self.file:
            where = self.file + (f":{self.line}" if self.line else "")
        parts = [p for p in (where, format_loc(self.loc)) if p]
        head = ": ".join(parts)
        text = f"{head}: {self.message}" if head else self.message
        if self.fix:
            text += f" (fix: {self.fix})"
        return " ".join(text.split())  # always exactly one line

    def _refresh(self) -> None:
        self.args = (self.one_line(),)


# What the user can do about an OS error on a path they chose (the repository, the spec's files).
_OS_ERROR_FIXES = {
    errno.ENOSPC: "free space on that filesystem, or build elsewhere with -o (the previous repository is untouched)",
    errno.EDQUOT: "free space within your disk quota, or build elsewhere with -o",
    errno.EFBIG: "raise the file size limit (ulimit -f), or build elsewhere with -o",
    errno.ENAMETOOLONG: "use a shorter repository path or model name (at most 255 bytes per path component)",
    errno.ELOOP: "remove the symbolic link loop, or choose another output path with -o",
    errno.EACCES: "choose a path you may write to (-o), or fix its permissions",
    errno.EPERM: "choose a path you may write to (-o), or fix its permissions",
    errno.EROFS: "the filesystem is read-only: build elsewhere with -o",
    errno.EISDIR: "give the path of a file, not of a directory",
}
_NOT_A_DIRECTORY = (errno.EEXIST, errno.ENOTDIR)


def first_line(exc: BaseException, limit: int = 300) -> str:
    """What a third-party exception says, for a one-line user error: its first line, cut at
    `limit` characters (onnxruntime's and torch's messages run to source paths and graph dumps),
    or its type's name when it says nothing."""
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return line if len(line) <= limit else line[:limit] + "..."


def os_error(exc: OSError) -> TritonizeError | None:
    """The user error an OS error on a named path is (one line: the path, what, the fix), or None
    when it is not one we can explain (then it is a bug and keeps its traceback)."""
    if exc.filename is None or (exc.errno not in _OS_ERROR_FIXES and exc.errno not in _NOT_A_DIRECTORY):
        return None
    path = Path(exc.filename)
    if exc.errno in _NOT_A_DIRECTORY:
        # mkdir below a regular file: name the file that is in the way.
        blocker = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
        if blocker is None:
            return None
        return TritonizeError("not a directory, so nothing can be created below it", file=blocker,
                              fix="choose an output path (-o, or the spec's `repository:`) whose parents are "
                                  "directories, or move that file away")
    return TritonizeError(exc.strerror or str(exc), file=path, fix=_OS_ERROR_FIXES[exc.errno])


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
