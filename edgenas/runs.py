"""The epoch loop shared by search and training: a checkpoint after every epoch, exact resume.

Exact resume (bitwise on CPU) rests on three things this loop ties together:

* the data order and augmentation of epoch ``e`` are a pure function of ``(seed, epoch, rank)``
  (see :mod:`edgenas.data.loaders`), so nothing about a loader needs saving;
* every other source of randomness (dropout/drop-path masks, Gumbel noise, ...) draws from the
  global generators, whose states (:mod:`edgenas.rng`) are captured at the end of each epoch and
  restored on ``--resume``;
* every stateful object (model, optimisers, schedulers, grad scaler, architecture weights) is saved
  by ``state_dict`` at the same point, in an atomically written checkpoint
  (:mod:`edgenas.checkpoints`) inside the run folder (:mod:`edgenas.run_folder`).

Distributed runs (``torchrun``) are detected from the environment; only rank 0 writes files, but the
RNG states of all ranks are gathered into the checkpoint so each rank resumes its own stream.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from edgenas.checkpoints import load_checkpoint, save_checkpoint
from edgenas.device import keep_cpu_memory
from edgenas.distributed import DistInfo, gather_objects
from edgenas.errors import EdgenasError
from edgenas.progress import LoopProgress
from edgenas.rng import capture_rng_state, restore_rng_state
from edgenas.run_folder import History, RunDir
from edgenas.threads import thread_policy

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
        # Reuse freed activations instead of page-faulting them in afresh every step.
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
    with thread_policy(threads) as governor, LoopProgress(
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
