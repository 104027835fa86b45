"""The progress display of a long loop: an epoch bar, a batch bar, one line per epoch."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any


class LoopProgress:
    """A rich progress display with an epoch bar and a batch bar; silent when ``quiet``.

    Used as a context manager; ``batches(it, total, label)`` wraps an iterable and advances the
    batch bar, ``epoch_done(summary)`` advances the epoch bar and prints one line.
    """

    def __init__(self, epochs: int, *, quiet: bool, start: int = 0, label: str = "epoch",
                 on_batch: Callable[[], None] | None = None) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.quiet = quiet
        self.console = Console(stderr=True, quiet=quiet, highlight=False)
        self._progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                  TextColumn("{task.fields[info]}"), TimeRemainingColumn(),
                                  console=self.console, disable=quiet, transient=False)
        self._epochs = self._progress.add_task(label, total=epochs, completed=start, info="")
        self._batch = self._progress.add_task("  batch", total=1, info="", visible=False)
        self._on_batch = on_batch

    def __enter__(self) -> LoopProgress:
        self._progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._progress.__exit__(*exc)

    def batches(self, items: Iterable[Any], total: int, label: str = "train") -> Iterator[Any]:
        self._progress.reset(self._batch, total=total, description=f"  {label}", visible=True, info="")
        for item in items:
            yield item
            self._progress.advance(self._batch)
            if self._on_batch is not None:
                self._on_batch()

    def epoch_done(self, summary: str) -> None:
        self._progress.update(self._batch, visible=False)
        self._progress.advance(self._epochs)
        self._progress.console.print(summary, markup=False, highlight=False)

