"""Progress for long work: a rich bar on a terminal, plain lines in logs (CI, a pipe)."""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from typing import Iterator, TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

LOG_EVERY_S = 10.0  # in a log: a line when this long has passed since the last (or the start)


class _Bar:
    def __init__(self, progress: Progress | None, task: int | None) -> None:
        self._progress, self._task = progress, task

    def advance(self, status: str = "") -> None:
        if self._progress is not None:
            self._progress.update(self._task, advance=1, status=status)


class _LogLines(_Bar):
    """Where no terminal shows a bar: ``description: done/total (elapsed) status`` lines, one
    per ``LOG_EVERY_S`` seconds, and the last step's once any was written (short work is
    silent)."""

    def __init__(self, description: str, total: int, stream: TextIO) -> None:
        super().__init__(None, None)
        self._description, self._total, self._stream = description, total, stream
        self._done, self._started = 0, time.monotonic()
        self._last_line: float | None = None

    def advance(self, status: str = "") -> None:
        self._done += 1
        now = time.monotonic()
        since = self._started if self._last_line is None else self._last_line
        due = now - since >= LOG_EVERY_S
        if not due and not (self._done == self._total and self._last_line is not None):
            return
        self._last_line = now
        line = f"{self._description}: {self._done}/{self._total} ({now - self._started:.0f} s)"
        print(f"{line} {status}".rstrip(), file=self._stream, flush=True)


@contextmanager
def progress_bar(description: str, total: int, enabled: bool = True) -> Iterator[_Bar]:
    """A bar of ``total`` steps; ``bar.advance(status)`` moves it and shows a status line.
    On standard error: a bar when it is a terminal, else a line every ``LOG_EVERY_S`` s."""
    if not enabled:
        yield _Bar(None, None)
        return
    console = Console(stderr=True)
    if not console.is_terminal:
        yield _LogLines(description, total, sys.stderr)
        return
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), TextColumn("{task.fields[status]}"),
                        console=console, transient=True)
    with progress:
        yield _Bar(progress, progress.add_task(description, total=total, status=""))
