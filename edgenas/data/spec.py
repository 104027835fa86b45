"""What ``--data`` names: a dataset kind, with a path or (for synthetic data) an image count."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgenas.errors import EdgenasError

KINDS = ("cifar10", "cifar100", "imagefolder", "fashion-mnist", "synthetic")
SYNTHETIC_DEFAULT_N = 512
SYNTHETIC_CLASSES = 10


@dataclass(frozen=True)
class DataSpec:
    """What ``--data`` named: a kind, an optional path, and for ``synthetic`` an image count."""

    kind: str
    path: Path | None = None
    count: int | None = None

    def __str__(self) -> str:
        if self.kind == "synthetic":
            return f"synthetic:{self.count or SYNTHETIC_DEFAULT_N}"
        return f"{self.kind}:{self.path}" if self.path is not None else self.kind


def parse_data_spec(text: str) -> DataSpec:
    """``cifar10[:DIR]``, ``cifar100[:DIR]``, ``imagefolder:PATH``, ``fashion-mnist[:DIR]``, ``synthetic[:N]``."""
    text = text.strip()
    kind, _, rest = text.partition(":")
    kind = kind.lower()
    if kind not in KINDS:
        raise EdgenasError(f"unknown dataset {text!r}",
                           "use cifar10[:DIR], cifar100[:DIR], imagefolder:PATH, fashion-mnist[:DIR] or synthetic[:N]")
    if kind == "synthetic":
        if not rest:
            return DataSpec("synthetic", count=SYNTHETIC_DEFAULT_N)
        if not rest.isdigit() or int(rest) < SYNTHETIC_CLASSES * 2:
            raise EdgenasError(f"synthetic image count {rest!r} is not a number >= {SYNTHETIC_CLASSES * 2}",
                               "use synthetic:N, e.g. synthetic:512")
        return DataSpec("synthetic", count=int(rest))
    if kind == "imagefolder" and not rest:
        raise EdgenasError("imagefolder needs a path", "use imagefolder:PATH (a folder or a .tar/.tar.gz)")
    return DataSpec(kind, Path(rest).expanduser() if rest else None)
