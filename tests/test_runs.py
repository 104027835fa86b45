"""The shared loop pieces: RNG capture, checkpoints, history, accuracy, evaluate, exact resume."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch import nn

from edgenas.checkpoints import load_checkpoint, save_checkpoint
from edgenas.errors import EdgenasError
from edgenas.metrics import accuracy, evaluate
from edgenas.rng import capture_rng_state, restore_rng_state, seed_everything
from edgenas.run_folder import History, RunDir
from edgenas.runs import BestRule, run_epochs


def test_rng_capture_restore_replays_every_generator():
    seed_everything(7)
    state = capture_rng_state()
    first = (torch.rand(4), np.random.rand(3), random.random())
    restore_rng_state(state)
    again = (torch.rand(4), np.random.rand(3), random.random())
    assert torch.equal(first[0], again[0])
    assert np.array_equal(first[1], again[1])
    assert first[2] == again[2]


def test_checkpoint_round_trip_and_identity_check(tmp_path):
    path = tmp_path / "ck.pt"
    save_checkpoint(path, {"config": {"genotype": {"normal": [["skip_connect", 0]]}, "setting": "cifar10"},
                           "rng": [capture_rng_state()], "w": torch.arange(3)})
    assert not list(tmp_path.glob(".*tmp")), "temp file left behind"
    doc = load_checkpoint(path, expect={"setting": "cifar10", "genotype": {"normal": [("skip_connect", 0)]}})
    assert torch.equal(doc["w"], torch.arange(3))
    with pytest.raises(EdgenasError, match=r"setting=cifar10.*setting=imagenet-mobile"):
        load_checkpoint(path, expect={"setting": "imagenet-mobile"})


def test_checkpoint_missing_and_corrupt_name_the_file(tmp_path):
    with pytest.raises(EdgenasError, match="nope.pt does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a zip at all")
    with pytest.raises(EdgenasError, match="bad.pt is corrupt"):
        load_checkpoint(bad)
    plain = tmp_path / "plain.pt"
    torch.save({"a": 1}, plain)
    with pytest.raises(EdgenasError, match="not an edgenas checkpoint"):
        load_checkpoint(plain)


def test_history_round_trip(tmp_path):
    h = History(tmp_path / "h.jsonl")
    h.append({"epoch": 0, "loss": 1.5})
    h.append({"epoch": 1, "loss": 1.25})
    back = History.read(tmp_path / "h.jsonl")
    assert back.column("loss") == [1.5, 1.25]
    (tmp_path / "h.jsonl").write_text('{"epoch": 0}\n{oops\n')
    with pytest.raises(EdgenasError, match="line 2"):
        History.read(tmp_path / "h.jsonl")


def test_accuracy_topk():
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1], [0.2, 0.3, 0.5], [0.5, 0.4, 0.1]])
    target = torch.tensor([1, 2, 2, 1])
    top1, top2, top5 = accuracy(logits, target, (1, 2, 5))
    assert top1 == pytest.approx(50.0)   # rows 0 and 2
    assert top2 == pytest.approx(75.0)   # row 3's second choice is 1
    assert top5 == pytest.approx(100.0)  # k beyond the class count means every class


def test_evaluate_matches_a_direct_computation():
    torch.manual_seed(0)
    model = nn.Linear(6, 4)
    xs, ys = torch.randn(10, 6), torch.randint(0, 4, (10,))
    batches = [(xs[:4], ys[:4]), (xs[4:], ys[4:])]
    out = evaluate(model, batches, torch.device("cpu"))
    logits = model(xs)
    assert out["loss"] == pytest.approx(nn.functional.cross_entropy(logits, ys).item(), rel=1e-6)
    assert out["top1"] == pytest.approx(accuracy(logits, ys, (1,))[0])


def _tiny_loop(root, *, epochs, resume=False, stop_after=None):
    """A toy model trained with noise drawn from the global RNG, so resume must restore it."""
    seed_everything(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.3), nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)

    def epoch_fn(epoch, progress):
        g = torch.Generator().manual_seed(epoch)  # data: a function of the epoch only
        x, y = torch.randn(16, 4, generator=g), torch.randint(0, 2, (16,), generator=g)
        model.train()
        loss = nn.functional.cross_entropy(model(x + 0.1 * torch.randn_like(x)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        return {"loss": loss.item(), "score": -loss.item()}

    result = run_epochs(RunDir(root), kind="toy", epochs=epochs, stateful={"model": model, "opt": opt,
                        "sched": sched}, config={"width": 8, "epochs": epochs}, identity={"width": 8},
                        epoch_fn=epoch_fn, device=torch.device("cpu"), resume=resume,
                        best=BestRule("score"), stop_after=stop_after, quiet=True)
    return model, result


def test_run_epochs_resume_is_bitwise_exact(tmp_path):
    straight, full = _tiny_loop(tmp_path / "a", epochs=3)
    _, part = _tiny_loop(tmp_path / "b", epochs=3, stop_after=2)
    assert part.stopped_early and part.epochs_done == 2
    resumed, rest = _tiny_loop(tmp_path / "b", epochs=3, resume=True)
    for p, q in zip(straight.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(p, q)
    assert [r["loss"] for r in rest.history.records] == [r["loss"] for r in full.history.records]
    assert len(History.read(tmp_path / "b" / "history.jsonl").records) == 3
    assert (tmp_path / "b" / "best.pt").exists() and (tmp_path / "b" / "config.json").exists()


def test_run_epochs_refuses_overwrite_and_missing_resume(tmp_path):
    _tiny_loop(tmp_path / "a", epochs=1)
    with pytest.raises(EdgenasError, match="already holds"):
        _tiny_loop(tmp_path / "a", epochs=1)
    with pytest.raises(EdgenasError, match="cannot resume"):
        _tiny_loop(tmp_path / "new", epochs=1, resume=True)


def test_cpu_runs_keep_freed_memory_in_the_heap(tmp_path, monkeypatch):
    """Search and training on the CPU reuse freed activations (see device.keep_cpu_memory)."""
    calls = []
    monkeypatch.setattr("edgenas.runs.keep_cpu_memory", lambda: calls.append(1) or "kept")
    _tiny_loop(tmp_path / "a", epochs=1)
    assert calls == [1]
