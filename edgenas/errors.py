"""The one error type the CLI turns into a single stderr line and exit code 2."""

from __future__ import annotations

import re


class EdgenasError(Exception):
    """A problem the user can fix: ``message`` says what is wrong, ``hint`` how to fix it."""

    exit_code = 2

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message

    def one_line(self) -> str:
        """The form printed on stderr: never more than one line."""
        return " ".join(f"error: {self}".split())


class VerificationError(EdgenasError):
    """A produced artefact failed its own check (e.g. ONNX parity): exit code 1, not 2."""

    exit_code = 1


def out_of_memory(e: BaseException) -> EdgenasError | None:
    """An allocation failure (host or GPU) as a user error naming the size, or None for any other
    exception. Sizes come from options (channels, cells, batch, shapes), so the user can fix them."""
    text = str(e)
    if not (isinstance(e, MemoryError) or "can't allocate memory" in text or "out of memory" in text.lower()):
        return None
    size = re.search(r"allocate (\d+) bytes", text)
    what = f"{int(size.group(1)) / 2**30:,.1f} GiB" if size else "memory"
    return EdgenasError(f"out of memory: could not allocate {what}",
                        "use smaller --channels, --layers, --batch-size or shapes")
