"""Pieces shared by the search and train loops: seeds, RNG state, checkpoints, history, run folders,
progress, top-k accuracy, the one evaluation loop and the epoch loop with exact resume.

Exact resume (bitwise on CPU) rests on three things kept here in one place:

* the data order and augmentation of epoch ``e`` are a pure function of ``(seed, epoch, rank)``
  (see :mod:`edgenas.data`), so nothing about a loader needs saving;
* every other source of randomness (dropout/drop-path masks, Gumbel noise, ...) draws from the
  global generators, whose states (torch CPU, every CUDA device, numpy, Python) are captured at the
  end of each epoch and restored on ``--resume``;
* every stateful object (model, optimisers, schedulers, grad scaler, architecture weights) is saved
  by ``state_dict`` at the same point, in an atomically written checkpoint.

Distributed runs (``torchrun``) are detected from the environment; only rank 0 writes files, but the
RNG states of all ranks are gathered into the checkpoint so each rank resumes its own stream.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from edgenas.device import keep_cpu_memory
from edgenas.distributed import DistInfo, all_reduce_sum, gather_objects
from edgenas.errors import EdgenasError
from edgenas.files import RunFolderLock, atomic_path, claim_run_folder, write_json, write_text_atomic
from edgenas.threads import thread_policy
from edgenas.values import check_seed

CHECKPOINT_FORMAT = "edgenas.checkpoint"
CHECKPOINT_VERSION = 1
RUN_FORMAT = "edgenas.run"
RUN_VERSION = 1


# --- seeds and RNG state -----------------------------------------------------------------------

def seed_everything(seed: int) -> None:
    """Seed torch (CPU and every CUDA device), numpy and Python's ``random``."""
    check_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds all CUDA devices


