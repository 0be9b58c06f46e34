"""Terminal output for the CLI: rich tables and progress bars on a terminal, plain text otherwise.

Every command prints through one :class:`Output`. On a terminal it draws rich tables, a spinner
per stage and progress bars with an ETA. When its stream is not a terminal (a pipe, a log file,
a test) or with ``--quiet`` it is *plain*: tables are aligned text rows without colour or box
drawing and there are no bars, so scripts and logs can read it. With ``--json`` stdout carries
the result alone and everything else goes to stderr. ``FORCE_COLOR`` / ``TTY_COMPATIBLE`` (rich's
environment switches) make a pipe count as a terminal.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import time
from typing import IO, Any, Callable, Iterator, Sequence, Union

from rich.console import Console
from rich.live import Live
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

__all__ = ["Output", "Column", "ProgressFn", "plain_table", "add_output_flags"]

log = logging.getLogger(__name__)

#: what the library calls after each step: ``progress(done, total)``
ProgressFn = Callable[[int, int], None]
#: a table column: a header (left-aligned) or ``(header, "left" | "right")``
Column = Union[str, tuple[str, str]]

_GAP = "  "  # between plain columns


def _column(col: Column) -> tuple[str, str]:
    header, justify = (col, "left") if isinstance(col, str) else col
    if justify not in ("left", "right"):
        raise ValueError(f"column {header!r}: justify {justify!r} must be 'left' or 'right'")
    return header, justify


def plain_table(columns: Sequence[Column], rows: Sequence[Sequence[Any]]) -> list[str]:
    """``rows`` under ``columns`` as aligned text lines (no trailing spaces)."""
    cols = [_column(c) for c in columns]
    cells = [[str(v) for v in row] for row in rows]
    for row in cells:
        if len(row) != len(cols):
            raise ValueError(f"a row has {len(row)} cells for {len(cols)} columns: {row}")
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, (h, _) in enumerate(cols)]

    def line(values: Sequence[str]) -> str:
        return _GAP.join(v.rjust(w) if j == "right" else v.ljust(w)
                         for v, w, (_, j) in zip(values, widths, cols)).rstrip()

    return [line([h for h, _ in cols]), *(line(r) for r in cells)]


def add_output_flags(parser: argparse.ArgumentParser, json_help: str) -> None:
    """``--json`` (``json_help`` says what it prints) and ``--quiet`` for a subcommand."""
    parser.add_argument("--json", action="store_true",
                        help=json_help + " on stdout (all else goes to stderr)")
    parser.add_argument("--quiet", action="store_true",
                        help="plain output, no progress bars or spinners")


class Output:
    """How the CLI prints: lines, tables, progress, stage spinners and JSON results.

    ``quiet``: plain, and no progress at all. ``json_output``: the result (``json()``) is the
    only thing on stdout; lines, tables and progress go to stderr. ``stdout``/``stderr`` default
    to the streams of the moment (bound now, so a later redirect of ``sys.stderr`` - torch's
    chatter is swallowed that way - does not swallow ours). ``force_terminal`` overrides the
    detection (tests), ``width`` the terminal width.
    """

    def __init__(self, *, quiet: bool = False, json_output: bool = False,
                 stdout: IO[str] | None = None, stderr: IO[str] | None = None,
                 force_terminal: bool | None = None, width: int | None = None) -> None:
        self.quiet = quiet
        self.json_output = json_output
        self.stdout = stdout if stdout is not None else sys.stdout
        self.stderr = stderr if stderr is not None else sys.stderr
        self.stream = self.stderr if json_output else self.stdout
        self.console = Console(file=self.stream, force_terminal=force_terminal, width=width,
                               highlight=False, emoji=False)
        self.plain = quiet or not self.console.is_terminal

    def line(self, text: str = "", style: str | None = None) -> None:
        """One line of text (``style``, e.g. "bold", on a terminal only)."""
        if self.plain:
            print(text, file=self.stream, flush=True)
        else:
            self.console.print(Text(text, style=style or ""), soft_wrap=True)

    def table(self, columns: Sequence[Column], rows: Sequence[Sequence[Any]],
              title: str | None = None) -> None:
        """A table: box-drawn on a terminal, aligned plain rows otherwise."""
        if self.plain:
            if title:
                print(title, file=self.stream)
            for text in plain_table(columns, rows):
                print(text, file=self.stream)
            self.stream.flush()
            return
        table = Table(title=title, title_justify="left", header_style="bold")
        for header, justify in map(_column, columns):
            table.add_column(header, justify="right" if justify == "right" else "left")
        for row in rows:
            table.add_row(*(Text(str(v)) for v in row))
        self.console.print(table)

    def json(self, obj: Any) -> None:
        """The command's result as JSON on stdout (always plain: it is for programs)."""
        print(json.dumps(obj, indent=2), file=self.stdout, flush=True)

    @contextlib.contextmanager
    def progress(self, description: str, total: int | None = None) -> Iterator[ProgressFn]:
        """Yield a ``progress(done, total)`` callback: a bar with an ETA on a terminal; when
        plain, one line on stderr at the end (none with ``quiet``)."""
        if self.plain:
            state = {"done": 0, "total": total or 0}

            def record(done: int, of: int) -> None:
                state["done"], state["total"] = done, of

            start = time.monotonic()
            yield record
            if not self.quiet:
                print(f"{description}: {state['done']}/{state['total']} in "
                      f"{time.monotonic() - start:.1f} s", file=self.stderr, flush=True)
            return
        # redrawn by the callback only: a refresh thread would compete for the GIL with the
        # timings being measured (profiling). stderr is left alone: where the caller swallows
        # torch's chatter (a redirected sys.stderr) rich would otherwise print it
        bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                       TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                       console=self.console, auto_refresh=False, redirect_stderr=False)
        with bar:
            task = bar.add_task(description, total=total)
            bar.refresh()

            def update(done: int, of: int) -> None:
                bar.update(task, completed=done, total=of, refresh=True)

            yield update

    @contextlib.contextmanager
    def status(self, text: str) -> Iterator[None]:
        """A spinner with ``text`` while a stage runs, on a terminal; nothing when plain."""
        if self.plain:
            yield
            return
        spinner = Spinner("dots", Text(text), style="green")
        with Live(spinner, console=self.console, transient=True, refresh_per_second=12.5,
                  redirect_stderr=False):  # as in progress(): stderr may be torch's, swallowed
            yield
