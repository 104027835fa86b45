"""The bilevel search loop shared by every method: first-order DARTS with checkpoints and history.

Liu et al. (ICLR 2019), Alg. 1 with xi = 0 (first order): each step updates the architecture
parameters on a batch of the validation half (Adam, lr 6e-4, betas (0.5, 0.999), weight decay 1e-3)
and then the network weights on a batch of the training half (SGD, momentum 0.9, weight decay 3e-4,
lr 0.1 per 256 images scaled linearly, cosine to lr/25 as DARTS' 0.025 -> 0.001, gradient norm
clipped at 5). Architecture updates start after ``warmup_epochs`` (PC-DARTS: 15 of 50).

Each step freezes the parameters it does not update, so backward skips their weight-gradient
kernels (the architecture step needs no convolution weight gradients) and the weight step does not
keep operator outputs alive for alpha's gradient.

Epochs, checkpoints, exact resume, history and progress are :func:`edgenas.runs.run_epochs`; this
module says what one search epoch does and what it records.

Distributed (``torchrun``): ``batch_size`` is the global batch of each half, split evenly over the
processes; every rank takes its interleaved shard of both halves, builds the same supernet from the
same seed, and averages the gradients of the group it steps (weights, or every architecture
parameter: alphas, edge coefficients, attention modules) with one all-reduce after backward and
before clipping, so weights and architecture stay identical on every rank. Method terms (entropy,
temperature) and budget penalties depend only on the architecture and the epoch, so every rank
computes the same ones. BatchNorm normalises each rank's shard with that shard's statistics, as in
training's DDP (no per-layer synchronisation: a supernet has hundreds of BatchNorms per step):
``accumulate`` gives one process the same arithmetic, splitting each batch into that many
interleaved micro-batches whose gradients are averaged. Extra architecture-loss terms come from
the method (e.g. EL-DARTS' entropy) and from ``penalties`` (e.g. a MAC or latency budget), all
added in :meth:`BilevelStep.arch_step`, the one place the architecture loss is formed.
"""

from __future__ import annotations

import contextlib
import math
import resource
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from edgenas.cells import CELL_TYPES
from edgenas.checkpoints import load_checkpoint
from edgenas.data.load import DataBundle, describe, load_data, search_split
from edgenas.data.loaders import make_loader
from edgenas.data.spec import DataSpec, parse_data_spec
from edgenas.data.tensors import ImageTensors
from edgenas.distributed import (
    DistInfo,
    average_gradients,
    dist_from_env,
    init_distributed,
    sum_tensors,
    sync_buffers,
)
from edgenas.distributed import is_active as dist_active
from edgenas.errors import EdgenasError
from edgenas.files import read_json, write_json
from edgenas.genotypes import Genotype, save_genotype
from edgenas.metrics import RunningMean, topk_correct
from edgenas.ops import get_op
from edgenas.progress import LoopProgress
from edgenas.rng import seed_everything
from edgenas.run_folder import History, RunDir
from edgenas.runs import LoopResult, run_epochs
from edgenas.search.budgets import BUDGET_FORMAT, BudgetPlan, derive
from edgenas.search.decisiveness import decisiveness, undecided_note
from edgenas.search.methods.base import Method
from edgenas.search.supernet import Supernet, SupernetConfig, WeightRecorder, freeze
from edgenas.space import SearchSpace
from edgenas.threads import parse_threads
from edgenas.values import FieldRule, check_fields, check_number, check_seed, finite_fields

OpWeights = Mapping[str, torch.Tensor]
EdgeWeights = Mapping[str, "torch.Tensor | None"]


class ArchPenalty(Protocol):
    """A differentiable term of the architecture loss computed from the relaxed architecture.

    ``penalty`` returns (term to add to the loss, a number to log, e.g. the expected cost);
    :class:`edgenas.search.budgets.Budget` has this shape.
    """

    def penalty(self, op_weights: OpWeights, edge_weights: EdgeWeights) -> tuple[torch.Tensor, torch.Tensor]: ...


Deriver = Callable[[OpWeights, EdgeWeights], Genotype]


