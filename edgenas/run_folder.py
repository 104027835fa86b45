"""A run folder's layout (config, checkpoints, history, figures) and its per-epoch history file."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgenas.errors import EdgenasError
from edgenas.files import RunFolderLock, claim_run_folder, write_json, write_text_atomic

RUN_FORMAT = "edgenas.run"
RUN_VERSION = 1


class History:
    """One JSON object per epoch in a JSON-lines file, rewritten whole through temp+rename."""

    def __init__(self, path: str | Path, records: Iterable[dict[str, Any]] = ()) -> None:
        self.path = Path(path)
        self.records: list[dict[str, Any]] = list(records)

    def append(self, record: dict[str, Any], *, write: bool = True) -> None:
        self.records.append(record)
        if write:
            self.write()

    def write(self) -> None:
        write_text_atomic(self.path, "".join(json.dumps(r, sort_keys=False) + "\n" for r in self.records))

    @classmethod
    def read(cls, path: str | Path) -> History:
        path = Path(path)
        if not path.exists():
            raise EdgenasError(f"history file {path} does not exist", "check the run folder")
        records = []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise EdgenasError(f"{path}: line {n} is not valid JSON ({e.msg})",
                                   "the run folder is damaged; rerun with --resume to rewrite it") from None
        return cls(path, records)

    def column(self, key: str) -> list[Any]:
        return [r.get(key) for r in self.records]


@dataclass(frozen=True)
class RunDir:
    """A run folder: ``config.json``, ``last.pt``, ``best.pt``, ``history.jsonl``, ``figures/``."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def last(self) -> Path:
        return self.root / "last.pt"

    @property
    def best(self) -> Path:
        return self.root / "best.pt"

    @property
    def history(self) -> Path:
        return self.root / "history.jsonl"

    @property
    def figures(self) -> Path:
        return self.root / "figures"

    def check(self, *, resume: bool, what: str) -> None:
        """Refuse to overwrite an earlier run by accident, and to resume a run that is not there.

        Read-only, so every rank of a distributed job can run it and fail together.
        """
        if resume and not self.last.exists():
            raise EdgenasError(f"cannot resume: {self.last} does not exist",
                               f"start the {what} without --resume, or pass the --out folder of the run")
        if not resume and self.last.exists():
            raise EdgenasError(f"{self.root} already holds a {what} ({self.last.name})",
                               "pass --resume to continue it, or choose another --out folder")
        if self.root.exists() and not self.root.is_dir():
            raise EdgenasError(f"run folder {self.root} is a file", "choose another --out folder")

    def claim(self, kind: str) -> RunFolderLock:
        """Own the folder for this process's ``kind`` run (see :func:`edgenas.files.claim_run_folder`);
        call on the writing rank only, before any data is loaded."""
        return claim_run_folder(self.root, kind, legacy=_legacy_kind,
                                worth_keeping=lambda root: (root / "last.pt").exists())

    def write_config(self, kind: str, config: Mapping[str, Any]) -> Path:
        return write_json(self.config, RUN_FORMAT, RUN_VERSION, {"kind": kind, "config": dict(config)})


def _legacy_kind(root: Path) -> str | None:
    """The kind of a run folder written before folders carried a marker (from its config.json)."""
    try:
        doc = json.loads((root / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if isinstance(doc, dict) and doc.get("format") == RUN_FORMAT and isinstance(doc.get("kind"), str):
        return str(doc["kind"])
    return None
