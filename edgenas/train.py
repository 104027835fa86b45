"""Retraining a genotype from scratch with the DARTS evaluation protocol.

Liu et al., "DARTS: Differentiable Architecture Search" (ICLR 2019), Sec. 4.2 / A.2: SGD with
momentum 0.9 and weight decay 3e-4, learning rate 0.025 at batch 96 annealed to 0 by a cosine
schedule, drop-path probability ramped linearly from 0 to 0.2 over the epochs, an auxiliary head
whose loss is weighted 0.4, cutout 16 and gradient-norm clipping at 5. The ImageNet mobile setting
uses batch 128, learning rate 0.1, weight decay 3e-5, label smoothing 0.1 and no drop path/cutout
(we keep the cosine schedule there too, where DARTS used a 0.97 step decay).

The loop itself (checkpoint every epoch, exact resume, history, progress) is
:func:`edgenas.runs.run_epochs`; this module only says what one training epoch does. Under
``torchrun`` the same call trains with DistributedDataParallel (NCCL on GPUs, gloo on the CPU);
``batch_size`` is the global batch, split evenly over the processes.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgenas.checkpoints import load_checkpoint
from edgenas.data.load import DataBundle, describe, load_data
from edgenas.data.loaders import make_loader
from edgenas.data.spec import parse_data_spec
from edgenas.device import amp_for_capability
from edgenas.distributed import barrier, dist_from_env, init_distributed, sync_buffers
from edgenas.errors import EdgenasError
from edgenas.genotypes import Genotype, genotype_label
from edgenas.metrics import Precision, RunningMean, evaluate, topk_correct
from edgenas.nets import NetConfig, build_network, default_config
from edgenas.progress import LoopProgress
from edgenas.rng import seed_everything
from edgenas.run_folder import History, RunDir
from edgenas.runs import BestRule, LoopResult, run_epochs
from edgenas.threads import parse_threads
from edgenas.values import FieldRule, check_fields, check_number, check_seed, finite_fields

AMP_CHOICES = ("auto", "off", "bf16", "fp16")


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of a retraining run (the DARTS CIFAR protocol by default)."""

    setting: str = "cifar10"
    channels: int = 36
    layers: int = 20
    epochs: int = 600
    batch_size: int = 96
    lr: float = 0.025
    momentum: float = 0.9
    weight_decay: float = 3e-4
    auxiliary_weight: float = 0.4
    drop_path: float = 0.2
    cutout: int = 16
    label_smoothing: float = 0.0
    grad_clip: float = 5.0
    seed: int = 0
    subset: int | None = None
    test_subset: int | None = None
    in_channels: int | None = None   # force 1 or 3 input channels; None follows the data
    amp: str = "auto"                # auto: bf16 (fp16 without bf16 support) on CUDA, off on the CPU
    channels_last: bool | None = None  # None: on (measured faster on CUDA and on the CPU)
    threads: int | str = 0             # CPU intra-op threads: 0 one per physical core, N, or "auto" (edgenas.threads)

    def __post_init__(self) -> None:
        object.__setattr__(self, "threads", parse_threads(self.threads))
        finite_fields(self)
        check_seed(self.seed, "--seed")
        check_number(self.momentum, "--momentum", minimum=0, below=1)
        if self.auxiliary_weight > 0 and self.batch_size < 2:
            # the auxiliary head pools to 1x1 before a BatchNorm, which needs two samples to train
            raise EdgenasError(f"--batch-size {self.batch_size} is too small for the auxiliary head's BatchNorm",
                               "use --batch-size 2 or more, or --auxiliary-weight 0 (no auxiliary head)")
        check_fields(self, (
            FieldRule("epochs", minimum=1), FieldRule("batch_size", minimum=1), FieldRule("lr", above=0),
            FieldRule("channels", minimum=1), FieldRule("layers", minimum=1), FieldRule("auxiliary_weight", minimum=0),
            FieldRule("grad_clip", above=0), FieldRule("cutout", minimum=0),
            FieldRule("label_smoothing", minimum=0, below=1), FieldRule("drop_path", minimum=0, below=1),
            FieldRule("weight_decay", minimum=0)))
        if self.amp not in AMP_CHOICES:
            raise EdgenasError(f"unknown --amp {self.amp!r}", f"use one of {', '.join(AMP_CHOICES)}")

    def identity(self) -> dict[str, Any]:
        """What a resumed run must share with its checkpoint: all but the precision knobs."""
        d = asdict(self)
        for key in ("amp", "channels_last"):
            d.pop(key)
        return d