@dataclass(frozen=True)
class SearchConfig:
    """Every setting of a search run besides the method, the space and the data."""

    epochs: int = 50
    warmup_epochs: int | None = None  # None: the method's share of the epochs (PC-DARTS 15/50)
    batch_size: int = 64
    layers: int | None = None         # None: the method's default (8 cells; SWD-NAS 5)
    channels: int = 16
    nodes: int = 4
    seed: int = 0
    subset: int | None = None
    lr: float | None = None           # None: 0.1 * batch_size / 256
    momentum: float = 0.9
    weight_decay: float = 3e-4
    arch_lr: float = 6e-4
    arch_betas: tuple[float, float] = (0.5, 0.999)
    arch_weight_decay: float = 1e-3
    grad_clip: float = 5.0
    channels_last: bool | None = None  # None: on for the CPU (measured faster there), off on CUDA
    accumulate: int = 1               # interleaved micro-batches per batch (what as many ranks would take)
    threads: int | str = 0            # CPU intra-op threads: 0 one per physical core, N, or "auto" (edgenas.threads)

    def __post_init__(self) -> None:
        object.__setattr__(self, "arch_betas", tuple(self.arch_betas))
        object.__setattr__(self, "threads", parse_threads(self.threads))
        finite_fields(self)
        check_seed(self.seed, "--seed")
        check_number(self.momentum, "momentum", minimum=0, below=1)
        for i, beta in enumerate(self.arch_betas):
            check_number(beta, f"arch_betas[{i}]", minimum=0, below=1)
        check_fields(self, (
            FieldRule("epochs", minimum=1), FieldRule("batch_size", minimum=1), FieldRule("channels", minimum=2),
            FieldRule("nodes", minimum=1), FieldRule("layers", minimum=1, required=False),
            FieldRule("warmup_epochs", minimum=0, required=False), FieldRule("subset", minimum=1, required=False),
            FieldRule("lr", above=0, required=False), FieldRule("arch_lr", above=0), FieldRule("grad_clip", above=0),
            FieldRule("accumulate", minimum=1, maximum=self.batch_size)))
        if self.warmup_epochs is not None and self.warmup_epochs >= self.epochs:
            raise EdgenasError(f"--warmup-epochs {self.warmup_epochs} is not below --epochs {self.epochs}",
                               "architecture updates must start before the last epoch")

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else 0.1 * self.batch_size / 256

    def warmup_for(self, method: Method) -> int:
        if self.warmup_epochs is not None:
            return self.warmup_epochs
        return min(round(method.warmup_fraction * self.epochs), self.epochs - 1)

    def identity(self) -> dict[str, Any]:
        """What a resumed run must share with its checkpoint: everything but the memory format and
        how the batch is split (checked against the world size by :func:`check_shards`)."""
        d = asdict(self)
        d.pop("channels_last")
        d.pop("accumulate")
        return d


def use_channels_last(cfg: SearchConfig, device: torch.device) -> bool:
    # On the CPU channels_last made a DARTS search step faster (benchmarks/search_step.py --format);
    # on CUDA fp32 depthwise convolutions gain nothing from it.
    return cfg.channels_last if cfg.channels_last is not None else device.type == "cpu"


# --- memory ------------------------------------------------------------------------------------

def _rss_hwm_bytes() -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


