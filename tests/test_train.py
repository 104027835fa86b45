"""`edgenas train`: the DARTS protocol loop, exact resume, its CLI and its bad-input cases."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from edgenas.checkpoints import load_checkpoint
from edgenas.cli import app
from edgenas.genotypes import get_genotype
from edgenas.run_folder import History
from edgenas.train import TrainConfig, protocol_defaults, train

CPU = torch.device("cpu")
TINY = ["--channels", "4", "--layers", "3", "--batch-size", "16", "--seed", "1"]


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGENAS_CACHE_DIR", str(tmp_path / "cache"))


def _tiny_cfg(**changes) -> TrainConfig:
    tiny = replace(protocol_defaults("cifar10"), channels=4, layers=3, epochs=2, batch_size=16, cutout=4, seed=3)
    return replace(tiny, **changes)


def test_protocol_defaults_follow_darts():
    c = protocol_defaults("cifar10")
    assert (c.channels, c.layers, c.batch_size, c.lr, c.momentum, c.weight_decay) == (36, 20, 96, 0.025, 0.9, 3e-4)
    assert (c.auxiliary_weight, c.drop_path, c.cutout, c.grad_clip, c.label_smoothing) == (0.4, 0.2, 16, 5.0, 0.0)
    i = protocol_defaults("imagenet-mobile")
    assert (i.channels, i.layers, i.batch_size, i.lr, i.label_smoothing, i.drop_path) == (48, 14, 128, 0.1, 0.1, 0.0)


def test_resume_after_a_stop_gives_bitwise_identical_weights(tmp_path):
    g = get_genotype("DARTS_V2")
    cfg = _tiny_cfg()
    train(g, cfg, "synthetic:48", out=tmp_path / "straight", device=CPU, quiet=True)
    part = train(g, cfg, "synthetic:48", out=tmp_path / "split", device=CPU, quiet=True, stop_after=1)
    assert part.loop.stopped_early and part.loop.epochs_done == 1
    assert load_checkpoint(tmp_path / "split" / "last.pt")["epoch"] == 0
    train(g, cfg, "synthetic:48", out=tmp_path / "split", device=CPU, quiet=True, resume=True)
    a = load_checkpoint(tmp_path / "straight" / "last.pt")
    b = load_checkpoint(tmp_path / "split" / "last.pt")
    assert a["state"]["model"].keys() == b["state"]["model"].keys()
    for k, v in a["state"]["model"].items():
        assert torch.equal(v, b["state"]["model"][k]), k
    for sa, sb in zip(a["state"]["optimizer"]["state"].values(), b["state"]["optimizer"]["state"].values()):
        assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])
    ha, hb = History.read(tmp_path / "straight" / "history.jsonl"), History.read(tmp_path / "split" / "history.jsonl")
    assert ha.column("test_loss") == hb.column("test_loss") and len(hb.records) == 2
    # the protocol's schedules: cosine lr (half at the midpoint of 2 epochs), drop path ramped from 0
    assert ha.column("lr") == pytest.approx([0.025, 0.025 * (1 + math.cos(math.pi / 2)) / 2])
    assert ha.column("drop_path") == pytest.approx([0.0, 0.1])


def test_training_learns_the_synthetic_patterns(tmp_path):
    cfg = replace(_tiny_cfg(), channels=8, epochs=4, lr=0.05, cutout=0, drop_path=0.0)
    result = train(get_genotype("DARTS_V2"), cfg, "synthetic:320", out=tmp_path / "r", device=CPU, quiet=True)
    best = result.loop.best
    assert best is not None and best["test_top1"] >= 50.0, result.loop.history.records  # chance is 10%
    assert (tmp_path / "r" / "best.pt").exists() and (tmp_path / "r" / "figures" / "training_curves.png").exists()


def test_cli_train_json_and_files(tmp_path):
    out = tmp_path / "run"
    r = CliRunner().invoke(app, ["train", "DARTS_V1", "--data", "synthetic:32", *TINY, "--epochs", "1",
                                 "--out", str(out), "--json", "--quiet"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["epochs_done"] == 1 and doc["params"] > 0 and set(doc["last"]) >= {
        "train_loss", "train_top1", "test_loss", "test_top1", "test_top5", "lr", "seconds"}
    config = json.loads((out / "config.json").read_text())
    assert config["format"] == "edgenas.run" and config["config"]["net"]["C"] == 4
    assert len(History.read(out / "history.jsonl").records) == 1


def _grey_folder(root: Path, classes=("a", "b"), n=4, size=12):
    rng = np.random.default_rng(1)
    for split in ("train", "test"):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 255, (size, size), dtype=np.uint8)
                Image.fromarray(pixels, "L").save(root / split / c / f"{i}.png")
    return root


def test_cli_trains_on_grey_images_with_a_three_channel_net(tmp_path):
    data = _grey_folder(tmp_path / "grey")
    for extra, channels in (([], 1), (["--in-channels", "3"], 3)):
        out = tmp_path / f"run{channels}"
        r = CliRunner().invoke(app, ["train", "DARTS_V2", "--data", f"imagefolder:{data}", *TINY, "--epochs", "1",
                                     "--out", str(out), "--quiet", *extra])
        assert r.exit_code == 0, r.output
        cfg = json.loads((out / "config.json").read_text())["config"]
        assert cfg["net"]["in_channels"] == channels and cfg["dataset"]["classes"] == 2


def _bad(tmp_path: Path, case: str) -> str:
    root = tmp_path / "ds"
    if case == "missing":
        return str(tmp_path / "nowhere")
    if case == "no_split":
        (root / "pics" / "a").mkdir(parents=True)
        return str(root)
    _grey_folder(root)
    if case == "empty_class":
        for f in (root / "test" / "b").iterdir():
            f.unlink()
    elif case == "corrupt":
        (root / "train" / "a" / "2.png").write_bytes(b"this is no image")
    elif case == "class_sets":
        (root / "test" / "b").rename(root / "test" / "c")
    return str(root)


@pytest.mark.parametrize("case, message", [
    ("missing", "nowhere does not exist"),
    ("no_split", "does not hold train/ and test/"),
    ("empty_class", "test/b has no images"),
    ("corrupt", r"train/a/2\.png cannot be decoded"),
    ("class_sets", "different classes"),
])
def test_cli_bad_data(tmp_path, case, message):
    out = tmp_path / "run"
    r = CliRunner().invoke(app, ["train", "DARTS_V2", "--data", f"imagefolder:{_bad(tmp_path, case)}", *TINY,
                                 "--epochs", "1", "--out", str(out)])
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output and len(r.stderr.strip().splitlines()) == 1
    assert "error:" in r.stderr and __import__("re").search(message, r.stderr), r.stderr
    assert not out.exists()  # nothing half-written


def test_cli_resume_refuses_a_foreign_or_missing_checkpoint(tmp_path):
    out = tmp_path / "run"
    base = ["--data", "synthetic:32", *TINY, "--epochs", "2", "--out", str(out), "--quiet"]
    runner = CliRunner()
    r = runner.invoke(app, ["train", "DARTS_V2", *base, "--stop-after", "1"])
    assert r.exit_code == 0, r.output
    before = (out / "last.pt").read_bytes()
    for args, message in (
        (["train", "DARTS_V1", *base, "--resume"], "was made with genotype"),
        (["train", "DARTS_V2", *base, "--resume", "--setting", "cifar100"],
         "setting=cifar10, but this run asks for setting=cifar100"),
        (["train", "DARTS_V2", *base], "already holds a train run"),
        (["train", "DARTS_V2", *base[:-3], "--out", str(tmp_path / "empty"), "--resume"], "cannot resume"),
    ):
        r = runner.invoke(app, args)
        assert r.exit_code == 2 and message in r.stderr and "Traceback" not in r.output, (args, r.output)
    assert (out / "last.pt").read_bytes() == before
    (out / "last.pt").write_bytes(before[: len(before) // 2])
    r = runner.invoke(app, ["train", "DARTS_V2", *base, "--resume"])
    assert r.exit_code == 2 and "last.pt is corrupt" in r.stderr


def test_precision_amp_off_on_cpu_unless_asked(tmp_path):
    from edgenas.metrics import Precision
    from edgenas.train import resolve_precision

    assert resolve_precision(_tiny_cfg(), CPU) == Precision(None, True)
    assert resolve_precision(_tiny_cfg(channels_last=False), CPU) == Precision(None, False)
    cfg = _tiny_cfg(epochs=1, amp="bf16")
    assert resolve_precision(cfg, CPU) == Precision(torch.bfloat16, True)
    res = train(get_genotype("DARTS_V2"), cfg, "synthetic:32", out=tmp_path / "r", device=CPU, quiet=True)
    conv = res.model.stem0[0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and conv.dtype == torch.float32
    assert math.isfinite(res.loop.history.records[0]["train_loss"])


@pytest.mark.needs_cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU visible to torch")
def test_cuda_training_defaults_to_mixed_precision_and_channels_last(tmp_path):
    from edgenas.device import resolve_device
    from edgenas.train import resolve_precision

    dev = resolve_device("cuda")
    cfg = _tiny_cfg(epochs=1)
    precision = resolve_precision(cfg, dev)
    from edgenas.device import amp_for_capability

    want = {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[
        amp_for_capability(torch.cuda.get_device_capability(dev))]
    assert precision.amp == want and precision.channels_last
    res = train(get_genotype("DARTS_V2"), cfg, "synthetic:48", out=tmp_path / "r", device=dev, quiet=True)
    assert next(res.model.parameters()).device.type == "cuda"
    assert res.model.stem0[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert math.isfinite(res.loop.history.records[0]["train_loss"])