def capture_rng_state() -> dict[str, Any]:
    """The global generators' states, in types ``torch.load(weights_only=True)`` accepts."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Put back what :func:`capture_rng_state` returned."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


# --- checkpoints -------------------------------------------------------------------------------

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
        diff = first_difference(canonical(config.get(key, "<absent>")), canonical(want), key)
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


# --- history and run folder --------------------------------------------------------------------

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


# --- progress ----------------------------------------------------------------------------------

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


def epoch_progress(epochs: int, *, quiet: bool, start: int = 0, label: str = "epoch",
                   on_batch: Callable[[], None] | None = None) -> LoopProgress:
    """The progress display of a long loop (respects ``--quiet``); ``on_batch`` runs after each batch."""
    return LoopProgress(epochs, quiet=quiet, start=start, label=label, on_batch=on_batch)


# --- metrics and the one evaluation loop -------------------------------------------------------

def topk_correct(logits: torch.Tensor, target: torch.Tensor, topk: tuple[int, ...] = (1, 5)) -> torch.Tensor:
    """How many samples have their target among the top k logits, for each k (a device tensor:
    no host synchronisation inside a training loop). k beyond the class count means every class."""
    maxk = min(max(topk), logits.size(1))
    hit = logits.topk(maxk, dim=1).indices.eq(target.unsqueeze(1))  # (B, maxk)
    return torch.stack([hit[:, : min(k, maxk)].any(dim=1).sum() for k in topk])


def accuracy(logits: torch.Tensor, target: torch.Tensor, topk: tuple[int, ...] = (1, 5)) -> list[float]:
    """Top-k accuracy in percent for each k."""
    n = max(target.numel(), 1)
    return [c * 100.0 / n for c in topk_correct(logits, target, topk).tolist()]


class Loader(Protocol):
    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...
    def __len__(self) -> int: ...


@dataclass(frozen=True)
class Precision:
    """Autocast dtype (None = fp32) and memory format for forward passes on ``device``."""

    amp: torch.dtype | None = None
    channels_last: bool = False

    def autocast(self, device: torch.device) -> Any:
        return torch.autocast(device.type, dtype=self.amp, enabled=self.amp is not None)


def evaluate(model: nn.Module, loader: Loader, device: torch.device, *,
             criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
             precision: Precision = Precision(), progress: LoopProgress | None = None,
             label: str = "test") -> dict[str, float]:
    """Loss, top-1 and top-5 (percent) of ``model`` over ``loader``: the one inference loop.

    Sums are reduced over ranks when distributed (each rank sees a disjoint shard), so every rank
    returns the figure for the whole set.
    """
    criterion = criterion or nn.functional.cross_entropy
    was_training = model.training
    model.eval()
    meter = RunningMean()
    batches: Iterable[Any] = progress.batches(loader, len(loader), label) if progress else loader
    with torch.no_grad():
        for x, y in batches:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if precision.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with precision.autocast(device):
                logits = model(x)
            logits = logits.float()
            top1, top5 = topk_correct(logits, y, (1, 5))
            meter.add(y.numel(), loss=criterion(logits, y) * y.numel(), top1=top1 * 100.0, top5=top5 * 100.0)
    model.train(was_training)
    return meter.means(device)


class RunningMean:
    """Per-sample means of a few named sums over an epoch, reduced over ranks at the end.

    ``add(n, name=sum_over_the_n_samples, ...)`` takes device tensors as they are, so a training
    loop never waits on the host; the one synchronisation happens in :meth:`means`.
    """

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor | float] = {}
        self.n = 0

    def add(self, n: int, **sums: torch.Tensor | float) -> None:
        for k, v in sums.items():
            v = v.detach().double() if isinstance(v, torch.Tensor) else float(v)
            self.sums[k] = self.sums[k] + v if k in self.sums else v
        self.n += n

    def means(self, device: torch.device) -> dict[str, float]:
        keys = list(self.sums)
        totals = all_reduce_sum([float(self.sums[k]) for k in keys] + [float(self.n)], device)
        n = max(totals[-1], 1.0)
        return {k: totals[i] / n for i, k in enumerate(keys)}


# --- keeping a run's files consistent ------------------------------------------------------------

def repair_best(run: RunDir, last: Mapping[str, Any]) -> bool:
    """Make ``best.pt`` hold the epoch that ``last.pt`` names as best; True if it was rewritten.

    A kill while ``best.pt`` was being written (by an edgenas that wrote ``last.pt`` first) left an
    older ``best.pt`` beside a ``last.pt`` whose best is its own epoch: copy ``last.pt`` over it.
    """
    want = (last.get("best") or {}).get("epoch")
    if want is None:
        return False
    have: int | None = None
    if run.best.exists():
        try:
            have = int(load_checkpoint(run.best, what="best checkpoint")["epoch"])
        except EdgenasError:
            have = None  # a torn or foreign best.pt is repaired like a stale one
    if have == want:
        return False
    if want == int(last["epoch"]):
        save_checkpoint(run.best, {k: v for k, v in last.items() if k not in ("format", "version")})
        return True
    if have is not None and have > int(last["epoch"]):
        return False  # written just before a kill; the resumed epoch rewrites it
    raise EdgenasError(f"{run.best} holds {'no readable epoch' if have is None else f'epoch {have + 1}'}, but "
                       f"{run.last} names epoch {int(want) + 1} as the best",
                       "best.pt was replaced or deleted by hand; restore it, or start a new --out folder")


def check_finite_losses(record: Mapping[str, Any], *, kind: str, run: RunDir, kept: int) -> None:
    """Stop a diverged run before its epoch is checkpointed: the last good ``last.pt`` stays.

    ``kept`` is the number of epochs the folder's checkpoint holds.
    """
    bad = {k: v for k, v in record.items()
           if ("loss" in k or "objective" in k) and isinstance(v, float) and not math.isfinite(v)}
    if not bad:
        return
    key, value = next(iter(bad.items()))
    kept_note = (f"{run.last} keeps epoch {kept}, the last finite one" if kept > 0
                 else "no epoch had finished, so no checkpoint was written")
    raise EdgenasError(f"{kind} stopped in epoch {int(record['epoch']) + 1}: {key} is {value}",
                       f"the run diverged; lower --lr or check --momentum and the data ({kept_note})")


# --- the epoch loop with checkpoints and exact resume --------------------------------------------

class Stateful(Protocol):
    def state_dict(self) -> Any: ...
    def load_state_dict(self, state: Any) -> Any: ...


@dataclass(frozen=True)
class BestRule:
    """Which record field makes a checkpoint ``best.pt`` (e.g. highest ``test_top1``)."""

    key: str
    mode: str = "max"  # "max" | "min"

    def better(self, value: float, than: float | None) -> bool:
        if than is None or math.isnan(than):
            return not math.isnan(value)
        return value > than if self.mode == "max" else value < than


@dataclass
class LoopResult:
    history: History
    best: dict[str, Any] | None
    epochs_done: int          # epochs finished in total (including those before a resume)
    stopped_early: bool       # stop_after ended this invocation before the last epoch


EpochFn = Callable[[int, LoopProgress], dict[str, Any]]


def run_epochs(
    run: RunDir,
    *,
    kind: str,
    epochs: int,
    stateful: Mapping[str, Stateful],
    config: Mapping[str, Any],
    identity: Mapping[str, Any],
    epoch_fn: EpochFn,
    device: torch.device,
    resume: bool = False,
    best: BestRule | None = None,
    summary: Callable[[dict[str, Any]], str] | None = None,
    on_epoch_end: Callable[[History], None] | None = None,
    stop_after: int | None = None,
    quiet: bool = False,
    dist_info: DistInfo = DistInfo(),
    threads: int | str = 0,
) -> LoopResult:
    """Run ``epoch_fn(epoch, progress)`` for each remaining epoch, checkpointing after every one.

    ``stateful`` names every object whose ``state_dict`` must survive a restart (model, optimisers,
    scheduler, ...); ``identity`` is the part of ``config`` a resumed run must share (a mismatch is
    an error naming the field). ``epoch_fn`` returns the epoch's record (plain numbers); the loop
    adds ``epoch`` and ``seconds`` (and ``threads``, the mean intra-op thread count, under
    ``threads="auto"``: see :mod:`edgenas.threads`). ``stop_after``
    ends this invocation after that many epochs, as a kill would (for tests and time-boxed jobs).
    Only rank 0 writes files; all ranks run the same epochs.
    """
    what = f"{kind} run"
    if device.type == "cpu":
        # Reuse freed activations instead of page-faulting them in afresh every step: a pc_darts
        # search step took 5-6 % less time (21 K -> 1 K page faults per step), darts' the same.
        keep_cpu_memory()
    start, best_record = 0, None
    history = History(run.history)
    run.check(resume=resume, what=what)
    if resume:
        ckpt = load_checkpoint(run.last, expect=identity, what=f"{kind} checkpoint")
        missing = [name for name in stateful if name not in ckpt.get("state", {})]
        if missing:
            raise EdgenasError(f"{kind} checkpoint {run.last} lacks state for {', '.join(missing)}",
                               "it was written by another kind of run; start a new --out folder")
        for name, obj in stateful.items():
            obj.load_state_dict(ckpt["state"][name])
        rng = ckpt["rng"]
        restore_rng_state(rng[dist_info.rank % len(rng)])
        start = int(ckpt["epoch"]) + 1
        best_record = ckpt.get("best")
        # The checkpoint carries the history up to its epoch: a kill between writing the two files
        # can never leave them disagreeing.
        history = History(run.history, ckpt.get("history", []))
        if dist_info.main and best is not None:
            repair_best(run, ckpt)
    if dist_info.main:
        run.root.mkdir(parents=True, exist_ok=True)
        run.write_config(kind, config)
        history.write()

    stopped = False
    with thread_policy(threads) as governor, epoch_progress(
            epochs, quiet=quiet or not dist_info.main, start=start,
            on_batch=governor.tick if governor is not None else None) as progress:
        if governor is not None and not governor.available:
            progress.console.print("note: --threads auto cannot read this machine's CPU accounting (/proc/stat); "
                                   f"the thread count stays at {governor.threads}", markup=False)
        for epoch in range(start, epochs):
            t0 = time.perf_counter()
            record = {"epoch": epoch, **epoch_fn(epoch, progress)}
            record["seconds"] = round(time.perf_counter() - t0, 3)
            if governor is not None:
                record["threads"] = governor.mean_threads()
            check_finite_losses(record, kind=kind, run=run, kept=epoch)
            history.append(record, write=False)
            rng_states = gather_objects(capture_rng_state())  # collective: every rank takes part
            is_best = best is not None and best.better(float(record[best.key]), None if best_record is None
                                                       else float(best_record[best.key]))
            if is_best:
                best_record = record
            if dist_info.main:
                state = {
                    "kind": kind,
                    "config": dict(config),
                    "epoch": epoch,
                    "state": {name: obj.state_dict() for name, obj in stateful.items()},
                    "rng": rng_states,
                    "history": history.records,
                    "best": best_record,
                }
                # best.pt before last.pt: a kill between the two leaves best.pt one epoch ahead of
                # last.pt, and the resumed (deterministic) epoch rewrites both; last.pt never names a
                # best epoch that best.pt does not hold.
                if is_best:
                    save_checkpoint(run.best, state)
                save_checkpoint(run.last, state)
                history.write()
                if on_epoch_end is not None:
                    on_epoch_end(history)
            progress.epoch_done(summary(record) if summary else json.dumps(record))
            if stop_after is not None and epoch + 1 - start >= stop_after and epoch + 1 < epochs:
                stopped = True
                break
    done = len(history.records)
    return LoopResult(history=history, best=best_record, epochs_done=done, stopped_early=stopped)