class PeakMemory:
    """Peak memory over a stretch of work on ``device``.

    CUDA: ``torch.cuda.max_memory_allocated`` (tensors only). CPU: the process's peak resident set
    (VmHWM), reset at :meth:`reset` through ``/proc/self/clear_refs``; where that is not possible,
    the peak since the process started (``getrusage``), and ``kind`` says so.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.kind = "cuda-max-allocated" if device.type == "cuda" else "cpu-peak-rss"

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        try:
            with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
                f.write("5")  # resets VmHWM to the current RSS
        except OSError:
            self.kind = "cpu-peak-rss-since-start"

    def peak_bytes(self) -> int:
        if self.device.type == "cuda":
            return int(torch.cuda.max_memory_allocated(self.device))
        hwm = _rss_hwm_bytes()
        if hwm is None:
            self.kind = "cpu-peak-rss-since-start"
            return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
        return hwm


# --- one search step -----------------------------------------------------------------------------

class BilevelStep:
    """The two updates of a first-order search step on one supernet."""

    def __init__(self, net: Supernet, cfg: SearchConfig, *, channels_last: bool,
                 penalties: Mapping[str, ArchPenalty] | None = None) -> None:
        self.net = net
        self.cfg = cfg
        self.channels_last = channels_last
        self.penalties = dict(penalties or {})
        self.weights = net.weight_parameters()
        self.arch = net.arch_parameters()
        self.w_opt = torch.optim.SGD(self.weights, lr=cfg.learning_rate, momentum=cfg.momentum,
                                     weight_decay=cfg.weight_decay)
        self.a_opt = torch.optim.Adam(self.arch, lr=cfg.arch_lr, betas=cfg.arch_betas,
                                      weight_decay=cfg.arch_weight_decay)

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def arch_loss(self, x: torch.Tensor, y: torch.Tensor, epoch: int) -> tuple[torch.Tensor, torch.Tensor,
                                                                                dict[str, torch.Tensor]]:
        """(total loss, logits, extra terms): cross-entropy plus the method's and the penalties' terms."""
        logits = self.net(self._input(x))
        terms = dict(self.net.method.loss_terms(self.net, epoch))
        if self.penalties:
            op_w, edge_w = self.net.relaxed_op_weights(), self.net.edge_weights()
            for name, p in self.penalties.items():
                terms[name] = p.penalty(op_w, edge_w)[0]
        loss = nn.functional.cross_entropy(logits, y)
        total = loss + sum(terms.values()) if terms else loss
        return total, logits, {"ce": loss, **terms}

    def _shards(self, n: int) -> list[slice]:
        """The interleaved micro-batches of a batch of ``n`` (``accumulate`` of them, fewer for a
        short last batch): the shards that many ranks would take of it."""
        return [slice(j, None, self.cfg.accumulate) for j in range(min(self.cfg.accumulate, n))]

    def arch_step(self, x: torch.Tensor, y: torch.Tensor, epoch: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        self.a_opt.zero_grad(set_to_none=True)
        shards = self._shards(len(y))
        logits: torch.Tensor | None = None
        logged: dict[str, torch.Tensor] = {}
        n = len(shards)  # one shard (no --accumulate): no extra kernels in the step
        for part in shards:
            with freeze(self.weights):
                total, part_logits, terms = self.arch_loss(x[part], y[part], epoch)
            (total / n if n > 1 else total).backward()
            logits = _place(logits, part_logits.detach(), part, len(y))
            for k, v in terms.items():  # per-shard means, averaged as the ranks' means are
                v = v.detach() / n if n > 1 else v.detach()
                logged[k] = logged[k] + v if k in logged else v
        average_gradients(self.arch)
        self.a_opt.step()
        assert logits is not None
        return logits, logged

    def weight_step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.w_opt.zero_grad(set_to_none=True)
        shards = self._shards(len(y))
        logits: torch.Tensor | None = None
        mean_loss: torch.Tensor | None = None
        for part in shards:
            with freeze(self.arch):
                part_logits = self.net(self._input(x[part]))
            loss = nn.functional.cross_entropy(part_logits, y[part])
            if len(shards) > 1:
                loss = loss / len(shards)
            loss.backward()
            logits = _place(logits, part_logits.detach(), part, len(y))
            mean_loss = loss.detach() if mean_loss is None else mean_loss + loss.detach()
        # averaged before clipping: every rank clips the same global-batch gradient by the same norm
        average_gradients(self.weights)
        nn.utils.clip_grad_norm_(self.weights, self.cfg.grad_clip)
        self.w_opt.step()
        assert logits is not None and mean_loss is not None
        return logits, mean_loss


def _place(into: torch.Tensor | None, part: torch.Tensor, where: slice, n: int) -> torch.Tensor:
    """Put a micro-batch's logits back at its rows of the whole batch."""
    if into is None:
        if where == slice(0, None, 1):
            return part
        into = part.new_empty((n, *part.shape[1:]))
    into[where] = part
    return into


# --- the search ----------------------------------------------------------------------------------

def skip_count(cell: tuple[tuple[str, int], ...]) -> int:
    """Number of skip connections in a cell (the DARTS collapse symptom)."""
    return sum(get_op(op).family == "skip" for op, _ in cell)


def default_deriver(ops: tuple[str, ...], steps: int) -> Deriver:
    """Per node the two incoming edges with the strongest non-``none`` operator (edge weights
    multiplied in), each with that operator: the unconstrained case of the budgets' exact solver."""

    def run(op_weights: OpWeights, edge_weights: EdgeWeights) -> Genotype:
        return derive(op_weights, ops, steps, edge_weights).genotype

    return run


