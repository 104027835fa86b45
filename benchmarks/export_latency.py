"""ONNX Runtime (CPU) vs PyTorch eager: batch-1 inference time of an exported evaluation network.

For each network (genotype at C channels and L cells), the model is exported exactly as
``edgenas export`` does and timed in the same process, ORT and PyTorch alternating in rounds (so
a change in machine load hits both), each round a warm-up-then-N-runs :func:`edgenas.device.benchmark`.
Prints the medians over rounds and ORT/eager's ratio (target: at most 0.6x). PyTorch runs as users
run it: eval mode, ``no_grad``, NCHW; at the default thread counts (ORT: physical cores, PyTorch: its
own default) and at one thread each. ``--sweep`` also times ORT at each graph optimisation level and
thread count, to show where its advantage comes from.

    .venv/bin/python benchmarks/export_latency.py [--nets 16x8,36x20] [--genotype DARTS_V2] [--sweep]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path

import numpy as np
import torch

from edgenas.device import benchmark, cpu_model
from edgenas.export import ExportSettings, OrtModel, TrainedNet, export_onnx, open_session, physical_cores
from edgenas.genotypes import load_genotype
from edgenas.nets import build_network, default_config

CPU = torch.device("cpu")


def ort_runner(path: Path, threads: int, level: str = "ORT_ENABLE_ALL") -> OrtModel:
    import onnxruntime as ort

    session, status = open_session(path, "cpu", threads=threads)
    assert session is not None, status.reason
    if level != "ORT_ENABLE_ALL":  # re-open with another optimisation level
        so = ort.SessionOptions()
        so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return OrtModel(session, status)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--genotype", default="DARTS_V2")
    ap.add_argument("--nets", default="16x8,36x20", help="comma list of CxL (channels x cells)")
    ap.add_argument("--hw", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--threads", type=int, default=0, help="ORT intra-op threads (0: physical cores)")
    ap.add_argument("--sweep", action="store_true")
    args = ap.parse_args()
    genotype = load_genotype(args.genotype)
    threads = args.threads or physical_cores()
    print(f"{cpu_model()}, {os.cpu_count()} logical CPUs, {physical_cores()} physical cores; torch "
          f"{torch.__version__} ({torch.get_num_threads()} threads); ORT intra-op threads {threads}; "
          f"load average {os.getloadavg()[0]:.2f} before")
    ratios_all = []
    with tempfile.TemporaryDirectory() as tmp:
        for spec in args.nets.split(","):
            C, L = (int(v) for v in spec.lower().split("x"))
            cfg = default_config("cifar10", C=C, layers=L, input_hw=(args.hw, args.hw))
            torch.manual_seed(0)
            model = build_network(genotype, cfg).eval()
            net = TrainedNet(model, genotype, cfg, tuple(str(i) for i in range(10)), (0.5,) * 3, (0.25,) * 3)
            path = Path(tmp) / f"{spec}.onnx"
            export_onnx(net, path, ExportSettings())
            x = torch.randn(1, *cfg.input_shape)
            xn = x.numpy()

            def eager(model: torch.nn.Module = model, x: torch.Tensor = x) -> None:
                with torch.no_grad():
                    model(x)

            # As users run them (ORT: physical cores, torch: its default), and one thread each: on a
            # shared machine the second figure is the one other jobs' load disturbs least.
            default_threads = torch.get_num_threads()
            for label, ort_threads, torch_threads in (("default threads", threads, default_threads),
                                                      ("1 thread each", 1, 1)):
                runner = ort_runner(path, ort_threads)
                with torch.no_grad():
                    diff = float(np.abs(runner.run(xn) - model(x).numpy()).max())
                ort_ms, eager_ms = [], []
                for _ in range(args.rounds):
                    ort_ms.append(benchmark(runner.timed_call(xn), CPU, runs=args.runs).median)
                    torch.set_num_threads(torch_threads)
                    eager_ms.append(benchmark(eager, CPU, runs=args.runs).median)
                    torch.set_num_threads(default_threads)
                ratios = [o / e for o, e in zip(ort_ms, eager_ms)]
                ratio = statistics.median(ratios)
                ratios_all.append(ratio)
                print(f"{args.genotype} C={C} L={L} {args.hw}x{args.hw} batch 1, {label} (ORT {ort_threads}, "
                      f"torch {torch_threads}; max |diff| {diff:.1e}): ORT-CPU {statistics.median(ort_ms):.3f} ms, "
                      f"PyTorch eager {statistics.median(eager_ms):.3f} ms -> ratio {ratio:.3f}x (rounds "
                      f"{min(ratios):.3f}..{max(ratios):.3f}; target <= 0.6x: {'met' if ratio <= 0.6 else 'NOT met'})")
            if args.sweep:
                for level in ("ORT_DISABLE_ALL", "ORT_ENABLE_BASIC", "ORT_ENABLE_EXTENDED", "ORT_ENABLE_ALL"):
                    for t in sorted({1, threads}):
                        r = ort_runner(path, t, level)
                        ms = benchmark(r.timed_call(xn), CPU, runs=args.runs).median
                        print(f"    ORT {level:<20} threads {t}: {ms:.3f} ms")
    print(f"load average {os.getloadavg()[0]:.2f} after; worst ratio {max(ratios_all):.3f}x")


if __name__ == "__main__":
    main()
