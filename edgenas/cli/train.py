"""``edgenas train``: train a genotype from scratch."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from edgenas.cli.common import (
    DeviceOpt,
    JsonOpt,
    QuietOpt,
    app,
    command,
    emit_json,
    given,
    out_console,
)


@command(app, "train")
def train_cmd(
    genotype: str = typer.Argument(..., help="Built-in genotype (see `edgenas list genotypes`) or a genotype file."),
    data: str = typer.Option(..., "--data", help="cifar10[:DIR] | cifar100[:DIR] | imagefolder:PATH (folder or "
                             ".tar/.tar.gz of train/<class>/*, test/<class>/*) | fashion-mnist[:DIR] | synthetic[:N]"),
    setting: str = typer.Option("cifar10", "--setting", help="cifar10 | cifar100 | imagenet-mobile (network "
                                "layout and protocol defaults)."),
    channels: Optional[int] = typer.Option(None, "--channels", min=1, help="Initial channels C [36; 48 imagenet]."),
    layers: Optional[int] = typer.Option(None, "--layers", min=1, help="Cells [20; 14 imagenet]."),
    epochs: Optional[int] = typer.Option(None, "--epochs", min=1, help="Epochs [600; 250 imagenet]."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1,
                                             help="Global batch, split over torchrun processes [96; 128]."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Initial learning rate, cosine to 0 [0.025; 0.1]."),
    momentum: Optional[float] = typer.Option(None, "--momentum", help="SGD momentum [0.9]."),
    weight_decay: Optional[float] = typer.Option(None, "--weight-decay", help="[3e-4; 3e-5 imagenet]."),
    auxiliary_weight: Optional[float] = typer.Option(None, "--auxiliary-weight", help="Aux loss weight, 0 = no "
                                                     "aux head [0.4]."),
    drop_path: Optional[float] = typer.Option(None, "--drop-path", help="Final drop-path probability, ramped "
                                              "linearly from 0 [0.2; 0 imagenet]."),
    cutout: Optional[int] = typer.Option(None, "--cutout", min=0, help="Cutout square side, 0 = off [16; 0]."),
    label_smoothing: Optional[float] = typer.Option(None, "--label-smoothing", help="[0; 0.1 imagenet]."),
    grad_clip: Optional[float] = typer.Option(None, "--grad-clip", help="Gradient-norm clip [5]."),
    seed: int = typer.Option(0, "--seed", help="Seeds weights, data order and augmentation."),
    subset: Optional[int] = typer.Option(None, "--subset", min=1, help="Train on a class-balanced N images."),
    test_subset: Optional[int] = typer.Option(None, "--test-subset", min=1, help="Test on N images."),
    in_channels: Optional[int] = typer.Option(None, "--in-channels", help="Force 1 or 3 input channels "
                                              "(default: the data's)."),
    amp: str = typer.Option("auto", "--amp", help="auto (by GPU capability: bf16 on >= 8.0, fp16 on 7.x, "
                                                  "off on older GPUs and the CPU) | off | bf16 | fp16"),
    channels_last: Optional[bool] = typer.Option(None, "--channels-last/--no-channels-last",
                                                 help="Memory format [on: measured faster on CPU and CUDA]."),
    threads: Optional[str] = typer.Option(None, "--threads", help="CPU intra-op threads: 0 (one per physical core), "
                                          "N, or auto (use the cores other processes leave free; a run is then not "
                                          "bitwise reproducible) [0]."),
    download: bool = typer.Option(False, "--download", help="Download cifar10/cifar100 if missing."),
    out: Optional[Path] = typer.Option(None, "--out", help="Run folder [runs/train-<genotype>]."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last.pt."),
    stop_after: Optional[int] = typer.Option(None, "--stop-after", min=1,
                                             help="Stop after N epochs of this call (finish later with --resume)."),
    device: str = DeviceOpt,
    json_out: bool = JsonOpt,
    quiet: bool = QuietOpt,
) -> None:
    """Train a genotype from scratch (DARTS evaluation protocol); works under torchrun (DDP)."""
    from dataclasses import replace

    from edgenas.device import resolve_device
    from edgenas.distributed import dist_from_env
    from edgenas.genotypes import genotype_label, load_genotype
    from edgenas.train import TrainConfig, default_run_folder, protocol_defaults, train

    # the setting's published protocol, with what the user gave in its place
    cfg: TrainConfig = replace(protocol_defaults(setting), seed=seed, subset=subset, test_subset=test_subset,
                               in_channels=in_channels, amp=amp, channels_last=channels_last,
                               **given(channels=channels, layers=layers, epochs=epochs, batch_size=batch_size, lr=lr,
                                       momentum=momentum, weight_decay=weight_decay,
                                       auxiliary_weight=auxiliary_weight, drop_path=drop_path, cutout=cutout,
                                       label_smoothing=label_smoothing, grad_clip=grad_clip, threads=threads))
    geno = load_genotype(genotype)
    dev = resolve_device(device)
    main_rank = dist_from_env().main
    result = train(geno, cfg, data, out=out or default_run_folder(genotype), device=dev, resume=resume,
                   stop_after=stop_after, quiet=quiet or not main_rank, download=download,
                   genotype_name=genotype_label(genotype))
    if not main_rank:
        return
    summary = result.summary()
    if json_out:
        emit_json(summary)
        return
    con = out_console(json_out, quiet)
    best, last = summary["best"], summary["last"]
    con.print(f"{summary['params'] / 1e6:.3f} M params (aux head excluded), data {summary['data']['spec']} "
              f"({summary['data']['train']} train / {summary['data']['test']} test images)")
    if best is not None:
        con.print(f"test top-1 {last['test_top1']:.2f}% after {summary['epochs_done']}/{cfg.epochs} epochs (best "
                  f"{best['test_top1']:.2f}% at epoch {best['epoch'] + 1}, chosen on the test set: optimistic)")
    if result.loop.stopped_early:
        con.print(f"stopped after --stop-after {stop_after}; continue with --resume --out {result.run}")
    con.print(f"run folder: {result.run}")
