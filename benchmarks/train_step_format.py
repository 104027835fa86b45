"""One training step of an evaluation network in NCHW vs channels_last, interleaved, one process.

Decides the ``--channels-last`` default per device from a measurement rather than habit.

    .venv/bin/python benchmarks/train_step_format.py [--genotype DARTS_V2 --channels 16 --layers 8 --batch 96]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from edgenas.device import resolve_device, synchronize
from edgenas.genotypes import load_genotype
from edgenas.nets import build_network, default_config


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--genotype", default="DARTS_V2")
    ap.add_argument("--channels", type=int, default=16)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--batch", type=int, default=96)
    ap.add_argument("--hw", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    device = resolve_device(args.device)
    g = load_genotype(args.genotype)
    cfg = default_config("cifar10", C=args.channels, layers=args.layers, input_hw=(args.hw, args.hw))

    steps = {}
    for fmt in (torch.contiguous_format, torch.channels_last):
        torch.manual_seed(0)
        net = build_network(g, cfg, device=device).to(memory_format=fmt).train()
        x = torch.randn(args.batch, 3, args.hw, args.hw, device=device).contiguous(memory_format=fmt)
        y = torch.randint(0, 10, (args.batch,), device=device)
        opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)

        def step(net: nn.Module = net, x: torch.Tensor = x, y: torch.Tensor = y, opt=opt) -> None:
            logits, aux = net(x)
            loss = nn.functional.cross_entropy(logits, y) + 0.4 * nn.functional.cross_entropy(aux, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        step()
        step()
        steps["channels_last" if fmt is torch.channels_last else "NCHW"] = step

    times: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(args.rounds):  # interleaved, so a burst of load hits both formats alike
        for name, fn in steps.items():
            synchronize(device)
            t = time.perf_counter()
            fn()
            synchronize(device)
            times[name].append(time.perf_counter() - t)
    for name, ts in times.items():
        print(f"{name:14s} median {statistics.median(ts) * 1e3:8.1f} ms per step  "
              f"(min {min(ts) * 1e3:.1f}, max {max(ts) * 1e3:.1f}, n {len(ts)})")
    ratio = statistics.median(times["NCHW"]) / statistics.median(times["channels_last"])
    print(f"NCHW / channels_last: {ratio:.2f}x on {device} ({args.genotype}, C={args.channels}, "
          f"{args.layers} cells, batch {args.batch}, {args.hw}x{args.hw}, torch threads {torch.get_num_threads()})")


if __name__ == "__main__":
    main()
