"""Seconds per search step, images per second and peak memory of every search method, side by side.

One search step = one architecture step (validation batch) + one weight step (training batch), the
exact code the search loop runs (:class:`edgenas.search.loop.BilevelStep`). Every method runs in its
own subprocess at the same settings (default C=16, 8 cells, 4 nodes, batch 64, 32x32 images, 10
classes, random data, the method's own default space).

Steps are interleaved with the reference method's (``darts``): one reference process stays alive,
and each other method's process, in turn, alternates steps with it (reference, method, method,
reference, ...). Each ratio is the reference's median over the steps interleaved with that method
divided by the method's median. On the shared dev VM the speed of the whole machine drifts by ~30 %
over minutes (the same process stepped at 2.5 s, then 3.3 s); measured one after the other, that
drift went straight into the ratios, interleaved it cancels.

Memory, two honest CPU measures (on CUDA: ``torch.cuda.max_memory_allocated`` minus what was
allocated before the first step):
* peak RSS delta: the process's resident-set high-water mark during the steps (VmHWM, reset through
  /proc/self/clear_refs just before them) minus the RSS right before them. It includes activations,
  gradients, optimiser state and allocator slack.
* saved activations: bytes of the distinct tensor storages autograd keeps for backward during one
  architecture-step and one weight-step forward (``torch.autograd.graph.saved_tensors_hooks``).

`--base` adds, per method, a row timed with operators none and skip_connect only: the method's
fixed cost (stem, preprocessing, channel selection and merging, cell outputs, classifier, optimisers),
which no faster operator removes; the table is then followed by each step split into that fixed part
and its operators. `--ops` gives every method the same operators (e.g. one candidate at a time).

`--busy N` instead times each method's step alternately quiet and beside N busy loops and
reports the slowdown (each timed step follows `--settle` untimed ones in the same state);
`--threads auto` runs the workers as `edgenas search --threads auto` does (threads matched to the
free cores between steps), `--spin-count` sets their GOMP_SPINCOUNT and `--omp-wait` their
OMP_WAIT_POLICY (libgomp's default when neither is set: spin 300000 iterations, then sleep).

`--path reference` times every method without the fast path (``SupernetConfig.fast_path=False``:
the reference edges of ``edgenas/search/edges.py`` and stock torch layers); the default, `fast`, is
what a search runs.

`--nproc N` instead compares, per method, N processes x 1 thread (``torch.distributed.run``, gloo on
the CPU, NCCL with one GPU each) against 1 process x N threads, at the same global batch: images per
second of the distributed search step (each rank takes batch/N images of each half and the two
optimisers' gradients are all-reduced, exactly as ``edgenas search`` under torchrun). The two
configurations run one after the other, ``--rounds`` times alternating.

    .venv/bin/python benchmarks/search_step.py [--methods darts,pc_darts,el_darts] [--steps 5] [--base]
    .venv/bin/python benchmarks/search_step.py --methods darts,pc_darts,el_darts --path reference
    .venv/bin/python benchmarks/search_step.py --methods el_darts --busy 1 [--threads auto] [--spin-count 300000]
    .venv/bin/python benchmarks/search_step.py --nproc 2 [--methods darts] [--steps 10] [--rounds 3]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BASE_OPS = "none,skip_connect"  # the cheapest space: what remains is the method's fixed cost


def _rss_bytes(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _saved_bytes(fn: Any) -> int:
    import torch

    seen: set[int] = set()
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        st = t.untyped_storage()
        if st.data_ptr() not in seen:
            seen.add(st.data_ptr())
            total += st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total


def _space(ops: str) -> Any:
    """``--ops`` as a SearchSpace (None: each method's own); raises EdgenasError on a bad list."""
    from edgenas.space import SearchSpace

    return SearchSpace(tuple(ops.split(","))) if ops else None


def _reply(obj: dict[str, Any]) -> None:
    print(json.dumps(obj), flush=True)


def _supernet_step(args: argparse.Namespace, method_name: str, device: Any) -> tuple[Any, Any, tuple[str, ...], bool]:
    """The method's supernet (seed 0, as a search starts) and its bilevel step, in the layout the
    search would choose: (network, step, operators, channels_last)."""
    import torch

    from edgenas.search import make_method
    from edgenas.search.loop import BilevelStep, SearchConfig, use_channels_last
    from edgenas.search.supernet import Supernet, SupernetConfig

    torch.manual_seed(0)
    method = make_method(method_name)
    ops = method.resolve_space(_space(args.ops)).ops
    net_cfg = SupernetConfig(ops=ops, C=args.channels, layers=args.layers, steps=args.nodes,
                             cell_residual=method.cell_residual, fast_path=args.path == "fast")
    method.check(net_cfg)
    cfg = SearchConfig(batch_size=args.batch, channels=args.channels, layers=args.layers, nodes=args.nodes,
                       channels_last={"auto": None, "channels_last": True, "contiguous": False}[args.format])
    cl = use_channels_last(cfg, device)
    net = Supernet(method, net_cfg, device=device)
    if cl:
        net = net.to(memory_format=torch.channels_last)
    return net, BilevelStep(net, cfg, channels_last=cl), ops, cl


def worker(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from edgenas.device import cpu_allocator, keep_cpu_memory, resolve_device
    from edgenas.threads import parse_threads, thread_policy

    # as `edgenas search --threads` does; under auto the governor decides between steps (the
    # worker process ends with the benchmark, so the policy is never left)
    governor = contextlib.ExitStack().enter_context(thread_policy(parse_threads(args.threads)))
    device = resolve_device(args.device)
    if device.type == "cpu":
        keep_cpu_memory()  # as a search run does (edgenas.runs.run_epochs)
    net, step, ops, cl = _supernet_step(args, args.worker, device)
    g = torch.Generator().manual_seed(1)
    xs = [torch.randn(args.batch, 3, args.hw, args.hw, generator=g).to(device) for _ in range(2)]
    ys = [torch.randint(0, 10, (args.batch,), generator=g).to(device) for _ in range(2)]

    def one_step() -> None:
        step.arch_step(xs[1], ys[1], epoch=0)
        step.weight_step(xs[0], ys[0])
        if governor is not None:
            governor.tick()

    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        base = _rss_bytes("VmRSS")
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
    for _ in range(args.warmup):
        one_step()
    # the driver now asks for one timed step at a time, interleaving them with another process's
    _reply({"ready": True})
    times = []
    for line in sys.stdin:
        if line.strip() != "step":
            break
        if cuda:
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        one_step()
        if cuda:
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
        _reply({"t": times[-1], "threads": torch.get_num_threads()})
    peak = (torch.cuda.max_memory_allocated(device) if cuda else _rss_bytes("VmHWM")) - base

    def forward_arch() -> None:
        from edgenas.search.supernet import freeze

        with freeze(step.weights):
            step.arch_loss(xs[1], ys[1], 0)

    def forward_weights() -> None:
        from edgenas.search.supernet import freeze

        with freeze(step.arch):
            net(step._input(xs[0]))

    saved = max(_saved_bytes(forward_arch), _saved_bytes(forward_weights))
    t = statistics.median(times)
    return {"method": args.worker, "ops": len(ops), "channels_last": cl, "step_s": t,
            "step_s_all": [round(v, 4) for v in times], "images_per_s": 2 * args.batch / t,
            "peak_bytes": peak, "peak_kind": "cuda-max-allocated" if cuda else "cpu-peak-rss-delta",
            "saved_bytes": saved, "threads": torch.get_num_threads(), "allocator": cpu_allocator(),
            "params": sum(p.numel() for p in net.weight_parameters()),
            "arch_params": sum(p.numel() for p in net.arch_parameters())}


# --- --nproc: N processes x 1 thread against 1 process x N threads ---------------------------------

def dist_worker(args: argparse.Namespace) -> dict[str, Any] | None:
    """One rank (or the one process) of the --nproc comparison: timed distributed search steps."""
    import torch

    from edgenas.device import keep_cpu_memory, resolve_device
    from edgenas.distributed import barrier, init_distributed, shutdown

    torch.set_num_threads(int(args.threads))
    info, device = init_distributed(resolve_device(args.device))
    if device.type == "cpu":
        keep_cpu_memory()
    net, step, ops, cl = _supernet_step(args, args.dist_worker, device)  # the same supernet on every rank
    per_rank = args.batch // info.world
    g = torch.Generator().manual_seed(1 + info.rank)  # each rank its own shard
    xs = [torch.randn(per_rank, 3, args.hw, args.hw, generator=g).to(device) for _ in range(2)]
    ys = [torch.randint(0, 10, (per_rank,), generator=g).to(device) for _ in range(2)]
    cuda = device.type == "cuda"

    def one_step() -> float:
        barrier()
        if cuda:
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        step.arch_step(xs[1], ys[1], epoch=0)
        step.weight_step(xs[0], ys[0])
        if cuda:
            torch.cuda.synchronize(device)
        return time.perf_counter() - t0

    for _ in range(args.warmup):
        one_step()
    times = [one_step() for _ in range(args.steps)]
    shutdown()
    if not info.main:
        return None
    t = statistics.median(times)
    return {"method": args.dist_worker, "processes": info.world, "threads": torch.get_num_threads(),
            "backend": ("nccl" if cuda else "gloo") if info.active else "-", "device": str(device),
            "step_s": t, "step_s_all": [round(v, 4) for v in times], "images_per_s": 2 * args.batch / t}


def _dist_command(args: argparse.Namespace, method: str, processes: int) -> list[str]:
    common = [str(Path(__file__).resolve()), "--dist-worker", method, "--channels", str(args.channels),
              "--layers", str(args.layers), "--nodes", str(args.nodes), "--batch", str(args.batch),
              "--hw", str(args.hw), "--steps", str(args.steps), "--warmup", str(args.warmup),
              "--device", args.device, "--format", args.format, "--ops", args.ops, "--path", args.path]
    if processes == 1:
        return [sys.executable, *common, "--threads", str(args.nproc)]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
            *common, "--threads", "1"]


def _run_dist(args: argparse.Namespace, method: str, processes: int) -> dict[str, Any]:
    env = {**os.environ, "OMP_NUM_THREADS": "1" if processes > 1 else str(args.nproc),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(_dist_command(args, method, processes), env=env, capture_output=True, text=True,
                          check=False)
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not rows:
        errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
        sys.exit(f"{processes}-process run of {method} failed: " + (errors[0] if errors else proc.stderr[-3000:]))
    return rows[-1]


def compare_processes(args: argparse.Namespace) -> None:
    """The --nproc table: per method, N x 1 against 1 x N, alternating ``--rounds`` times."""
    if args.batch % args.nproc:
        sys.exit(f"--batch {args.batch} does not split over --nproc {args.nproc}: use a multiple of it")
    rows = []
    for method in args.methods.split(","):
        runs: dict[int, list[dict[str, Any]]] = {1: [], args.nproc: []}
        for _ in range(args.rounds):
            for processes in (1, args.nproc):
                runs[processes].append(_run_dist(args, method, processes))
                print(f"measured {method}, {processes} process(es)", file=sys.stderr)
        for _processes, rs in runs.items():
            rows.append({**rs[-1], "images_per_s": statistics.median(r["images_per_s"] for r in rs),
                         "images_per_s_rounds": [round(r["images_per_s"], 2) for r in rs]})
    load = os.getloadavg()
    if args.json:
        print(json.dumps({"settings": vars(args), "loadavg": load, "rows": rows}, indent=2))
        return
    print(f"distributed search step (1 architecture + 1 weight step, gradients all-reduced) at global batch "
          f"{args.batch}: C={args.channels}, {args.layers} cells, {args.nodes} nodes, {args.hw}x{args.hw}, "
          f"device {args.device}; {args.warmup} warm-up then {args.steps} timed steps (median), "
          f"{args.rounds} round(s) alternating, median over rounds")
    print(f"{'method':<12}{'processes':>10}{'threads':>8}{'backend':>9}{'s/step':>9}{'img/s':>9}  rounds img/s")
    for r in rows:
        print(f"{r['method']:<12}{r['processes']:>10}{r['threads']:>8}{r['backend']:>9}{r['step_s']:>9.3f}"
              f"{r['images_per_s']:>9.1f}  {r['images_per_s_rounds']}")
    print(f"load average at the end (1/5/15 min): {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


def _policy(args: argparse.Namespace) -> str:
    return os.environ.get("OMP_WAIT_POLICY", "unset") if args.omp_wait == "inherit" else args.omp_wait.upper()


class Worker:
    """One method's benchmark process: it builds and warms up, then runs a timed step when asked."""

    def __init__(self, name: str, args: argparse.Namespace, ops: str | None = None) -> None:
        settings = {**vars(args), "ops": args.ops if ops is None else ops}
        cmd = [sys.executable, __file__, "--worker", name] + [
            a for k in ("channels", "layers", "nodes", "batch", "hw", "warmup", "threads", "device", "format", "ops",
                        "path")
            for a in (f"--{k}", str(settings[k]))]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        if args.omp_wait != "inherit":
            env["OMP_WAIT_POLICY"] = args.omp_wait.upper()
        _spin_env(env, args)
        self.name = name
        self.err = tempfile.TemporaryFile("w+")  # a file, not a pipe: a full pipe would block the worker
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.err,
                                     text=True, cwd=ROOT, env=env)
        self._read()  # built and warmed up

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("{"):
                return json.loads(line)
        self.err.seek(0)
        sys.exit(f"{self.name} failed:\n{self.err.read()}")

    def _send(self, command: str) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self._read()

    def step(self) -> float:
        return float(self._send("step")["t"])

    def step_threads(self) -> tuple[float, int]:
        """One timed step and the thread count it ran with."""
        reply = self._send("step")
        return float(reply["t"]), int(reply["threads"])

    def finish(self) -> dict[str, Any]:
        row = self._send("done")
        self.proc.wait()
        return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", default="darts,pc_darts,adarts,swd,el_darts,attn_darts")
    p.add_argument("--channels", type=int, default=16)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--nodes", type=int, default=4)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--hw", type=int, default=32)
    p.add_argument("--steps", type=int, default=5, help="timed steps per method (median reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--threads", default="0",
                   help="torch threads: 0 (torch's default), N, or auto (edgenas.threads: matched between steps "
                        "to the cores other processes leave free, as `edgenas search --threads auto`)")
    p.add_argument("--settle", type=int, default=2,
                   help="--busy: untimed steps after each switch of the busy loops before the timed one (a "
                        "load that lasts, not the instant it starts; --threads auto decides between steps)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--format", choices=("auto", "channels_last", "contiguous"), default="auto",
                   help="memory format (auto: the search's default for the device)")
    p.add_argument("--omp-wait", choices=("passive", "active", "inherit"), default="inherit",
                   help="OMP_WAIT_POLICY of the workers (inherit: this environment's, what `edgenas search` "
                        "runs with). On a CPU shared with other jobs spinning OpenMP threads made steps up to "
                        "10x slower: use passive there (on a quiet machine it made every method ~27%% slower)")
    p.add_argument("--path", choices=("fast", "reference"), default="fast",
                   help="the supernet's fast path (default) or its reference edges (SupernetConfig.fast_path)")
    p.add_argument("--ops", default="",
                   help="comma-separated operators every method searches over (default: each method's own "
                        "space). `--ops none,skip_connect` times everything but the candidate operators: "
                        "stem, preprocessing, channel selection and merging, cell outputs, classifier, optimisers")
    p.add_argument("--base", action="store_true",
                   help=f"also time each method with operators {BASE_OPS} only (a row '<method> base', "
                        "interleaved with the reference like the others): what the method costs besides its "
                        "candidate operators, which no operator speed-up removes")
    p.add_argument("--spin-count", default="inherit",
                   help="GOMP_SPINCOUNT of the workers (inherit: this environment's; libgomp's own default "
                        "is 300000)")
    p.add_argument("--busy", type=int, default=0, metavar="N",
                   help="run N busy loops beside the workers in alternate steps and report, per method, the "
                        "median step with them running over the median without (the slowdown under load)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--nproc", type=int, default=0,
                   help="compare N processes x 1 thread with 1 process x N threads (see above)")
    p.add_argument("--rounds", type=int, default=2, help="--nproc: alternating rounds of the two runs")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--dist-worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        _reply(worker(args))
        return
    if args.busy:
        busy_main(args)
        return
    if args.dist_worker:
        from edgenas.errors import EdgenasError

        try:
            row = dist_worker(args)
        except EdgenasError as e:  # e.g. --partial-k and --channels that do not fit: one line
            print(e.one_line(), file=sys.stderr)
            sys.exit(e.exit_code)
        if row is not None:
            _reply(row)
        return

    names = args.methods.split(",")
    from edgenas.errors import EdgenasError
    from edgenas.search import make_method

    try:  # a bad name is one line here, not a worker's traceback after minutes of warm-up
        for name in names:
            make_method(name)
        _space(args.ops)
    except EdgenasError as e:
        print(e.one_line(), file=sys.stderr)
        sys.exit(e.exit_code)
    if args.nproc:
        compare_processes(args)
        return
    ref_name = "darts" if "darts" in names else names[0]
    ref = Worker(ref_name, args)
    rows: dict[str, dict[str, Any]] = {}
    ref_times: dict[str, list[float]] = {}  # the reference's steps interleaved with each row's
    runs = [(name, name, None) for name in names]
    if args.base:
        runs = [r for name in names for r in ((name, name, None), (f"{name} base", name, BASE_OPS))]
    for label, name, ops in runs:
        if label == ref_name:
            continue
        other = Worker(name, args, ops)
        ref_times[label] = []
        for i in range(args.steps):
            for w in ((ref, other) if i % 2 == 0 else (other, ref)):  # ABBA: a trend hits both alike
                t = w.step()
                if w is ref:
                    ref_times[label].append(t)
        rows[label] = {**other.finish(), "method": label}
        print(f"measured {label} (interleaved with {ref_name})", file=sys.stderr)
    if len(names) == 1:
        for _ in range(args.steps):
            ref.step()
    rows[ref_name] = ref.finish()
    rows = {label: rows[label] for label, _, _ in runs}
    for name, r in rows.items():
        r["ref_step_s"] = statistics.median(ref_times[name]) if name in ref_times else r["step_s"]
        r["x_throughput"] = r["ref_step_s"] / r["step_s"]
    ref_row = rows[ref_name]
    load = os.getloadavg()
    if args.json:
        print(json.dumps({"settings": vars(args), "loadavg": load, "reference": ref_name,
                          "rows": list(rows.values())}, indent=2))
        return
    first = next(iter(rows.values()))
    width = max(11, max(len(n) for n in rows) + 2)
    ops_desc = args.ops or "each method's own"
    print(f"search step = 1 architecture step + 1 weight step; C={args.channels}, {args.layers} cells, "
          f"{args.nodes} nodes, batch {args.batch}, {args.hw}x{args.hw}, "
          f"operators {ops_desc}, {args.path} path, device {args.device}, "
          f"threads {first['threads']} (OMP_WAIT_POLICY {_policy(args)}), CPU allocator {first['allocator']}, "
          f"{args.warmup} warm-up steps, then "
          f"{args.steps} steps interleaved with {ref_name}'s (medians); ratios to {ref_name}")
    print(f"{'method':<{width}}{'ops':>4}{'s/step':>9}{'img/s':>8}{ref_name + ' s':>9}{'x thr':>7}{'peak RSS MiB':>14}"
          f"{'x mem':>7}{'saved MiB':>11}{'x saved':>9}")
    for r in rows.values():
        print(f"{r['method']:<{width}}{r['ops']:>4}{r['step_s']:>9.3f}{r['images_per_s']:>8.1f}{r['ref_step_s']:>9.3f}"
              f"{r['x_throughput']:>7.2f}{r['peak_bytes'] / 2**20:>14.0f}"
              f"{r['peak_bytes'] / ref_row['peak_bytes']:>7.2f}{r['saved_bytes'] / 2**20:>11.0f}"
              f"{r['saved_bytes'] / ref_row['saved_bytes']:>9.2f}")
    print(f"{ref_name} s: {ref_name}'s median over the steps interleaved with that method's; x thr = {ref_name} s / "
          f"s/step. Load average at the end (1/5/15 min): {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; "
          f"memory: {first['peak_kind']} and autograd-saved tensors of one forward (max of the two steps)")
    ref_base = rows.get(f"{ref_name} base")
    if ref_base:
        _print_split(rows, ref_name, 1 / ref_base["x_throughput"])


def _print_split(rows: dict[str, dict[str, Any]], ref_name: str, ref_fixed: float) -> None:
    """Each method's step split into its fixed part (the base row) and its operators, as fractions of
    the reference's step (ratios, so the machine's drift cancels as in the table)."""
    print(f"Split of each step, in units of {ref_name}'s step: fixed = the base row ({BASE_OPS}), "
          f"operators = the rest; {ref_name}'s fixed part is {ref_fixed:.3f}, its operators {1 - ref_fixed:.3f}")
    for label, r in rows.items():
        b = rows.get(f"{label} base")
        if b is None or label == ref_name:
            continue
        step, fixed = 1 / r["x_throughput"], 1 / b["x_throughput"]
        ops = step - fixed
        if ops <= 0:  # operators as cheap as none and skip_connect: within the run's noise
            print(f"  {label}: fixed {fixed:.3f}, operators within noise of nothing")
            continue
        print(f"  {label}: fixed {fixed:.3f}, operators {ops:.3f} ({(1 - ref_fixed) / ops:.2f}x fewer than "
              f"{ref_name}'s); with {ref_name}'s fixed part and these operators: {1 / (ref_fixed + ops):.2f}x")


# --- --busy: the slowdown of a search step beside other busy processes ------------------------------

#: How a user chooses OpenMP's waiting policy: libgomp reads the first two, Intel's runtime the third.
OMP_KNOBS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")


def _spin_env(env: dict[str, str], args: argparse.Namespace) -> None:
    """The workers' OpenMP spin: the environment's (inherit) or the given GOMP_SPINCOUNT."""
    if args.spin_count != "inherit":
        env["GOMP_SPINCOUNT"] = str(int(args.spin_count))


def _busy_loops(n: int) -> list[subprocess.Popen]:
    """``n`` processes spinning in pure Python, started stopped (SIGSTOP) until asked to run."""
    import signal

    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    for p in procs:
        p.send_signal(signal.SIGSTOP)
    return procs


def _set_busy(procs: list[subprocess.Popen], on: bool) -> None:
    import signal

    for p in procs:
        p.send_signal(signal.SIGCONT if on else signal.SIGSTOP)
    time.sleep(0.2)  # let the scheduler spread the change over the cores before the step starts


def busy_main(args: argparse.Namespace) -> None:
    """Each method's step, alternately quiet and beside ``--busy`` loops (ABBA order, so a drift of
    the machine's speed hits both sides alike), and the ratio of the two medians."""
    procs = _busy_loops(args.busy)
    rows = []
    try:
        for name in args.methods.split(","):
            w = Worker(name, args)  # built and warmed up while the loops are stopped
            quiet: list[float] = []
            busy: list[float] = []
            threads: dict[bool, list[int]] = {False: [], True: []}
            for i in range(args.steps):
                for on in ((False, True) if i % 2 == 0 else (True, False)):
                    _set_busy(procs, on)
                    for _ in range(args.settle):
                        w.step()
                    t, n = w.step_threads()
                    (busy if on else quiet).append(t)
                    threads[on].append(n)
            _set_busy(procs, False)
            w.finish()
            q, b = statistics.median(quiet), statistics.median(busy)
            rows.append({"method": name, "threads": args.threads, "quiet_threads": threads[False],
                         "busy_threads": threads[True], "quiet_step_s": q, "busy_step_s": b,
                         "slowdown": b / q, "quiet_all": [round(v, 4) for v in quiet],
                         "busy_all": [round(v, 4) for v in busy]})
            print(f"measured {name}", file=sys.stderr)
    finally:
        for p in procs:
            p.kill()
            p.wait()
    env = dict(os.environ)  # what the workers ran with (see Worker)
    if args.omp_wait != "inherit":
        env["OMP_WAIT_POLICY"] = args.omp_wait.upper()
    _spin_env(env, args)
    omp = {k: env.get(k) for k in OMP_KNOBS}
    if args.json:
        print(json.dumps({"settings": vars(args), "omp": omp, "cpus": os.cpu_count(), "loadavg": os.getloadavg(),
                          "rows": rows}, indent=2))
        return
    print(f"search step quiet vs beside {args.busy} busy loop(s) on {os.cpu_count()} CPUs; C={args.channels}, "
          f"{args.layers} cells, {args.nodes} nodes, batch {args.batch}; OpenMP {omp}; "
          f"{args.steps} steps each way (medians), {args.settle} untimed steps after each switch")
    print(f"{'method':<12}{'threads':>8}{'quiet s':>10}{'busy s':>10}{'slowdown':>10}  threads used quiet / busy")
    for r in rows:
        print(f"{r['method']:<12}{r['threads']:>8}{r['quiet_step_s']:>10.3f}{r['busy_step_s']:>10.3f}"
              f"{r['slowdown']:>9.2f}x  {r['quiet_threads']} / {r['busy_threads']}")


if __name__ == "__main__":
    main()
