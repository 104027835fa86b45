"""Versioned JSON files: atomic writes and validating reads.

Every file edgenas writes carries ``"format"`` and ``"version"``; every reader checks both and
turns any problem into an :class:`EdgenasError` naming the file, the field and the fix.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Self

from edgenas import __version__
from edgenas.errors import EdgenasError


def _temp_beside(path: Path, suffix: str, what: str) -> Path:
    """An empty hidden file in ``path``'s folder (created if need be), or one line saying why not."""
    if path.is_dir():
        raise EdgenasError(f"cannot write {what}{path}: it is a directory", "pass a file path")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    except OSError as e:
        raise EdgenasError(f"cannot write {what}{path}: {e.strerror or e}", "choose a writable output path") from None
    os.close(fd)
    return Path(tmp)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` only if the block succeeds."""
    path = Path(path)
    tmp_path = _temp_beside(path, ".tmp", "")
    try:
        yield tmp_path
        # mkstemp makes files private (0600); give the result the permissions a plain open() would
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        try:
            os.replace(tmp_path, path)
        except OSError as e:  # e.g. a directory appeared at the path meanwhile
            raise EdgenasError(f"cannot write {path}: {e.strerror or e}", "choose a writable output path") from None
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


def read_json(path: str | Path, fmt: str, version: int | tuple[int, ...], what: str, *,
              header_optional: bool = False) -> dict[str, Any]:
    """Read a JSON object written by :func:`write_json`, checking its format and version.

    ``what`` names the kind of file in messages ("profile", "search space", ...); ``version`` may
    list every version the reader still understands. ``header_optional`` accepts a file with
    neither field (written by hand); one present is checked.
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
    if header_optional and "format" not in doc and "version" not in doc:
        return doc
    versions = version if isinstance(version, tuple) else (version,)
    if doc.get("format") != fmt:
        raise EdgenasError(
            f"{path}: field 'format' is {doc.get('format')!r}, expected {fmt!r}",
            f"pass a {what} file written by edgenas, or add \"format\": \"{fmt}\", \"version\": {max(versions)} "
            "to a hand-made one",
        )
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
    _temp_beside(path, ".probe", f"{what} ").unlink()
    return path


# --- run folders: an owner marker and a lock the OS releases ----------------------------------------

RUN_MARKER = ".edgenas-run.json"
RUN_LOCK = ".edgenas-run.lock"
MARKER_FORMAT = "edgenas.run-folder"
MARKER_VERSION = 1
#: Leftovers of writes a kill interrupted: atomic_path's temps and ensure_writable's probes.
_TEMP_GLOBS = (".*.tmp", ".*.probe")


class RunFolderLock:
    """The open lock file of a claimed run folder; the OS drops the lock when the process dies."""

    def __init__(self, root: Path, fd: int, created: bool = False,
                 worth_keeping: Callable[[Path], bool] | None = None) -> None:
        self.root, self._fd, self.created = root, fd, created
        self.worth_keeping = worth_keeping or (lambda _root: False)

    @property
    def held(self) -> bool:
        return self._fd >= 0

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = -1

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        if exc_type is not None and self.created and not self.worth_keeping(self.root):
            # A run that failed before producing anything to continue from leaves no folder behind.
            # The folder was empty when claimed and the lock is still held, so all in it is ours.
            shutil.rmtree(self.root, ignore_errors=True)
        self.release()


def _marker_kind(root: Path) -> str | None:
    """The kind named by the folder's marker, or None when the folder has no marker."""
    path = root / RUN_MARKER
    if not path.exists():
        return None
    doc = read_json(path, MARKER_FORMAT, MARKER_VERSION, "run-folder marker")
    return str(require(doc, "kind", str, path))


def _owner_kind(root: Path, legacy: Callable[[Path], str | None] | None) -> str | None:
    kind = _marker_kind(root)
    if kind is None and legacy is not None:
        kind = legacy(root)  # a run written before folders carried a marker
    return kind


def _visible_entries(root: Path) -> list[str]:
    leftovers = {p.name for g in _TEMP_GLOBS for p in root.glob(g)}
    return sorted(p.name for p in root.iterdir() if p.name not in leftovers | {RUN_MARKER, RUN_LOCK})


def _lock(root: Path, kind: str) -> RunFolderLock:
    import fcntl

    fd = os.open(root / RUN_LOCK, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 64).decode("ascii", "replace").strip() or "?"
        os.close(fd)
        raise EdgenasError(f"run folder {root} is in use by another edgenas {kind} (pid {holder})",
                           "wait for it to finish, or choose another --out folder") from None
    # The pid is only for the message above; the lock itself is the flock, never the file's content.
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode("ascii"))
    return RunFolderLock(root, fd)


def remove_leftover_temps(root: Path) -> list[Path]:
    """Delete temp files that killed writes left in ``root`` and its plain subfolders (not in
    nested run folders: those clean themselves when their own run claims them)."""
    removed: list[Path] = []
    stack = [root]
    while stack:
        folder = stack.pop()
        for g in _TEMP_GLOBS:
            for p in folder.glob(g):
                if p.is_file():
                    p.unlink(missing_ok=True)
                    removed.append(p)
        stack.extend(d for d in folder.iterdir() if d.is_dir() and not (d / RUN_MARKER).exists())
    return removed


def claim_run_folder(root: str | Path, kind: str, *, legacy: Callable[[Path], str | None] | None = None,
                     worth_keeping: Callable[[Path], bool] | None = None) -> RunFolderLock:
    """Make ``root`` this process's ``kind`` run folder for as long as the returned lock is held.

    An empty or missing folder is created and marked; a folder marked (or, via ``legacy``,
    recognised) as a ``kind`` run is taken over; any other non-empty folder is refused, so a run
    never mixes its files with the user's or another run's. The lock is an ``flock``: a second
    live writer is refused, and a killed one leaves nothing stale. Leftover temp files of killed
    writes are removed once the lock is held. Used as a context manager, a folder this call
    created is removed again if the block fails before ``worth_keeping(root)`` holds (e.g. before
    a first checkpoint).
    """
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise EdgenasError(f"run folder {root} is a file", "choose another --out folder")
    try:
        created = not root.exists() or not any(root.iterdir())
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise EdgenasError(f"cannot create run folder {root}: {e.strerror or e}",
                           "choose a writable --out folder") from None
    if not os.access(root, os.W_OK | os.X_OK):
        raise EdgenasError(f"cannot write in run folder {root}: permission denied", "choose a writable --out folder")
    owner = _owner_kind(root, legacy)
    if owner is not None and owner != kind:
        raise EdgenasError(f"{root} is the folder of a {owner} run, not of a {kind} run",
                           f"pass the folder of a {kind} run, or choose another --out folder")
    if owner is None:
        entries = _visible_entries(root)
        if entries:
            shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
            raise EdgenasError(f"{root} is not empty and is not an edgenas run folder (it holds {shown})",
                               "choose a new or empty --out folder; edgenas never writes over other files")
    lock = _lock(root, kind)
    lock.created, lock.worth_keeping = created, worth_keeping or lock.worth_keeping
    try:
        if owner is None:
            write_json(root / RUN_MARKER, MARKER_FORMAT, MARKER_VERSION,
                       {"kind": kind, "made_by": f"edgenas {__version__}"})
        remove_leftover_temps(root)
    except BaseException:
        lock.release()
        raise
    return lock
