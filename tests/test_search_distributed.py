"""`search` under torch.distributed.run: 2 CPU processes with gloo against one process.

Two ranks with batch B per rank must reach the architecture one process reaches with a batch of 2B
split into two interleaved micro-batches (``accumulate=2``): the same images, augmented alike, in
the same shards, with BatchNorm statistics per shard as each rank has them. What differs is only
the order of float sums (an all-reduce against sequential accumulation, 1 thread against 2), so
weights and architecture agree to a float tolerance and the genotype exactly. A plain batch of 2B
normalises over all 2B images at once; the test checks that this is measurably different, so the
tolerance is not vacuous.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from edgenas.checkpoints import load_checkpoint
from edgenas.cli import app
from edgenas.run_folder import History
from edgenas.search import make_method
from edgenas.search.loop import SearchConfig, check_resume_layout, search

pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                reason="this torch build has no gloo backend")

METHODS = ("darts", "pc_darts", "adarts", "swd", "el_darts", "attn_darts")
DATA = "synthetic:64"  # halves of 32: two steps of 16 per epoch, 8 per rank
CPU = torch.device("cpu")


def config(batch: int, accumulate: int = 1) -> SearchConfig:
    return SearchConfig(epochs=2, warmup_epochs=0, batch_size=batch, layers=3, channels=8, nodes=2, seed=3,
                        accumulate=accumulate)


SCRIPT = textwrap.dedent("""
    import os
    import sys

    import torch
    import torch.distributed as dist

    from edgenas.search import make_method
    from edgenas.search.loop import BilevelStep, SearchConfig, search

    # ROOT METHODS KILL RESUME: search each of METHODS into ROOT/<method>; KILL "swd:3" then searches
    # swd into ROOT/killed-swd and kills rank 1 after its 3rd step; RESUME 1 resumes them all
    root, methods, kill, resume = sys.argv[1], sys.argv[2].split(","), sys.argv[3], sys.argv[4] == "1"
    kill_method, kill_at = kill.split(":") if kill != "-" else ("", "0")
    cfg = SearchConfig(epochs=2, warmup_epochs=0, batch_size=16, layers=3, channels=8, nodes=2, seed=3)
    rank = int(os.environ["RANK"])
    steps = []  # the test's probe: each BilevelStep this rank builds, to save its final state below
    plain_init, plain_step = BilevelStep.__init__, BilevelStep.weight_step

    def init(self, *args, **kwargs):
        plain_init(self, *args, **kwargs)
        steps.append(self)

    def weight_step(self, x, y):
        out = plain_step(self, x, y)
        self.done = getattr(self, "done", 0) + 1
        if getattr(self, "kill_at", 0) == self.done and rank == 1:  # the deterministic kill, mid-epoch
            os._exit(3)
        return out

    BilevelStep.__init__, BilevelStep.weight_step = init, weight_step
    runs = [(m, m, 0) for m in methods]
    runs += [(kill_method, "killed-" + kill_method, int(kill_at))] if kill_method else []
    for m, folder, k in runs:
        BilevelStep.kill_at = k
        search(make_method(m, {}), None, cfg, "synthetic:64", out=f"{root}/{folder}", device=torch.device("cpu"),
               quiet=True, resume=resume)
        torch.save(steps[-1].net.state_dict(), f"{root}/{folder}/rank{rank}.pt")  # the library writes on rank 0 only
    dist.destroy_process_group()
""")


def _launch(tmp: Path, root: Path, methods: str, kill: str = "-",
            resume: bool = False) -> subprocess.CompletedProcess[str]:
    script = tmp / "ddp_search.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "EDGENAS_CACHE_DIR": str(tmp / "cache")}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(script), str(root), methods, kill, "1" if resume else "0"],
                          env=env, capture_output=True, text=True, check=False, timeout=300)


def _arch(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if k.startswith("arch.") or ".attention." in k}


def _one_process(out: Path, method: str, batch: int, accumulate: int, **kw) -> tuple[dict[str, torch.Tensor], dict]:
    """A one-process search; returns its final state (from last.pt) and genotype."""
    res = search(make_method(method, {}), None, config(batch, accumulate), DATA, out=out, device=CPU, quiet=True, **kw)
    return load_checkpoint(out / "last.pt")["state"]["model"], res.genotype.to_dict()


def _params(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Parameters only: BatchNorm running statistics are not used by the search (it normalises with
    batch statistics) and are rank 0's after each epoch, where one process updates them per shard."""
    return {k: v for k, v in state.items() if "running_" not in k and "num_batches_tracked" not in k}


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