def protocol_defaults(setting: str) -> TrainConfig:
    """The published protocol for ``setting`` (see the module docstring)."""
    net = default_config(setting)
    base = TrainConfig(setting=setting, channels=net.C, layers=net.layers, drop_path=net.drop_path)
    if net.imagenet:
        return replace(base, epochs=250, batch_size=128, lr=0.1, weight_decay=3e-5, cutout=0,
                       label_smoothing=0.1)
    return base


def resolve_precision(cfg: TrainConfig, device: torch.device) -> Precision:
    """Mixed precision: on CUDA by default where the GPU has tensor cores for it
    (:func:`edgenas.device.amp_for_capability`: bf16 from Ampere, fp16 with loss scaling on Volta and
    Turing, off before), off on the CPU unless asked (CPUs without bf16
    units gain nothing and the result would no longer be fp32-exact).

    Channels-last is on by default on every device: on the CPU it was measured faster for training
    (benchmarks/train_step_format.py), as DESIGN.md's depthwise-conv figures predict; resume stays
    bitwise exact on the CPU in either format.
    """
    amp = cfg.amp
    if amp == "auto":
        # the run's device, not the current one: on a mixed machine cuda:1 may be another generation
        amp = amp_for_capability(torch.cuda.get_device_capability(device)) if device.type == "cuda" else "off"
    dtype = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    channels_last = cfg.channels_last if cfg.channels_last is not None else True
    return Precision(amp=dtype, channels_last=channels_last)


@dataclass
class TrainResult:
    run: Path
    loop: LoopResult
    model: nn.Module  # the trained network (unwrapped from DDP), in eval mode
    net: NetConfig
    params: int
    data: dict[str, Any]

    def summary(self) -> dict[str, Any]:
        last = self.loop.history.records[-1] if self.loop.history.records else None
        return {"run": str(self.run), "epochs_done": self.loop.epochs_done, "stopped_early": self.loop.stopped_early,
                "params": self.params, "best": self.loop.best, "last": last, "data": self.data,
                "history": str(self.run / "history.jsonl")}


def net_config_for(cfg: TrainConfig, bundle: DataBundle) -> NetConfig:
    return default_config(cfg.setting, C=cfg.channels, layers=cfg.layers, num_classes=bundle.num_classes,
                          in_channels=bundle.in_channels, input_hw=bundle.image_hw,
                          auxiliary=cfg.auxiliary_weight > 0, drop_path=cfg.drop_path)


def train(genotype: Genotype, cfg: TrainConfig, data: str, *, out: str | Path, device: torch.device,
          resume: bool = False, stop_after: int | None = None, quiet: bool = False, download: bool = False,
          genotype_name: str = "") -> TrainResult:
    """Train ``genotype`` on ``data`` into the run folder ``out``; returns the history and best epoch.

    ``stop_after`` ends this call after that many epochs (the checkpoint lets ``resume`` finish the
    run with the same result as an uninterrupted one). The writing process owns ``out`` (marker and
    lock) for the whole call.
    """
    owner = RunDir(Path(out)).claim("train") if dist_from_env().main else contextlib.nullcontext()
    with owner:
        return _train(genotype, cfg, data, out=out, device=device, resume=resume, stop_after=stop_after,
                      quiet=quiet, download=download, genotype_name=genotype_name)