def _rounded_rows(t: torch.Tensor | None, digits: int = 5) -> Any:
    """A weight tensor as nested lists rounded to ``digits``: the history's compact, readable copy
    (never derived from again: the final files come from the tensors themselves)."""
    return None if t is None else [[round(v, digits) for v in row] if isinstance(row, list) else round(row, digits)
                                   for row in t.detach().cpu().double().tolist()]


@dataclass(frozen=True)
class ArchWeights:
    """The architecture weights one genotype is derived from: operator weights per cell type
    (edges, ops) and edge weights per cell type (edges,) or None."""

    ops: dict[str, torch.Tensor]
    edges: dict[str, torch.Tensor | None]

    @classmethod
    def of(cls, net: Supernet) -> ArchWeights:
        return cls(net.derivation_weights(),
                   {t: None if w is None else w.detach() for t, w in net.edge_weights().items()})

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> ArchWeights:
        """The rounded weights a history record keeps (only where the tensors are gone)."""
        edges = record.get("edge_weights") or {}
        return cls({t: torch.tensor(v, dtype=torch.float64) for t, v in record["op_weights"].items()},
                   {t: None if edges.get(t) is None else torch.tensor(edges[t], dtype=torch.float64)
                    for t in CELL_TYPES})

    @property
    def has_edges(self) -> bool:
        return any(w is not None for w in self.edges.values())


def write_search_outputs(root: Path, weights: ArchWeights, genotype: Genotype, meta: Mapping[str, Any],
                         budget: BudgetPlan | None) -> dict[str, Any] | None:
    """Write ``budget.json`` (with a budget) and ``genotype.json`` from the same weights, so the
    constrained genotype the budget check names is the genotype written; returns the check."""
    check = None
    if budget is not None:
        check = budget.report(weights.ops, weights.edges)
        if check["constrained"]["genotype"] != genotype.to_dict():
            raise EdgenasError("internal check failed: the budget check derived another genotype than the "
                               "search's", "please report this as a bug")
        write_json(root / "budget.json", BUDGET_FORMAT, 1, check)
    save_genotype(genotype, root / "genotype.json", meta=dict(meta))
    return check


@dataclass
class SearchResult:
    run: Path
    loop: LoopResult
    genotype: Genotype
    method: str
    ops: tuple[str, ...]
    figures: list[Path]
    budget: dict[str, Any] | None = None  # budget.json's content, when a budgeted search finished here

    def summary(self) -> dict[str, Any]:
        last = self.loop.history.records[-1] if self.loop.history.records else {}
        dec = last.get("decisiveness")
        return {"decisiveness": dec, "note": undecided_note(dec),
                "run": str(self.run), "method": self.method, "ops": list(self.ops),
                "epochs_done": self.loop.epochs_done, "stopped_early": self.loop.stopped_early,
                "genotype": self.genotype.to_dict(), "genotype_file": str(self.run / "genotype.json"),
                "normal_skip_connect": skip_count(self.genotype.normal),
                "seconds_per_epoch": [r.get("seconds") for r in self.loop.history.records],
                "peak_memory_bytes": last.get("peak_memory_bytes"), "memory_kind": last.get("memory_kind"),
                "figures": [str(f) for f in self.figures], "history": str(self.run / "history.jsonl")}


def search(method: Method, space: SearchSpace | None, cfg: SearchConfig, data: str, *, out: str | Path,
           device: torch.device, resume: bool = False, stop_after: int | None = None, quiet: bool = False,
           budget: BudgetPlan | None = None, space_source: str | None = None) -> SearchResult:
    """Search ``method`` over ``space`` (None: the method's default) on ``data`` into run folder ``out``.

    With ``budget`` the architecture loss adds its penalties, each epoch's genotype is the best one
    that meets it, and a finished search writes ``budget.json`` beside ``genotype.json``, both from
    the final architecture weights. ``stop_after`` ends this call after that many epochs, as an
    interruption would; ``resume`` continues from the last checkpoint to the same result. The
    writing process owns ``out`` (marker and lock) for the whole call.
    """
    owner = RunDir(Path(out)).claim("search") if dist_from_env().main else contextlib.nullcontext()
    with owner:
        return _search(method, space, cfg, data, out=out, device=device, resume=resume, stop_after=stop_after,
                       quiet=quiet, budget=budget, space_source=space_source)


