"""Checkpoint files: written atomically, read back only when they belong to the run asking."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from edgenas.errors import EdgenasError
from edgenas.files import atomic_path

CHECKPOINT_FORMAT = "edgenas.checkpoint"
CHECKPOINT_VERSION = 1
#: Identity fields added after runs were already being written, with the value every run written
#: before them had: such a run resumes when it is asked for that value (runs before ``--threads``
#: ran at torch's default thread count, policy 0).
IMPLIED_BEFORE_ADDED: dict[str, Any] = {"threads": 0}


def save_checkpoint(path: str | Path, state: Mapping[str, Any]) -> Path:
    """``torch.save`` to a temp file beside ``path``, then rename: a kill never leaves half a file."""
    path = Path(path)
    doc = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **state}
    with atomic_path(path) as tmp:
        torch.save(doc, tmp)
    return path


def _describe(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str) if not isinstance(value, str) else value
    return text if len(text) <= 60 else text[:57] + "..."


def load_checkpoint(path: str | Path, *, expect: Mapping[str, Any] | None = None, what: str = "checkpoint",
                    map_location: torch.device | str = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` and check it belongs to this run.

    ``expect`` holds the identity of the run being resumed (genotype, setting, method, space, ...):
    every key must equal the checkpoint's ``config[key]``, else the error names the first field that
    differs, so a checkpoint from another run is never silently continued.
    """
    path = Path(path)
    if not path.exists():
        raise EdgenasError(f"{what} {path} does not exist", "check the run folder, or start without --resume")
    try:
        doc = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # zip/pickle/EOF errors all mean the same thing to the user
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise EdgenasError(f"{what} {path} is corrupt or not a checkpoint ({reason[:120]})",
                           "delete it and restart the run, or resume from another checkpoint") from None
    if not isinstance(doc, dict) or doc.get("format") != CHECKPOINT_FORMAT:
        raise EdgenasError(f"{what} {path} is not an edgenas checkpoint",
                           "pass a last.pt/best.pt written by edgenas")
    if doc.get("version") != CHECKPOINT_VERSION:
        raise EdgenasError(f"{what} {path} has version {doc.get('version')!r}, this edgenas reads "
                           f"{CHECKPOINT_VERSION}", "restart the run with this edgenas version")
    config = doc.get("config", {})
    for key, want in (expect or {}).items():
        have = config.get(key, IMPLIED_BEFORE_ADDED.get(key, "<absent>"))
        diff = first_difference(canonical(have), canonical(want), key)
        if diff is not None:
            where, have, asked = diff
            raise EdgenasError(
                f"{what} {path} was made with {where}={_describe(have)}, but this run asks for "
                f"{where}={_describe(asked)}",
                "resume with the same settings, or choose a new --out folder for a new run",
            )
    return doc


def first_difference(a: Any, b: Any, where: str) -> tuple[str, Any, Any] | None:
    """The first leaf where two JSON values differ, as (dotted path, a's value, b's value)."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            d = first_difference(a.get(k, "<absent>"), b.get(k, "<absent>"), f"{where}.{k}")
            if d is not None:
                return d
        return None
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            d = first_difference(x, y, f"{where}[{i}]")
            if d is not None:
                return d
        return None
    return None if a == b else (where, a, b)


def canonical(value: Any) -> Any:
    """JSON round trip so tuples and lists (and int/float keys) compare as they are stored."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))
