"""Progress of a training run on stderr: a bar on a terminal, and plain lines at a steady pace
when stderr is a file or a pipe (a bar there would only appear when the run ends)."""

from __future__ import annotations

import time
from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

LINE_EVERY_S = 30.0  # seconds between progress lines when stderr is not a terminal


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


class TrainProgress:
    """``advance(loss)`` once per step, inside ``with``; lines go through ``console``."""

    def __init__(self, console: Console, total: int, step: int, end: int | None = None):
        """``total``: the run's steps; ``step``: where this process starts; ``end``: where it
        stops (``--until``; default ``total``)."""
        self.console, self.total = console, total
        self.end = total if end is None else end
        self.first = self.step = step
        self.bar: Progress | None = None
        if console.is_terminal:
            columns = [
                TextColumn("[progress.description]{task.description}"),
                BarColumn(),
                TextColumn("{task.completed}/{task.total}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                TextColumn("loss {task.fields[loss]:.4f}"),
            ]
            self.bar = Progress(*columns, console=console, transient=False)
            self.task = self.bar.add_task("training", total=total, completed=step, loss=0.0)

    def __enter__(self) -> TrainProgress:
        self.started = self.last_line = time.monotonic()
        if self.bar is not None:
            self.bar.__enter__()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        if self.bar is not None:
            self.bar.__exit__(kind, error, trace)

    def advance(self, loss: float) -> None:
        self.step += 1
        if self.bar is not None:
            self.bar.update(self.task, advance=1, loss=loss)
            return
        now = time.monotonic()
        if self.step == self.first + 1 or now - self.last_line >= LINE_EVERY_S:
            self.last_line = now
            per_step = (now - self.started) / (self.step - self.first)
            left = _duration(per_step * (self.end - self.step))
            self.console.log(
                f"step {self.step}/{self.total} loss {loss:.4f}, {per_step:.2f} s/step, {left} left"
            )