def _search(method: Method, space: SearchSpace | None, cfg: SearchConfig, data: str, *, out: str | Path,
            device: torch.device, resume: bool, stop_after: int | None, quiet: bool,
            budget: BudgetPlan | None, space_source: str | None) -> SearchResult:
    space = method.resolve_space(space)
    spec = parse_data_spec(data)
    net_cfg = SupernetConfig(ops=space.ops, C=cfg.channels, layers=cfg.layers or method.default_layers,
                             steps=cfg.nodes, cell_residual=method.cell_residual)
    method.check(net_cfg)  # bad K etc. fail before any data is read
    run = RunDir(Path(out))
    identity = {"method": method.name, "method_settings": method.settings(), "ops": list(space.ops),
                "data": str(spec), **cfg.identity()}
    run.check(resume=resume, what="search run")
    saved = load_checkpoint(run.last, expect=identity, what="search checkpoint")["config"] if resume else None
    check_shards(cfg, dist_from_env().world)  # before joining: a bad split never waits on a rendezvous
    dist_info, device = init_distributed(device)
    halves = SearchHalves.load(spec, cfg)
    if saved is not None:
        check_resume_layout(saved, cfg, dist_info.world, (len(halves.weights), len(halves.arch)))
    net_cfg = replace(net_cfg, num_classes=halves.bundle.num_classes, in_channels=halves.bundle.in_channels)
    state = _SearchRun(method, space, cfg, net_cfg, halves, run=run, device=device, dist_info=dist_info,
                       budget=budget)
    result = run_epochs(run, kind="search", epochs=cfg.epochs, stateful=state.stateful(),
                        config=state.config(spec, space_source), identity=identity, epoch_fn=state.epoch,
                        device=device, resume=resume, summary=state.line, on_epoch_end=state.on_epoch_end,
                        stop_after=stop_after, quiet=quiet or not dist_info.main, dist_info=dist_info,
                        threads=cfg.threads)
    return state.finish(result, spec)


@dataclass
class SearchHalves:
    """The dataset and its two halves: one trains the weights, the other the architecture."""

    bundle: DataBundle
    weights: ImageTensors
    arch: ImageTensors

    @classmethod
    def load(cls, spec: DataSpec, cfg: SearchConfig) -> SearchHalves:
        bundle = load_data(spec, subset=cfg.subset, seed=cfg.seed)
        w_data, a_data = search_split(bundle, cfg.seed)
        if len(w_data) < 1 or len(a_data) < 1:
            raise EdgenasError(f"{spec} has {len(bundle.train)} training image(s): too few to split into "
                               "halves for the weights and the architecture",
                               "use a larger dataset or --subset (at least 2)")
        return cls(bundle, w_data, a_data)