KILLED = "swd"  # its data-driven weights are merged over the ranks each epoch


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """Every method searched by 2 ranks with batch 8 each, then a search whose rank 1 dies mid-way
    through epoch 2 of 2 (one launch: starting processes is the slow part)."""
    tmp = tmp_path_factory.mktemp("ddp")
    proc = _launch(tmp, tmp / "runs", ",".join(METHODS), kill=f"{KILLED}:3")
    assert proc.returncode != 0, "rank 1 was to be killed"
    for m in METHODS:
        assert (tmp / "runs" / m / "rank1.pt").exists(), proc.stdout[-2000:] + proc.stderr[-4000:]
    return tmp


@pytest.mark.parametrize("method", METHODS)
def test_two_ranks_equal_one_process_with_the_same_shards(two_ranks, tmp_path, method):
    run = two_ranks / "runs" / method
    ranks = [torch.load(run / f"rank{r}.pt", weights_only=True) for r in range(2)]
    saved = load_checkpoint(run / "last.pt")
    for k, v in ranks[0].items():  # one all-reduce per step keeps every rank's weights and architecture
        assert torch.equal(v, ranks[1][k]), k
        assert torch.equal(v, saved["state"]["model"][k]), k
    assert saved["config"]["world_size"] == 2 and saved["config"]["per_rank_batch"] == 8
    assert len(History.read(run / "history.jsonl").records) == 2  # written once, by rank 0
    assert len(list((run / "genotypes").glob("*.json"))) == 2

    state, genotype = _one_process(tmp_path / "one", method, 16, accumulate=2)
    assert _arch(state), "no architecture parameters compared"
    # sums in another order only (measured: at most 5e-8 on the architecture, 2e-7 on the weights,
    # against 2e-3 for a plain batch of 16): float tolerance, and the genotype exactly
    assert _max_diff(_arch(ranks[0]), _arch(state)) < 1e-6
    assert _max_diff(_params(ranks[0]), _params(state)) < 1e-5
    assert saved["rng"] and History.read(run / "history.jsonl").records[-1]["genotype"] == genotype


def test_plain_double_batch_differs_by_batchnorm(two_ranks, tmp_path):
    """Statistics over 16 images instead of two shards of 8: far outside the tolerance above."""
    ranks = torch.load(two_ranks / "runs" / "darts" / "rank0.pt", weights_only=True)
    state, _ = _one_process(tmp_path / "plain", "darts", 16, accumulate=1)
    assert _max_diff(_arch(ranks), _arch(state)) > 1e-4


def test_a_killed_rank_resumes_to_the_same_result(two_ranks, tmp_path):
    method = KILLED
    run = tmp_path / "runs" / method
    shutil.copytree(two_ranks / "runs" / f"killed-{method}", run)
    assert load_checkpoint(run / "last.pt")["epoch"] == 0 and not (run / "rank0.pt").exists()
    other_world = tmp_path / "one-process"
    shutil.copytree(run, other_world)

    resumed = _launch(tmp_path, tmp_path / "runs", method, resume=True)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-4000:]
    whole = torch.load(two_ranks / "runs" / method / "rank0.pt", weights_only=True)
    again = torch.load(run / "rank0.pt", weights_only=True)
    for k, v in whole.items():  # on the same world size: bitwise
        assert torch.equal(v, again[k]), k
    assert _records(run) == _records(two_ranks / "runs" / method)

    # one process with the same shards (2 micro-batches) may take over: the same images per shard
    state, genotype = _one_process(other_world, method, 16, accumulate=2, resume=True)
    assert _max_diff(_arch(whole), _arch(state)) < 1e-6
    assert genotype == _records(run)[-1]["genotype"]


def _records(run: Path) -> list[dict]:
    """The history without what a rerun measures anew (seconds, memory)."""
    skip = {"seconds", "peak_memory_bytes", "memory_kind"}
    return [{k: v for k, v in r.items() if k not in skip} for r in History.read(run / "history.jsonl").records]


def test_resume_layout_needs_the_same_shards():
    saved = {"world_size": 2, "accumulate": 1}
    check_resume_layout(saved, config(16, accumulate=2), 1, (32, 32))   # same shards: allowed
    check_resume_layout(saved, config(16, accumulate=1), 2, (32, 32))   # same world
    with pytest.raises(Exception, match="nproc_per_node 2"):
        check_resume_layout(saved, config(16, accumulate=1), 1, (32, 32))  # 1 shard instead of 2
    with pytest.raises(Exception, match="would not be the same images"):
        # 31 images pad to 32 over 2 ranks (one image twice); one process never repeats it
        check_resume_layout(saved, config(16, accumulate=2), 1, (31, 32))


def _env(rank: int, **extra: str) -> dict[str, str]:
    return {"WORLD_SIZE": "2", "RANK": str(rank), "LOCAL_RANK": str(rank), **extra}


