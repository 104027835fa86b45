"""The search loop end to end on tiny synthetic data: every method, history, files, exact resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from edgenas.genotypes import load_genotype
from edgenas.rng import seed_everything
from edgenas.run_folder import History
from edgenas.search import METHODS, make_method
from edgenas.search.loop import SearchConfig, search, skip_count
from edgenas.search.supernet import Supernet, SupernetConfig

CPU = torch.device("cpu")
DATA = "synthetic:40"  # 16x16 images; --subset 16 -> 8 + 8 images, 2 steps of 4 per epoch


def assert_same(a, b, where: str) -> None:
    """Bitwise equality of nested state dicts (tensors compared exactly)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def _settings(name: str) -> dict:
    return {"partial_k": 2} if name in ("pc_darts", "adarts", "swd", "el_darts") else {}


def cfg(**kw) -> SearchConfig:
    base = dict(epochs=2, warmup_epochs=0, batch_size=4, layers=3, channels=4, nodes=2, subset=16)
    return SearchConfig(**{**base, **kw})


def run(name: str, out: Path, **kw):
    return search(make_method(name, _settings(name)), None, cfg(**kw.pop("cfg", {})), DATA, out=out,
                  device=CPU, quiet=True, **kw)


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_searches_end_to_end(name, tmp_path):
    result = run(name, tmp_path / name, cfg={"epochs": 1})
    history = History.read(tmp_path / name / "history.jsonl").records
    assert len(history) == 1
    r = history[0]
    ops = result.ops
    assert len(r["op_weights"]["normal"]) == 5 and len(r["op_weights"]["normal"][0]) == len(ops)
    assert r["val_loss"] is not None and r["train_loss"] > 0 and r["steps"] == 2
    g = load_genotype(str(tmp_path / name / "genotype.json"))
    g.validate(ops)
    assert g == result.genotype and r["normal_skip_connect"] == skip_count(g.normal)
    assert (tmp_path / name / "genotypes" / "epoch_001.json").exists()
    assert all(p.stat().st_size > 0 for p in result.figures)


def test_warm_up_epochs_leave_the_architecture_at_its_initial_values(tmp_path):
    run("pc_darts", tmp_path / "pc", cfg={"warmup_epochs": 1}, stop_after=1)
    ckpt = torch.load(tmp_path / "pc" / "last.pt", weights_only=True)
    seed_everything(0)
    method = make_method("pc_darts", _settings("pc_darts"))
    fresh = Supernet(method, SupernetConfig(ops=method.resolve_space(None).ops, C=4, layers=3, steps=2))
    for key, value in fresh.state_dict().items():
        if key.startswith("arch."):
            assert torch.equal(value, ckpt["state"]["model"][key]), key
    record = ckpt["history"][0]
    assert not record["arch_updates"] and record["val_loss"] is None


def test_history_records_each_epochs_search_state(tmp_path):
    result = run("el_darts", tmp_path / "el", cfg={"warmup_epochs": 1})
    first, second = History.read(tmp_path / "el" / "history.jsonl").records
    assert not first["arch_updates"] and second["arch_updates"] and second["val_loss"] is not None
    assert second["op_weights"] != first["op_weights"]
    for key in ("train_loss", "train_top1", "val_top1", "op_weights", "edge_weights", "genotype",
                "normal_skip_connect", "seconds", "peak_memory_bytes", "memory_kind", "temperature", "entropy", "lr"):
        assert key in second, key
    assert second["temperature"] == pytest.approx(5.0 * 0.95)
    assert second["loss_terms"]["entropy"] > 0
    assert second["peak_memory_bytes"] > 0
    edge = second["edge_weights"]["normal"]
    assert sum(edge[:2]) == pytest.approx(1.0, abs=1e-4) and sum(edge[2:5]) == pytest.approx(1.0, abs=1e-4)
    config = json.loads((tmp_path / "el" / "config.json").read_text())["config"]
    assert config["ops"] == list(result.ops) and config["warmup_epochs_used"] == 1


@pytest.mark.parametrize("name", ["el_darts", "swd"])
def test_resume_is_bitwise_identical_to_an_uninterrupted_search(name, tmp_path):
    full = run(name, tmp_path / "full")
    run(name, tmp_path / "cut", stop_after=1)
    assert len(History.read(tmp_path / "cut" / "history.jsonl").records) == 1
    assert not (tmp_path / "cut" / "genotype.json").exists()
    resumed = run(name, tmp_path / "cut", resume=True)
    assert resumed.genotype == full.genotype
    a = torch.load(tmp_path / "full" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)
    for part in ("model", "arch_optimizer", "weight_optimizer", "scheduler"):
        assert_same(a["state"][part], b["state"][part], part)

    def strip(rs):
        return [{k: v for k, v in r.items() if k not in ("seconds", "peak_memory_bytes")} for r in rs]

    assert strip(a["history"]) == strip(b["history"])