class _SearchRun:
    """One search call's supernet, optimisers and loaders, and what :func:`run_epochs` calls back:
    an epoch (:meth:`epoch`), its record (:meth:`record`), its progress line (:meth:`line`)."""

    def __init__(self, method: Method, space: SearchSpace, cfg: SearchConfig, net_cfg: SupernetConfig,
                 halves: SearchHalves, *, run: RunDir, device: torch.device, dist_info: DistInfo,
                 budget: BudgetPlan | None) -> None:
        self.method, self.space, self.cfg, self.net_cfg, self.halves = method, space, cfg, net_cfg, halves
        self.run, self.device, self.dist_info, self.budget = run, device, dist_info, budget
        self.warmup = cfg.warmup_for(method)
        self.per_rank_batch = cfg.batch_size // dist_info.world
        # the same seed on every rank: the same initial weights and architecture, and the same draws
        # of any method randomness after it
        seed_everything(cfg.seed)
        net = Supernet(method, net_cfg, device=device)
        self.channels_last = use_channels_last(cfg, device)
        self.net = net.to(memory_format=torch.channels_last) if self.channels_last else net
        self.step = BilevelStep(self.net, cfg, channels_last=self.channels_last,
                                penalties=budget.penalties() if budget else None)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.step.w_opt, T_max=cfg.epochs,
                                                                    eta_min=cfg.learning_rate / 25)
        self.w_loader = make_loader(halves.weights, self.per_rank_batch, shuffle=True, seed=cfg.seed,
                                    device=device, dist=dist_info)
        self.a_loader = make_loader(halves.arch, self.per_rank_batch, shuffle=True, seed=cfg.seed + 1,
                                    device=device, dist=dist_info)
        self.steps_per_epoch = min(len(self.w_loader), len(self.a_loader))
        self.derive: Deriver = budget.deriver() if budget else default_deriver(space.ops, cfg.nodes)
        self.memory = PeakMemory(device)
        self.figures: list[Path] = []
        # the weights and genotype of the latest epoch this call ran: the final files' source
        self.latest: tuple[int, ArchWeights, Genotype] | None = None

    def stateful(self) -> dict[str, Any]:
        return {"model": self.net, "weight_optimizer": self.step.w_opt, "arch_optimizer": self.step.a_opt,
                "scheduler": self.scheduler}

    def config(self, spec: DataSpec, space_source: str | None) -> dict[str, Any]:
        cfg, w_data, a_data = self.cfg, self.halves.weights, self.halves.arch
        return {"method": self.method.name, "method_settings": self.method.settings(), "ops": list(self.space.ops),
                "space": space_source, "space_dropped": [d.to_dict() for d in self.space.dropped],
                "data": str(spec), **asdict(cfg), "warmup_epochs_used": self.warmup, "lr_used": cfg.learning_rate,
                "supernet": asdict(self.net_cfg), "device": str(self.device), "channels_last": self.channels_last,
                "world_size": self.dist_info.world, "per_rank_batch": self.per_rank_batch,
                "penalties": sorted(self.step.penalties), "dataset": describe(self.halves.bundle),
                "search_split": {"weights": len(w_data), "arch": len(a_data), "steps_per_epoch": self.steps_per_epoch},
                # Adam moves a logit by about arch_lr per step: this bounds how far any alpha can travel
                "arch_reach": cfg.arch_lr * self.steps_per_epoch * (cfg.epochs - self.warmup)}

    def epoch(self, epoch: int, progress: LoopProgress) -> dict[str, Any]:
        net, step = self.net, self.step
        self.w_loader.set_epoch(epoch)
        self.a_loader.set_epoch(epoch)
        lr = step.w_opt.param_groups[0]["lr"]
        arch_on = epoch >= self.warmup
        net.train()
        net.reset_records()
        self.memory.reset()
        train, val = RunningMean(), RunningMean()
        # Data-driven weights (SWD-NAS) are averaged over the validation batches; in warm-up there
        # are none, so the training batches stand in.
        record_arch = net.recording if arch_on else contextlib.nullcontext
        record_weights = contextlib.nullcontext if arch_on else net.recording
        batches = progress.batches(zip(self.w_loader, self.a_loader), self.steps_per_epoch, "search")
        for (xw, yw), (xa, ya) in batches:
            if arch_on:
                with record_arch():
                    logits, terms = step.arch_step(xa, ya, epoch)
                n = ya.numel()
                val.add(n, loss=terms["ce"] * n, top1=topk_correct(logits, ya, (1,))[0] * 100.0,
                        **{f"term_{k}": v * n for k, v in terms.items() if k != "ce"})
            with record_weights():
                logits, loss = step.weight_step(xw, yw)
            n = yw.numel()
            train.add(n, loss=loss * n, top1=topk_correct(logits, yw, (1,))[0] * 100.0)
        self.scheduler.step()
        merge_records(net)  # SWD-NAS' data-driven weights: the mean over every rank's batches
        sync_buffers(net)   # one set of BatchNorm running statistics in every rank's state
        return self.record(epoch, lr, arch_on, train.means(self.device),
                           val.means(self.device) if arch_on else {})

    def _penalty_log(self, edge_w: EdgeWeights) -> dict[str, dict[str, float]]:
        if not self.step.penalties:
            return {}
        relaxed = self.net.relaxed_op_weights()
        out = {}
        for name, p in self.step.penalties.items():
            term, value = p.penalty(relaxed, edge_w)
            out[name] = {"term": float(term), "value": float(value)}
        return out

    def record(self, epoch: int, lr: float, arch_on: bool, train: dict[str, float],
               val: dict[str, float]) -> dict[str, Any]:
        """The history record of an epoch; also saves that epoch's genotype."""
        with torch.no_grad():
            weights = ArchWeights.of(self.net)
            genotype = self.derive(weights.ops, weights.edges)
            genotype.validate(self.space.ops)
            penalty_log = self._penalty_log(weights.edges)
        self.latest = (epoch, weights, genotype)
        if self.dist_info.main and all(math.isfinite(v) for v in (train["loss"], val.get("loss", 0.0))):
            # a diverged epoch is stopped before its checkpoint (run_epochs); leave no genotype of it
            save_genotype(genotype, self.run.root / "genotypes" / f"epoch_{epoch + 1:03d}.json",
                          meta={"method": self.method.name, "epoch": epoch + 1, "ops": list(self.space.ops)})
        op_w = weights.ops
        record: dict[str, Any] = {
            "lr": lr, "arch_updates": arch_on, "steps": self.steps_per_epoch,
            "train_loss": train["loss"], "train_top1": train["top1"],
            "val_loss": val.get("loss"), "val_top1": val.get("top1"),
            "loss_terms": {k[5:]: v for k, v in val.items() if k.startswith("term_")},
            **self.net.method.epoch_info(self.net, epoch),
            "op_weights": {t: _rounded_rows(op_w[t]) for t in CELL_TYPES},
            "edge_weights": {t: _rounded_rows(weights.edges[t]) for t in CELL_TYPES} if weights.has_edges else None,
            "genotype": genotype.to_dict(),
            "decisiveness": decisiveness({t: op_w[t].detach().cpu().double().numpy() for t in CELL_TYPES},
                                         self.space.ops, genotype),
            "normal_skip_connect": skip_count(genotype.normal),
            "reduce_skip_connect": skip_count(genotype.reduce),
            "peak_memory_bytes": self.memory.peak_bytes(), "memory_kind": self.memory.kind,
        }
        if penalty_log:
            record["penalties"] = penalty_log
        return record

    def line(self, r: dict[str, Any]) -> str:
        """An epoch's progress line."""
        val = (f"val loss {r['val_loss']:.4f} top-1 {r['val_top1']:.2f}%" if r["val_loss"] is not None
               else "warm-up (no architecture update)")
        return (f"epoch {r['epoch'] + 1}/{self.cfg.epochs}  train loss {r['train_loss']:.4f} "
                f"top-1 {r['train_top1']:.2f}%  {val}  skip(normal) {r['normal_skip_connect']}"
                f"  decided {r['decisiveness']['chosen_decided_share']:.0%}  {r['seconds']:.1f}s"
                f"  peak {r['peak_memory_bytes'] / 2**20:.0f} MiB")

    def on_epoch_end(self, history: History) -> None:
        if len(history.records) == self.cfg.epochs:
            self.figures[:] = draw_figures(self.run, history.records[-1], self.space.ops, self.method)

    def _final(self, last: Mapping[str, Any]) -> tuple[ArchWeights, Genotype] | None:
        """The final weights and genotype: this call's last epoch's tensors; when the search had
        finished before this call, None if its files are there (written from those tensors then),
        else the history's rounded weights (both files are still derived from the same ones)."""
        if self.latest is not None and self.latest[0] == self.cfg.epochs - 1:
            return self.latest[1], self.latest[2]
        root = self.run.root
        if (root / "genotype.json").exists() and (self.budget is None or (root / "budget.json").exists()):
            return None
        weights = ArchWeights.from_record(last)
        return weights, self.derive(weights.ops, weights.edges)

    def finish(self, result: LoopResult, spec: DataSpec) -> SearchResult:
        """The final genotype, and on the writing process genotype.json, budget.json and the figures."""
        last = result.history.records[-1]
        genotype = Genotype.from_dict(last["genotype"], source=str(self.run.history))
        check = None
        if result.epochs_done == self.cfg.epochs and self.dist_info.main:
            final = self._final(last)
            if final is not None:
                genotype = final[1]
                meta = {"method": self.method.name, "epochs": self.cfg.epochs, "ops": list(self.space.ops),
                        "data": str(spec), "normal_skip_connect": skip_count(genotype.normal)}
                check = write_search_outputs(self.run.root, final[0], genotype, meta, self.budget)
            elif self.budget is not None:
                doc = read_json(self.run.root / "budget.json", BUDGET_FORMAT, 1, "budget check")
                check = {k: v for k, v in doc.items() if k not in ("format", "version")}
            if not self.figures:  # resumed after the last epoch had already finished
                self.figures = draw_figures(self.run, last, self.space.ops, self.method)
        return SearchResult(run=self.run.root, loop=result, genotype=genotype, method=self.method.name,
                            ops=self.space.ops, figures=self.figures, budget=check)


