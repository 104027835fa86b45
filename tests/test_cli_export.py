"""`edgenas export` through the CLI: the happy path with --json, and every bad input it handles."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from edgenas.checkpoints import load_checkpoint, save_checkpoint
from edgenas.cli import app
from edgenas.export import OrtModel

FAST = ["--runs", "2", "--warmup", "1", "--test-subset", "10"]


def invoke(*args: str | Path) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["export", *map(str, args)])
    return result.exit_code, result.stdout, result.stderr


def assert_refused(code: int, err: str, *phrases: str, exit_code: int = 2) -> None:
    assert code == exit_code, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for phrase in phrases:
        assert phrase in err, err


def test_export_json(tiny_train_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "exp"
    # auto providers: on a machine without a GPU, ORT prints its CUDA/TensorRT failures; stdout stays JSON
    code, stdout, err = invoke(tiny_train_run, "--out", out, "--json", *FAST)
    assert code == 0, err
    doc = json.loads(stdout)
    assert doc["verification"]["passed"] and doc["verification"]["test"]["n"] == 10
    assert doc["onnx"]["input_shape"] == [1, 3, 16, 16] and doc["name"] == tiny_train_run.name
    assert sorted(p.name for p in out.iterdir()) == ["model.onnx", "report.json", "report.md"]
    # a second export into the same folder replaces the first cleanly (no staging left over)
    code, _, err = invoke(tiny_train_run / "last.pt", "--out", out, "--providers", "cpu", *FAST)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["model.onnx", "report.json", "report.md"]


def test_missing_checkpoint(tmp_path: Path) -> None:
    code, _, err = invoke(tmp_path / "nope", "--out", tmp_path / "o")
    assert_refused(code, err, "nope", "does not exist")
    assert not (tmp_path / "o").exists()


def test_run_folder_without_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    code, _, err = invoke(tmp_path / "run", "--out", tmp_path / "o")
    assert_refused(code, err, "holds no checkpoint")


def test_corrupt_checkpoint(tmp_path: Path) -> None:
    bad = tmp_path / "best.pt"
    bad.write_bytes(b"not a zip file at all" * 10)
    code, _, err = invoke(bad, "--out", tmp_path / "o")
    assert_refused(code, err, "corrupt")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("drop", ["genotype", "net"])
def test_checkpoint_without_genotype_or_config(tiny_train_run: Path, tmp_path: Path, drop: str) -> None:
    doc = load_checkpoint(tiny_train_run / "last.pt")
    doc["config"].pop(drop)
    path = save_checkpoint(tmp_path / "last.pt", {k: v for k, v in doc.items() if k not in ("format", "version")})
    code, _, err = invoke(path, "--out", tmp_path / "o")
    assert_refused(code, err, "genotype" if drop == "genotype" else "network config")


def _image_folder(root: Path, classes: list[str], size: int, mode: str) -> Path:
    for split in ("train", "test"):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(2):
                arr = np.full((size, size, 3) if mode == "RGB" else (size, size), 40 * i + 10, np.uint8)
                Image.fromarray(arr, mode).save(root / split / c / f"{i}.png")
    return root


@pytest.mark.parametrize("classes,size,mode,phrase", [
    (["a", "b"], 16, "RGB", "has 2 classes but the network was trained for 10"),
    ([f"c{i}" for i in range(10)], 16, "L", "has 1-channel images but the network takes 3"),
    ([f"c{i}" for i in range(10)], 8, "RGB", "has 8x8 images but the network was trained on 16x16"),
])
def test_dataset_that_does_not_fit(tiny_train_run: Path, tmp_path: Path, classes: list[str], size: int,
                                   mode: str, phrase: str) -> None:
    folder = _image_folder(tmp_path / "data", classes, size, mode)
    code, _, err = invoke(tiny_train_run, "--data", f"imagefolder:{folder}", "--out", tmp_path / "o")
    assert_refused(code, err, phrase)
    assert not (tmp_path / "o").exists()


def test_dataset_with_other_class_names(tiny_train_run: Path, tmp_path: Path) -> None:
    folder = _image_folder(tmp_path / "data", [f"c{i}" for i in range(10)], 16, "RGB")
    code, _, err = invoke(tiny_train_run, "--data", f"imagefolder:{folder}", "--out", tmp_path / "o")
    assert_refused(code, err, "has classes other than the network's", "'c0' there, 'pattern0' in training")


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CUDA provider may work on a machine with a GPU")
def test_unavailable_provider_asked_for(tiny_train_run: Path, tmp_path: Path) -> None:
    code, _, err = invoke(tiny_train_run, "--providers", "cuda", "--out", tmp_path / "o")
    assert_refused(code, err, "execution provider cuda (CUDAExecutionProvider) cannot run here")
    assert not (tmp_path / "o").exists()


def test_unknown_provider_and_bad_opset(tiny_train_run: Path, tmp_path: Path) -> None:
    code, _, err = invoke(tiny_train_run, "--providers", "npu", "--out", tmp_path / "o")
    assert_refused(code, err, "unknown execution provider 'npu'")
    code, _, err = invoke(tiny_train_run, "--opset", "99", "--out", tmp_path / "o")
    assert_refused(code, err, "opset 99")


def test_unwritable_output_folder(tiny_train_run: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    code, _, err = invoke(tiny_train_run, "--out", blocker / "sub", "--providers", "cpu", *FAST)
    assert_refused(code, err, "cannot write the output folder")


def test_failed_check_exits_1_and_keeps_the_previous_export(tiny_train_run: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "o"
    out.mkdir()
    before = {"model.onnx": b"earlier model", "report.json": b"{}", "model_int8.onnx": b"earlier int8"}
    for name, data in before.items():
        (out / name).write_bytes(data)
    real_run = OrtModel.run
    monkeypatch.setattr(OrtModel, "run", lambda self, x: real_run(self, x) * 1.01 + 0.5)
    code, _, err = invoke(tiny_train_run, "--out", out, "--providers", "cpu", *FAST)
    assert_refused(code, err, "ONNX Runtime disagrees with PyTorch", "threshold 0.0001", exit_code=1)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_profile_missing_without_a_profile(tiny_train_run: Path, tmp_path: Path) -> None:
    code, _, err = invoke(tiny_train_run, "--out", tmp_path / "o", "--profile-missing", *FAST)
    assert_refused(code, err, "--profile-missing", "--profile")
    assert not (tmp_path / "o").exists()


def test_profile_missing_with_a_profile_of_another_device(tiny_train_run: Path, tmp_path: Path) -> None:
    from edgenas.device import TimingStats
    from edgenas.profiling import Profile, ProfileEntry, ShapeKey

    entry = ProfileEntry(ShapeKey("skip_connect", 4, 8, 8, 1), TimingStats(0.01, 0.01, 0.01, 0.01, 0.0, 5), 0,
                         "none", 0, 0)
    path = Profile("cpu-elsewhere", 1, "fp32", "forward", {}, [entry]).save(tmp_path / "p.json")
    code, _, err = invoke(tiny_train_run, "--out", tmp_path / "o", "--profile", path, "--profile-missing", *FAST)
    assert_refused(code, err, "cpu-elsewhere")
    assert not (tmp_path / "o").exists()
