"""The one object through which tritonize prints: messages, tables, progress for long steps."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table


class Terminal:
    def __init__(self, *, quiet: bool = False, stderr: bool = False):
        self.quiet = quiet
        # Wide, highlight-free console so one-line errors stay one line and tests can pin output.
        self.out = Console(stderr=stderr, highlight=False, soft_wrap=True)
        self.err = Console(stderr=True, highlight=False, soft_wrap=True)

    def info(self, message: str) -> None:
        if not self.quiet:
            self.out.print(message, markup=False)

    def step(self, message: str) -> None:
        if not self.quiet:
            self.out.print(f"[bold cyan]›[/] {_escape(message)}")

    def success(self, message: str) -> None:
        if not self.quiet:
            self.out.print(f"[bold green]✓[/] {_escape(message)}")

    def warning(self, message: str) -> None:
        self.err.print(f"[bold yellow]warning:[/] {_escape(message)}")

    def error(self, message: str) -> None:
        self.err.print(f"[bold red]error:[/] {_escape(message)}")

    def table(self, title: str, columns: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
        """A boxed table on a terminal; elsewhere (CI logs, pipes) a markdown table, never truncated
        to a guessed width."""
        if self.quiet:
            return
        if not self.out.is_terminal:
            self.out.print(f"{title}\n\n{markdown_table(columns, rows)}", markup=False, crop=False)
            return
        table = Table(title=title, title_justify="left")
        for column in columns:
            table.add_column(column)
        for row in rows:
            table.add_row(*[str(cell) for cell in row])
        self.out.print(table)

    @contextlib.contextmanager
    def status(self, message: str) -> Iterator[None]:
        """A spinner with elapsed time around one long step (conversion, server start, ...)."""
        if self.quiet or not self.out.is_terminal:
            self.step(message)
            yield
            return
        with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                      console=self.out, transient=True) as progress:
            progress.add_task(message, total=None)
            yield
        self.step(message)

    @contextlib.contextmanager
    def progress(self, message: str, total: int) -> Iterator[_Advance]:
        """A bar for a step with a known number of parts (models built, perf points measured)."""
        if self.quiet or not self.out.is_terminal:
            self.step(message)
            yield _Advance(None, None)
            return
        with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                      TimeElapsedColumn(), console=self.out, transient=True) as progress:
            task = progress.add_task(message, total=total)
            yield _Advance(progress, task)
        self.step(message)


class _Advance:
    def __init__(self, progress, task):
        self._progress, self._task = progress, task

    def __call__(self, description: str | None = None) -> None:
        if self._progress is not None:
            self._progress.advance(self._task)
            if description:
                self._progress.update(self._task, description=description)


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub-flavoured markdown table; `|` inside cells is escaped."""
    def cell(value: object) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(c) for c in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


default_terminal = Terminal()
