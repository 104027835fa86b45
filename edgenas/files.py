"""Versioned JSON files: atomic writes and validating reads.

Every file edgenas writes carries ``"format"`` and ``"version"``; every reader checks both and
turns any problem into an :class:`EdgenasError` naming the file, the field and the fix.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from edgenas.errors import EdgenasError


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` only if the block succeeds."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise EdgenasError(
            f"cannot write {path}: {e.strerror or e}", "choose a writable output path"
        ) from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp makes files private (0600); give the result the permissions a plain open() would
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_bytes_atomic(path: str | Path, writer: Callable[[BinaryIO], None]) -> Path:
    """Write through ``writer(fileobj)`` to a temp file, then rename over ``path``."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        writer(f)
    return Path(path)


def write_text_atomic(path: str | Path, text: str) -> Path:
    return write_bytes_atomic(path, lambda f: f.write(text.encode("utf-8")))


def write_json(path: str | Path, fmt: str, version: int, payload: dict[str, Any]) -> Path:
    """Write ``payload`` with its format name and version first, atomically."""
    doc = {"format": fmt, "version": version, **payload}
    return write_text_atomic(path, json.dumps(doc, indent=2, sort_keys=False) + "\n")


def read_json(path: str | Path, fmt: str, version: int | tuple[int, ...], what: str) -> dict[str, Any]:
    """Read a JSON object written by :func:`write_json`, checking its format and version.

    ``what`` names the kind of file in messages ("profile", "search space", ...); ``version`` may
    list every version the reader still understands.
    """
    path = Path(path)
    if not path.exists():
        raise EdgenasError(f"{what} file {path} does not exist", "check the path or create it first")
    if path.is_dir():
        raise EdgenasError(f"{what} file {path} is a directory", f"pass the path of a {fmt} JSON file")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise EdgenasError(f"{what} file {path} is not text", f"pass a {fmt} JSON file") from None
    except json.JSONDecodeError as e:
        raise EdgenasError(
            f"{what} file {path} is not valid JSON (line {e.lineno}: {e.msg})",
            "fix or regenerate the file",
        ) from None
    if not isinstance(doc, dict):
        raise EdgenasError(f"{what} file {path} does not hold a JSON object", f"pass a {fmt} file")
    if doc.get("format") != fmt:
        raise EdgenasError(
            f"{path}: field 'format' is {doc.get('format')!r}, expected {fmt!r}",
            f"pass a {what} file written by edgenas",
        )
    versions = version if isinstance(version, tuple) else (version,)
    if doc.get("version") not in versions:
        raise EdgenasError(
            f"{path}: field 'version' is {doc.get('version')!r}, this edgenas reads version "
            f"{' or '.join(map(str, versions))}",
            "regenerate the file with this edgenas version",
        )
    return doc


def require(doc: dict[str, Any], key: str, kind: type | tuple[type, ...], path: str | Path) -> Any:
    """Fetch ``doc[key]`` and check its type, naming the file and field when it is wrong."""
    if key not in doc:
        raise EdgenasError(f"{path}: field {key!r} is missing", "regenerate the file with edgenas")
    value = doc[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    # bool is an int in Python; a JSON true where a number belongs is still wrong
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        name = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise EdgenasError(
            f"{path}: field {key!r} should be {name}, got {type(value).__name__}",
            "fix the field or regenerate the file",
        )
    return value


def ensure_writable(path: str | Path, what: str = "output") -> Path:
    """Fail early (before a long run) if ``path`` cannot be written; creates its folder."""
    path = Path(path)
    if path.is_dir():
        raise EdgenasError(f"{what} path {path} is a directory", "pass a file path")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=path.parent)
    except OSError as e:
        raise EdgenasError(f"cannot write {what} {path}: {e.strerror or e}",
                           "choose a writable output path") from None
    os.close(fd)
    os.unlink(tmp)
    return path
