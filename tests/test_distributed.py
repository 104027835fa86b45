"""`train` under torch.distributed.run: 2 CPU processes with gloo, DDP, sharded data, rank-0 writes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from edgenas.checkpoints import load_checkpoint
from edgenas.data.load import load_data
from edgenas.data.loaders import make_loader
from edgenas.genotypes import get_genotype
from edgenas.metrics import evaluate
from edgenas.nets import NetConfig, build_network
from edgenas.run_folder import History

SCRIPT = textwrap.dedent("""
    import sys
    from dataclasses import replace

    import torch
    import torch.distributed as dist

    from edgenas.genotypes import get_genotype
    from edgenas.train import protocol_defaults, train

    out = sys.argv[1]
    cfg = replace(protocol_defaults("cifar10"), channels=4, layers=3, epochs=1, batch_size=16, cutout=4, seed=2)
    res = train(get_genotype("DARTS_V2"), cfg, "synthetic:60", out=out + "/run", device=torch.device("cpu"),
                quiet=True)
    # the test's own probe (the library writes only on rank 0): every rank's final weights and buffers
    torch.save(res.model.state_dict(), f"{out}/rank{dist.get_rank()}.pt")
    dist.destroy_process_group()
""")


@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="this torch build has no gloo backend")
def test_two_cpu_processes_train_one_model(tmp_path):
    script = tmp_path / "ddp_train.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "EDGENAS_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(script), str(tmp_path)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]

    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    saved = load_checkpoint(tmp_path / "run" / "last.pt")
    for k, v in ranks[0].items():  # DDP kept parameters and (synced) BN statistics identical
        assert torch.equal(v, ranks[1][k]), k
        assert torch.equal(v, saved["state"]["model"][k]), k
    assert len(saved["rng"]) == 2  # each rank's RNG state, for an exact distributed resume

    history = History.read(tmp_path / "run" / "history.jsonl")
    assert len(history.records) == 1  # written once, by rank 0
    assert saved["config"]["world_size"] == 2
    # the sharded test evaluation counted every image once: it equals a single-process evaluation
    bundle = load_data("synthetic:60")
    net = build_network(get_genotype("DARTS_V2"), NetConfig(**saved["config"]["net"]))
    net.load_state_dict(saved["state"]["model"])
    full = evaluate(net, make_loader(bundle.test, 16, shuffle=False), torch.device("cpu"),
                    criterion=torch.nn.CrossEntropyLoss())
    assert history.records[0]["test_top1"] == pytest.approx(full["top1"])
    assert history.records[0]["test_loss"] == pytest.approx(full["loss"], rel=1e-5)