def _train(genotype: Genotype, cfg: TrainConfig, data: str, *, out: str | Path, device: torch.device,
           resume: bool, stop_after: int | None, quiet: bool, download: bool, genotype_name: str) -> TrainResult:
    from edgenas.costs import count_params

    spec = parse_data_spec(data)
    run = RunDir(Path(out))
    identity = {"genotype": genotype.to_dict(), "data": str(spec), **cfg.identity()}
    # Refuse a wrong folder or a foreign checkpoint before spending time on data and the network.
    run.check(resume=resume, what="train run")
    if resume:
        load_checkpoint(run.last, expect=identity, what="train checkpoint")
    world = dist_from_env().world  # checked before joining: a bad split never waits on a rendezvous
    if cfg.batch_size % world:
        raise EdgenasError(f"batch size {cfg.batch_size} does not split evenly over {world} processes",
                           f"use a --batch-size divisible by {world}")
    dist_info, device = init_distributed(device)
    per_rank_batch = cfg.batch_size // dist_info.world
    if cfg.auxiliary_weight > 0 and per_rank_batch < 2:
        raise EdgenasError(f"batch size {cfg.batch_size} over {dist_info.world} processes leaves one image per "
                           "process, too few for the auxiliary head's BatchNorm",
                           f"use --batch-size {2 * dist_info.world} or more, or --auxiliary-weight 0")
    def load(fetch: bool) -> DataBundle:
        return load_data(spec, subset=cfg.subset, test_subset=cfg.test_subset, cutout=cfg.cutout, download=fetch,
                         channels=cfg.in_channels, seed=cfg.seed)

    if download and dist_info.active:  # one process downloads (and fills the decode cache), then the rest read
        bundle = load(True) if dist_info.main else None
        barrier()
        bundle = bundle or load(False)
    else:
        bundle = load(download)
    net_cfg = net_config_for(cfg, bundle)
    precision = resolve_precision(cfg, device)

    seed_everything(cfg.seed)  # same initial weights on every rank (DDP also broadcasts rank 0's)
    net = build_network(genotype, net_cfg, device=device)
    if precision.channels_last:
        net = net.to(memory_format=torch.channels_last)
    params = count_params(net, exclude=("auxiliary",))
    model: nn.Module = net
    if dist_info.active:
        model = nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    seed_everything(cfg.seed + dist_info.rank)  # each rank draws its own drop-path masks

    optimizer = torch.optim.SGD(net.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs, eta_min=0.0)
    # loss scaling only where fp16 gradients could underflow; a disabled scaler is a pass-through
    scaler = torch.amp.GradScaler(device.type, enabled=precision.amp == torch.float16 and device.type == "cuda")
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    train_loader = make_loader(bundle.train, per_rank_batch, shuffle=True, seed=cfg.seed, device=device,
                               dist=dist_info)
    test_loader = make_loader(bundle.test, per_rank_batch, shuffle=False, device=device, dist=dist_info)

    def epoch_fn(epoch: int, progress: LoopProgress) -> dict[str, Any]:
        net.drop_path_prob = cfg.drop_path * epoch / cfg.epochs
        lr = optimizer.param_groups[0]["lr"]
        train_loader.set_epoch(epoch)
        model.train()
        meter = RunningMean()
        for x, y in progress.batches(train_loader, len(train_loader), "train"):
            if precision.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with precision.autocast(device):
                logits, aux = model(x)
                main_loss = criterion(logits, y)
                loss = main_loss if aux is None else main_loss + cfg.auxiliary_weight * criterion(aux, y)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            # the main head's loss is comparable with the test loss; the objective adds the aux term
            meter.add(y.numel(), loss=main_loss.detach() * y.numel(), objective=loss.detach() * y.numel(),
                      top1=topk_correct(logits.detach(), y, (1,))[0] * 100.0)
        scheduler.step()
        trained = meter.means(device)
        sync_buffers(net)  # one set of BatchNorm statistics for evaluation and the checkpoint
        test = evaluate(net, test_loader, device, criterion=criterion, precision=precision, progress=progress)
        return {"lr": lr, "drop_path": net.drop_path_prob, "train_loss": trained["loss"],
                "train_objective": trained["objective"], "train_top1": trained["top1"], "test_loss": test["loss"],
                "test_top1": test["top1"], "test_top5": test["top5"]}

    def summary(r: dict[str, Any]) -> str:
        return (f"epoch {r['epoch'] + 1}/{cfg.epochs}  train loss {r['train_loss']:.4f} top-1 {r['train_top1']:.2f}%"
                f"  test loss {r['test_loss']:.4f} top-1 {r['test_top1']:.2f}% top-5 {r['test_top5']:.2f}%"
                f"  lr {r['lr']:.5f}  {r['seconds']:.1f}s")

    data_info = describe(bundle)

    def draw(history: History) -> None:
        from edgenas.report import plot_training_curves

        plot_training_curves(history.records, run.figures / "training_curves.png",
                             title=f"{genotype_name or 'genotype'} on {spec} (C={cfg.channels}, {cfg.layers} cells)")

    config = {"genotype": genotype.to_dict(), "genotype_name": genotype_name, "data": str(spec),
              **asdict(cfg), "net": asdict(net_cfg), "params": params, "world_size": dist_info.world,
              "device": str(device), "precision": {"amp": str(precision.amp), "channels_last": precision.channels_last},
              "dataset": data_info}
    result = run_epochs(run, kind="train", epochs=cfg.epochs,
                        stateful={"model": net, "optimizer": optimizer, "scheduler": scheduler, "scaler": scaler},
                        config=config, identity=identity, epoch_fn=epoch_fn, device=device, resume=resume,
                        best=BestRule("test_top1", "max"), summary=summary, on_epoch_end=draw,
                        stop_after=stop_after, quiet=quiet, dist_info=dist_info, threads=cfg.threads)
    net.eval()
    return TrainResult(run=run.root, loop=result, model=net, net=net_cfg, params=params, data=data_info)


def default_run_folder(genotype_spec: str) -> Path:
    """``runs/train-<genotype>``: fixed, so that ``--resume`` finds it without ``--out``."""
    return Path("runs") / f"train-{genotype_label(genotype_spec)}"