@pytest.mark.parametrize("rank", [0, 1])
def test_batch_that_does_not_split_is_one_line_on_rank_zero(tmp_path, rank):
    res = CliRunner().invoke(app, ["search", "--data", DATA, "--batch-size", "7", "--epochs", "1",
                                   "--out", str(tmp_path / "r")], env=_env(rank))
    assert res.exit_code == 2
    out = res.output.strip()
    if rank == 0:
        assert out.count("\n") == 0 and "does not split evenly over 2 processes" in out, out
    else:
        assert out == ""
    assert not (tmp_path / "r").exists()


def test_resume_on_other_shards_is_one_line(tmp_path):
    out = tmp_path / "r"
    search(make_method("darts", {}), None, config(16, accumulate=2), DATA, out=out, device=CPU, quiet=True,
           stop_after=1)
    res = CliRunner().invoke(app, ["search", "--data", DATA, "--batch-size", "16", "--epochs", "2",
                                   "--warmup-epochs", "0", "--layers", "3", "--channels", "8", "--nodes", "2",
                                   "--seed", "3", "--out", str(out), "--resume"])
    assert res.exit_code == 2
    assert res.output.strip().count("\n") == 0
    assert "1 process(es) x 2 micro-batch(es)" in res.output and "--accumulate = 2" in res.output


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_rendezvous_is_one_line(tmp_path):
    """Rank 0 of 2 waits for a rank 1 that never comes: one line and exit 2 after the timeout."""
    env = {**os.environ, **_env(0, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()),
                                EDGENAS_DIST_TIMEOUT="1")}
    proc = subprocess.run([sys.executable, "-m", "edgenas", "search", "--data", DATA, "--batch-size", "16",
                           "--epochs", "1", "--out", str(tmp_path / "r")],
                          env=env, capture_output=True, text=True, check=False, timeout=120)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "could not reach the other processes" in lines[0], proc.stderr
    assert not (tmp_path / "r").exists()


def test_torchrun_bad_split_prints_one_line_from_the_ranks(tmp_path):
    """Under a real torchrun: rank 0's one line, no traceback from any edgenas process (torchrun's
    own launcher still summarises the failed workers)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "edgenas", "search", "--data", DATA, "--batch-size", "7", "--epochs", "1",
                           "--out", str(tmp_path / "r")],
                          env=env, capture_output=True, text=True, check=False, timeout=300)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0
    errors = [ln for ln in text.splitlines() if ln.startswith("error:")]
    assert errors == [("error: --batch-size 7 does not split evenly over 2 processes (use a --batch-size "
                       "divisible by 2)")], text[-3000:]
    assert "exitcode  : 2" in text  # the ranks' own exit status, as torchrun reports it
    assert "edgenas/" not in "".join(ln for ln in text.splitlines() if ln.lstrip().startswith("File "))
    assert not (tmp_path / "r").exists()


def test_edgenas_run_under_torchrun_says_how_to_launch(tmp_path):
    res = CliRunner().invoke(app, ["run", "--data", DATA, "--out", str(tmp_path / "r")], env=_env(0))
    assert res.exit_code == 2
    line = res.output.strip()
    assert line.count("\n") == 0 and "torchrun --nproc_per_node N -m edgenas search" in line, line
    assert not (tmp_path / "r").exists()


def test_profile_missing_is_refused_under_torchrun(tmp_path):
    """Each rank would time the missing shapes itself: budgets could differ between ranks."""
    res = CliRunner().invoke(app, ["search", "--data", DATA, "--latency-budget", "5ms", "--profile",
                                   str(tmp_path / "p.json"), "--profile-missing", "--out", str(tmp_path / "r")],
                             env=_env(0))
    assert res.exit_code == 2
    assert res.output.strip().count("\n") == 0 and "not under torchrun" in res.output, res.output


def test_accumulate_must_divide_the_batch(tmp_path):
    res = CliRunner().invoke(app, ["search", "--data", DATA, "--batch-size", "16", "--accumulate", "3",
                                   "--out", str(tmp_path / "r")])
    assert res.exit_code == 2
    assert "--batch-size 16 does not split evenly over 1 process x 3 micro-batches" in res.output, res.output


@pytest.mark.parametrize("rank", [0, 1])
def test_train_batch_that_does_not_split_is_one_line_on_rank_zero(tmp_path, rank):
    res = CliRunner().invoke(app, ["train", "DARTS_V2", "--data", DATA, "--batch-size", "7", "--epochs", "1",
                                   "--out", str(tmp_path / "r")], env=_env(rank))
    assert res.exit_code == 2
    assert (res.output.strip() == "") == (rank == 1), res.output
    assert rank == 1 or "does not split evenly over 2 processes" in res.output