def merge_records(net: Supernet) -> None:
    """Sum every recorder's running total and count over the ranks, so each rank derives from the
    mean over all ranks' batches (every rank records the same number of forwards)."""
    recorders = [m for m in net.modules() if isinstance(m, WeightRecorder) and m.total is not None]
    if not recorders or not dist_active():
        return
    counts = torch.tensor([float(m.count) for m in recorders], dtype=torch.float64)
    totals = [m.total for m in recorders]
    sum_tensors([*totals, counts])  # type: ignore[list-item]
    for m, c in zip(recorders, counts.tolist(), strict=True):
        m.count = int(c)


def check_shards(cfg: SearchConfig, world: int) -> None:
    """The global batch must split evenly over the processes and their micro-batches."""
    shards = world * cfg.accumulate
    if cfg.batch_size % shards:
        split = f"{world} process{'es' if world > 1 else ''}" + (
            f" x {cfg.accumulate} micro-batches" if cfg.accumulate > 1 else "")
        raise EdgenasError(f"--batch-size {cfg.batch_size} does not split evenly over {split}",
                           f"use a --batch-size divisible by {shards}")


def shard_layout(n: int, batch: int, world: int, accumulate: int) -> list[list[tuple[int, ...]]]:
    """Per step, the sorted shards (positions in an epoch's permutation of a half of ``n`` images)
    that ``world`` ranks with ``accumulate`` micro-batches each take: the loaders' arithmetic
    (DistributedSampler's interleaving and padding, the dropped lone last image) on positions."""
    per_rank = -(-n // world)
    padded = list(range(n)) + list(range(per_rank * world - n))
    b = batch // world
    steps: list[list[tuple[int, ...]]] = []
    for r in range(world):
        mine = padded[r::world]
        if len(mine) > 1 and len(mine) % b == 1:
            mine = mine[:-1]
        for k, start in enumerate(range(0, len(mine), b)):
            part = mine[start : start + b]
            if k == len(steps):
                steps.append([])
            steps[k] += [tuple(part[j::accumulate]) for j in range(min(accumulate, len(part)))]
    return [sorted(s) for s in steps]


def check_resume_layout(saved: Mapping[str, Any], cfg: SearchConfig, world: int, halves: tuple[int, int]) -> None:
    """Resuming on another number of processes is allowed when every step's shards are the same
    images as before (processes x micro-batches unchanged and no difference in padding); the sums
    over shards then only change order, so the result equals the uninterrupted run's to float
    rounding instead of bitwise."""
    was_world, was_acc = int(saved.get("world_size", 1)), int(saved.get("accumulate", 1))
    if (was_world, was_acc) == (world, cfg.accumulate):
        return
    same = all(shard_layout(n, cfg.batch_size, was_world, was_acc) == shard_layout(n, cfg.batch_size, world,
                                                                                     cfg.accumulate)
               for n in halves)
    if not same:
        raise EdgenasError(
            f"this search ran on {was_world} process(es) x {was_acc} micro-batch(es); on {world} x "
            f"{cfg.accumulate} its batches would not be the same images",
            f"resume with torchrun --nproc_per_node {was_world} (or processes x --accumulate = "
            f"{was_world * was_acc} where the halves split evenly)")


def draw_figures(run: RunDir, record: Mapping[str, Any], ops: tuple[str, ...], method: Method) -> list[Path]:
    """Operator-weight heatmaps per cell type and the derived cells' diagrams."""
    from edgenas.report import plot_arch_weights, plot_genotype

    title = f"{method.title}, epoch {record['epoch'] + 1}"
    dec = record.get("decisiveness")
    undecided = {t: [not d for d in c["decided"]] for t, c in dec["cells"].items()} if dec else None
    heat = plot_arch_weights(record["op_weights"], ops, run.figures / "arch_weights.png",
                             edge_weights=record.get("edge_weights"), title=title, undecided=undecided,
                             threshold=dec["threshold"] if dec else None)
    genotype = Genotype.from_dict(record["genotype"])
    cells = plot_genotype(genotype, run.figures / "genotype.png", title=title)
    return [heat, cells]


def default_run_folder(method: str) -> Path:
    """``runs/search-<method>``: fixed, so that ``--resume`` finds it without ``--out``."""
    return Path("runs") / f"search-{method}"


__all__ = ["ArchPenalty", "ArchWeights", "BilevelStep", "Deriver", "PeakMemory", "SearchConfig", "SearchResult",
           "default_deriver", "default_run_folder", "search", "skip_count", "use_channels_last", "write_search_outputs"]
