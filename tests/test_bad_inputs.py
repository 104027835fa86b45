"""Adversarial inputs across every command: each row is an instance of a rule (named in its id), and
each must end in one clear stderr line, exit code 2, and nothing half-written."""

from __future__ import annotations

import copy
import json
import math
import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_assert import assert_clean_failure
from typer.testing import CliRunner

from edgenas.cli import app
from edgenas.errors import EdgenasError

REPO = Path(__file__).resolve().parents[1]
PROFILE = REPO / "profiles" / "cpu-amd-epyc.json"
NOWHERE = "fashion-mnist:/nonexistent-edgenas-data"  # loading it fails: an error about it comes too late
TINY_SEARCH = ["--method", "darts", "--data", "synthetic:64", "--epochs", "1", "--channels", "4", "--layers", "2",
               "--nodes", "2", "--batch-size", "16", "-q"]
TINY_TRAIN = ["DARTS_V2", "--data", "synthetic:64", "--epochs", "1", "--channels", "4", "--layers", "2",
              "--batch-size", "16", "--cutout", "0", "-q"]


def run(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


# --- files the table refers to ------------------------------------------------------------------

def bad_profile(tmp: Path, change: Callable[[dict], None], name: str = "p.json") -> Path:
    doc = json.loads(PROFILE.read_text())
    change(doc)
    path = tmp / name
    path.write_text(json.dumps(doc))  # json writes NaN/Infinity literals, as a hand edit might
    return path


def set_entry(i: int, dotted: str, value) -> Callable[[dict], None]:
    def change(doc: dict) -> None:
        target = doc["entries"][i]
        *parents, last = dotted.split(".")
        for p in parents:
            target = target[p]
        target[last] = value

    return change


def toml(tmp: Path, text: str) -> Path:
    path = tmp / "c.toml"
    path.write_text(text + "\n")
    return path


def idx_files(folder: Path, labels: list[int]) -> Path:
    """Fashion-MNIST idx files (train and test) with the given labels on 4x4 images."""
    folder.mkdir(parents=True, exist_ok=True)
    n = len(labels)
    for prefix in ("train", "t10k"):
        images = struct.pack(">HBBIII", 0, 8, 3, n, 4, 4) + bytes(16 * n)
        (folder / f"{prefix}-images-idx3-ubyte").write_bytes(images)
        (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">HBBI", 0, 8, 1, n) + bytes(labels))
    return folder


def image_folder(root: Path, classes: list[str], *, dtype=np.uint8, scale: float = 255) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in classes:
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(3):
                Image.fromarray((rng.random((8, 8)) * scale).astype(dtype)).save(d / f"{i}.png")
    return root


def genotype_literal(tmp: Path, concat: str) -> Path:
    path = tmp / "g.txt"
    path.write_text(f"Genotype(normal=[('sep_conv_3x3', 0), ('skip_connect', 1)], normal_concat={concat}, "
                    "reduce=[('max_pool_3x3', 0), ('skip_connect', 1)], reduce_concat=[2])")
    return path


def search_run(tmp: Path) -> Path:
    out = tmp / "search-run"
    r = run("search", *TINY_SEARCH, "--out", out)
    assert r.exit_code == 0, r.output
    return out


# --- the table ----------------------------------------------------------------------------------
# (id: rule / input, builder(tmp) -> CLI args, text the one error line must contain)

CASES: list[tuple[str, Callable[[Path], list], str]] = [
    # 1. run folders are owned
    ("folder-foreign-files/search", lambda t: (t.joinpath("proj").mkdir(), t.joinpath("proj/genotype.json")
                                               .write_text("{}"), ["search", *TINY_SEARCH, "--out", t / "proj"])[2],
     "is not empty and is not an edgenas run folder"),
    ("folder-other-kind/train-resume-on-search", lambda t: ["train", *TINY_TRAIN, "--out", search_run(t), "--resume"],
     "is the folder of a search run, not of a train run"),
    # 2. profiles are validated on load (file, entry, fix)
    ("profile-nan-latency/inspect", lambda t: ["inspect", "DARTS_V2", "--profile",
                                               bad_profile(t, set_entry(3, "latency_ms.median", math.nan))],
     "latency_ms.median must be finite, got nan"),
    ("profile-inf-latency/prune", lambda t: ["prune", "--profile", bad_profile(t, set_entry(0, "latency_ms.p90",
                                                                                          math.inf)),
                                             "--out", t / "s.json"], "latency_ms.p90 must be finite"),
    ("profile-negative-latency/prune", lambda t: ["prune", "--profile", bad_profile(
        t, set_entry(5, "latency_ms.median", -1.0)), "--out", t / "s.json"], "entries[5]"),
    ("profile-zero-latency/inspect", lambda t: ["inspect", "DARTS_V2", "--profile", bad_profile(
        t, set_entry(2, "latency_ms.median", 0))], "latency_ms.median 0 is out of range"),
    ("profile-negative-batch/prune", lambda t: ["prune", "--profile", bad_profile(
        t, lambda d: d.update(batch=-4)), "--out", t / "s.json"], "batch -4 is out of range"),
    ("profile-negative-macs/prune", lambda t: ["prune", "--profile", bad_profile(t, set_entry(4, "macs", -10)),
                                               "--out", t / "s.json"], "macs -10 is out of range"),
    ("profile-zero-channels/prune", lambda t: ["prune", "--profile", bad_profile(t, set_entry(1, "C", 0)),
                                               "--out", t / "s.json"], "C 0 is out of range"),
    ("profile-duplicate-entry/prune", lambda t: ["prune", "--profile", bad_profile(
        t, lambda d: d["entries"].append(copy.deepcopy(d["entries"][0]))), "--out", t / "s.json"],
     "is measured twice"),
    ("space-one-real-op/search", lambda t: (t.joinpath("s.json").write_text(json.dumps(
        {"format": "edgenas.space", "version": 1, "ops": ["none", "skip_connect"]})),
        ["search", *TINY_SEARCH, "--space", t / "s.json", "--out", t / "r"])[1],
     "at least 2 operators besides 'none'"),
    # 4. one line instead of a traceback
    ("number-overflow/search-mac-budget", lambda t: ["search", *TINY_SEARCH, "--mac-budget", "1e400",
                                                     "--out", t / "r"], "must be finite"),
    ("number-overflow/inspect-fit-macs", lambda t: ["inspect", "DARTS_V2", "--fit-macs", "1e400"], "must be finite"),
    ("number-overflow/latency-budget", lambda t: ["search", *TINY_SEARCH, "--latency-budget", "1e400ms",
                                                  "--profile", PROFILE, "--out", t / "r"], "must be finite"),
    ("toml-nan/mac_budget", lambda t: ["run", "--config", toml(t, "[budget]\nmac_budget = nan")],
     "[budget]: mac_budget must be finite, got nan"),
    ("toml-inf/mac_budget", lambda t: ["run", "--config", toml(t, "[budget]\nmac_budget = inf")],
     "[budget]: mac_budget must be finite"),
    ("toml-type/seed-string", lambda t: ["run", "--config", toml(t, 'seed = "abc"')],
     'seed = "abc" should be an integer'),
    ("toml-range/seed-negative", lambda t: ["run", "--config", toml(t, "seed = -1")], "seed -1 is out of range"),
    ("toml-range/seed-huge", lambda t: ["run", "--config", toml(t, "seed = 99999999999999999999")],
     "c.toml: seed 99999999999999999999 is out of range"),
    ("labels-out-of-range/fashion-mnist", lambda t: ["train", *TINY_TRAIN[:1], "--data",
                                                     f"fashion-mnist:{idx_files(t / 'fm', [0, 1, 200, 1])}",
                                                     *TINY_TRAIN[3:], "--out", t / "r"],
     "label is 200, outside the 10 classes"),
    ("batch-one/aux-head", lambda t: ["train", *TINY_TRAIN, "--batch-size", "1", "--out", t / "r"],
     "too small for the auxiliary head's BatchNorm"),
    ("out-unwritable/train-before-data", lambda t: ["train", *TINY_TRAIN[:1], "--data", NOWHERE, *TINY_TRAIN[3:],
                                                    "--out", "/proc/edgenas-x"], "cannot create run folder /proc"),
    ("out-unwritable/search-before-data", lambda t: ["search", *TINY_SEARCH[:2], "--data", NOWHERE,
                                                     *TINY_SEARCH[4:], "--out", "/proc/edgenas-x"],
     "cannot create run folder /proc"),
    ("out-is-directory/prune", lambda t: (t.joinpath("d").mkdir(),
                                          ["prune", "--profile", PROFILE, "--out", t / "d"])[1],
     "is a directory"),
    ("out-is-file/run", lambda t: (t.joinpath("f").write_text("x"), ["run", "--data", "synthetic:64", "--out",
                                                                      t / "f"])[1], "run folder"),
    ("shape-too-large/profile", lambda t: ["profile", "--shapes", "4096x4096x4096:1", "--batch", "64",
                                           "--out", t / "p.json"], "GiB of activations"),
    # 5. nonsense refused
    ("non-finite-option/train-lr", lambda t: ["train", *TINY_TRAIN, "--lr", "inf", "--out", t / "r"],
     "--lr must be finite"),
    ("non-finite-option/train-momentum", lambda t: ["train", *TINY_TRAIN, "--momentum", "nan", "--out", t / "r"],
     "--momentum must be finite"),
    ("range/train-momentum", lambda t: ["train", *TINY_TRAIN, "--momentum", "1.5", "--out", t / "r"],
     "--momentum 1.5 is out of range"),
    ("non-finite-option/search-lr", lambda t: ["search", *TINY_SEARCH, "--lr", "inf", "--out", t / "r"],
     "--lr must be finite"),
    ("diverged/train-huge-lr", lambda t: ["train", *TINY_TRAIN, "--lr", "1e30", "--out", t / "r"], "diverged"),
    ("single-class/imagefolder", lambda t: ["train", *TINY_TRAIN[:1], "--data",
                                            f"imagefolder:{image_folder(t / 'if', ['only'])}", *TINY_TRAIN[3:],
                                            "--out", t / "r"], "at least two classes"),
    ("empty-split/fashion-mnist", lambda t: ["train", *TINY_TRAIN[:1], "--data",
                                             f"fashion-mnist:{idx_files(t / 'fm', [])}", *TINY_TRAIN[3:],
                                             "--out", t / "r"], "holds no images"),
    ("toml-type/search-batch-bool", lambda t: ["run", "--config", toml(t, "[search]\nbatch_size = true")],
     "[search]: batch_size = true should be an integer"),
    ("toml-type/search-epochs-string", lambda t: ["run", "--config", toml(t, '[search]\nepochs = "four"')],
     '[search]: epochs = "four" should be an integer'),
    ("toml-type/export-opset-string", lambda t: ["run", "--config", toml(t, '[export]\nopset = "17"')],
     "[export]: opset"),
    ("toml-type/train-channels-float", lambda t: ["run", "--config", toml(t, "[train]\nchannels = 8.5")],
     "[train]: channels = 8.5 should be an integer"),
    ("toml-type/profile-ops-string", lambda t: ["run", "--config", toml(t, '[profile]\nops = "sep_conv_3x3"')],
     "[profile]: ops"),
    ("toml-range/search-epochs-zero", lambda t: ["run", "--config", toml(t, "[search]\nepochs = 0")],
     "[search]"),
    ("genotype-bounds/huge-concat-range", lambda t: ["inspect", genotype_literal(t, "range(2, 30000000)")],
     "a cell concatenates at most"),
    ("genotype-bounds/zero-step-range", lambda t: ["inspect", genotype_literal(t, "range(2, 6, 0)")],
     "step must not be zero"),
    ("genotype-header/wrong-format", lambda t: (t.joinpath("g.json").write_text(json.dumps(
        {"format": "mine", "normal": [], "normal_concat": [], "reduce": [], "reduce_concat": []})),
        ["inspect", t / "g.json"])[1], '"format": "edgenas.genotype", "version": 1'),
    # the same rules on other options
    ("non-finite-option/prune-ratio", lambda t: ["prune", "--profile", PROFILE, "--out", t / "s.json",
                                                 "--max-latency-ratio", "nan"], "--max-latency-ratio must be finite"),
    ("non-finite-option/profile-max-seconds", lambda t: ["profile", "--ops", "skip_connect", "--shapes", "4x8x8",
                                                         "--max-seconds", "nan", "--out", t / "p.json"],
     "--max-seconds must be finite"),
    ("non-finite-option/budget-weight", lambda t: ["search", *TINY_SEARCH, "--mac-budget", "60M", "--budget-weight",
                                                   "nan", "--out", t / "r"], "--budget-weight must be finite"),
    ("range/search-seed-huge", lambda t: ["search", *TINY_SEARCH, "--seed", "99999999999999999999", "--out", t / "r"],
     "--seed 99999999999999999999 is out of range"),
    ("range/train-seed-negative", lambda t: ["train", *TINY_TRAIN, "--seed", "-3", "--out", t / "r"],
     "--seed -3 is out of range"),
    ("toml-type/arch-betas-length", lambda t: ["run", "--config", toml(t, "[search]\narch_betas = [0.5]")],
     "arch_betas = [0.5] should be a list of 2 values"),
    ("out-of-memory/search-channels", lambda t: ["search", *TINY_SEARCH, "--channels", "1000000", "--out", t / "r"],
     "out of memory: could not allocate"),
    ("out-of-memory/inspect-channels", lambda t: ["inspect", "DARTS_V2", "--channels", "10000000"],
     "out of memory: could not allocate"),
    ("toml-type/method-setting-string", lambda t: ["run", "--config", toml(t, 'method = "pc_darts"\n'
                                                                          '[method_settings]\npartial_k = "4"')],
     'pc_darts setting partial_k = "4" should be an integer'),
    # 6. `edgenas run` checks every stage before the first
    ("run-early/unknown-method", lambda t: ["run", "--config", toml(t, PIPE), "--method", "nope", "--out", t / "r"],
     "nope"),
    ("run-early/unknown-setting", lambda t: ["run", "--config", toml(t, PIPE + "\n[method_settings]\nfoo = 1"),
                                             "--out", t / "r"], "does not apply to method"),
    ("run-early/infeasible-budget", lambda t: ["run", "--config", toml(t, PIPE), "--mac-budget", "1K",
                                               "--out", t / "r"], "cheapest possible network needs"),
]

#: A tiny pipeline configuration (each stage seconds long).
PIPE = """data = "synthetic:128"
method = "darts"
device = "cpu"
[profile]
ops = ["skip_connect", "max_pool_3x3", "sep_conv_3x3"]
shapes = "4x16x16:1,4x16x16:2"
batch = 1
runs = 3
max_seconds = 0.05
[search]
epochs = 1
warmup_epochs = 0
batch_size = 32
channels = 4
layers = 2
nodes = 2
[train]
channels = 4
layers = 2
epochs = 1
batch_size = 32
cutout = 0
test_subset = 40
[export]
runs = 2
max_seconds = 0.2
test_subset = 40"""


@pytest.mark.parametrize("build, needle", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_gives_one_line(build, needle, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # default output folders land here, never in the repository
    before = set()
    args = build(tmp_path)
    if "--out" in args:
        out = Path(args[args.index("--out") + 1])
        before = {p.name for p in out.iterdir()} if out.is_dir() else set()
        existed = out.exists()
    result = run(*args)
    assert_clean_failure(result, needle)
    if "--out" in args and str(out).startswith(str(tmp_path)):
        # nothing half-written: a new folder is gone again, an existing one gained nothing visible
        if not existed:
            assert not out.exists() or not any(p for p in out.iterdir() if not p.name.startswith(".")), \
                sorted(p.name for p in out.iterdir())
        elif out.is_dir():
            assert {p.name for p in out.iterdir() if not p.name.startswith(".")} <= before


def test_run_folders_of_failed_runs_are_left_clean(tmp_path, monkeypatch):
    """The rule behind the table's last assertion, on the case that writes most before failing."""
    monkeypatch.chdir(tmp_path)
    r = run("train", *TINY_TRAIN, "--lr", "1e30", "--out", tmp_path / "r")
    assert_clean_failure(r, "diverged", "no epoch had finished")
    assert not (tmp_path / "r" / "last.pt").exists() and not (tmp_path / "r" / "best.pt").exists()


# --- inputs that must now work ------------------------------------------------------------------

def test_sixteen_bit_png_is_scaled_to_eight_bits(tmp_path):
    from edgenas.data.load import load_data

    root = image_folder(tmp_path / "if16", ["a", "b"], dtype=np.uint16, scale=65535)
    bundle = load_data(f"imagefolder:{root}")
    assert bundle.train.images.dtype == torch.uint8
    # 16-bit values spread over 0..65535 land over the whole 8-bit range, not clipped at 255
    assert 60 < bundle.train.images.float().mean() < 200


def test_hand_made_genotype_json_without_header_is_read(tmp_path):
    from edgenas.genotypes import get_genotype, load_genotype

    path = tmp_path / "hand.json"
    path.write_text(json.dumps(get_genotype("DARTS_V2").to_dict()))
    assert load_genotype(str(path)) == get_genotype("DARTS_V2")


def test_prune_lists_an_operator_whose_entries_were_deleted(tmp_path):
    path = bad_profile(tmp_path, lambda d: d.update(entries=[e for e in d["entries"] if e["op"] != "dil_conv_3x3"]))
    r = run("prune", "--profile", path, "--out", tmp_path / "s.json", "--json")
    assert r.exit_code == 0, r.output
    dropped = {d["op"]: d for d in json.loads(r.stdout)["dropped"]}
    assert dropped["dil_conv_3x3"]["rule"] == "unmeasured"
    assert "edgenas profile --ops dil_conv_3x3" in dropped["dil_conv_3x3"]["reason"]


def test_batch_one_trains_without_the_auxiliary_head(tmp_path):
    r = run("train", *TINY_TRAIN, "--batch-size", "1", "--auxiliary-weight", "0", "--subset", "6",
            "--test-subset", "4", "--out", tmp_path / "r")
    assert r.exit_code == 0, r.output


# --- 1. owned run folders -----------------------------------------------------------------------

def test_a_second_writer_is_refused_while_the_first_holds_the_folder(tmp_path):
    from edgenas.files import claim_run_folder

    out = tmp_path / "run"
    with claim_run_folder(out, "search"):  # the first search, still running
        r = run("search", *TINY_SEARCH, "--out", out)
        assert_clean_failure(r, "is in use by another edgenas search")
        assert not (out / "config.json").exists()
    r = run("search", *TINY_SEARCH, "--out", out)  # once it is done, the folder is free again
    assert r.exit_code == 0, r.output


def test_a_killed_writer_leaves_no_stale_lock(tmp_path):
    import signal
    import subprocess
    import sys

    from edgenas.files import claim_run_folder

    out = tmp_path / "run"
    code = ("import sys, time; from edgenas.files import claim_run_folder; "
            f"lock = claim_run_folder({str(out)!r}, 'search'); print('held', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(EdgenasError, match=f"in use by another edgenas search \\(pid {proc.pid}\\)"):
            claim_run_folder(out, "search")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    with claim_run_folder(out, "search") as lock:  # the OS dropped the dead process's lock
        assert lock.held


def test_a_users_files_are_never_overwritten(tmp_path):
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "genotype.json").write_text("mine")
    (proj / "config.json").write_text("{\"mine\": 1}")
    r = run("search", *TINY_SEARCH, "--out", proj)
    assert_clean_failure(r, "not an edgenas run folder")
    assert (proj / "genotype.json").read_text() == "mine" and json.loads((proj / "config.json").read_text()) == {
        "mine": 1}


def test_leftover_temp_files_are_removed_on_the_next_start(tmp_path):
    out = tmp_path / "r"
    r = run("train", *TINY_TRAIN, "--epochs", "2", "--stop-after", "1", "--out", out)
    assert r.exit_code == 0, r.output
    (out / ".last.pt.k1ll3d.tmp").write_bytes(b"")  # what a kill during torch.save leaves
    (out / "figures" / ".training_curves.png.x.tmp").write_bytes(b"")
    r = run("train", *TINY_TRAIN, "--epochs", "2", "--resume", "--out", out)
    assert r.exit_code == 0, r.output
    assert not list(out.rglob("*.tmp"))


# --- 3. best.pt is what last.pt says ------------------------------------------------------------

class _Counter(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))


def _loop(run_dir, epochs, *, fn=None, resume=False, stop_after=None):
    from edgenas.runs import BestRule, run_epochs

    model = _Counter()

    def epoch_fn(epoch, progress):
        with torch.no_grad():
            model.w.fill_(epoch + 1)
        return fn(epoch) if fn else {"score": float(epoch), "train_loss": 1.0 / (epoch + 1)}

    return run_epochs(run_dir, kind="test", epochs=epochs, stateful={"model": model}, config={}, identity={},
                      epoch_fn=epoch_fn, device=torch.device("cpu"), resume=resume, best=BestRule("score"),
                      stop_after=stop_after, quiet=True)


def test_a_best_pt_left_stale_by_a_kill_is_repaired_on_resume(tmp_path):
    from edgenas.checkpoints import load_checkpoint
    from edgenas.run_folder import RunDir

    run_dir = RunDir(tmp_path / "r")
    _loop(run_dir, 3, stop_after=2)
    stale = tmp_path / "best-epoch2.pt"
    shutil.copy(run_dir.best, stale)
    _loop(run_dir, 3, resume=True)
    assert load_checkpoint(run_dir.best)["epoch"] == 2
    # simulate the kill: last.pt (epoch 3) names epoch 3 as best, but best.pt still holds epoch 2
    shutil.copy(stale, run_dir.best)
    result = _loop(run_dir, 3, resume=True)  # nothing left to run; the resume repairs best.pt
    assert result.best["epoch"] == 2
    best = load_checkpoint(run_dir.best)
    assert best["epoch"] == 2 and float(best["state"]["model"]["w"]) == 3.0


def test_best_pt_is_written_before_last_pt(tmp_path, monkeypatch):
    """A kill between the two writes must leave last.pt naming a best that best.pt holds."""
    from edgenas import runs

    order: list[str] = []
    real = runs.save_checkpoint
    monkeypatch.setattr(runs, "save_checkpoint", lambda path, state: (order.append(Path(path).name),
                                                                       real(path, state))[1])
    _loop(runs.RunDir(tmp_path / "r"), 2)
    assert order == ["best.pt", "last.pt", "best.pt", "last.pt"]


def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    from edgenas.checkpoints import load_checkpoint
    from edgenas.run_folder import RunDir

    run_dir = RunDir(tmp_path / "r")
    with pytest.raises(EdgenasError, match=r"epoch 3: train_loss is nan.*keeps epoch 2"):
        _loop(run_dir, 4, fn=lambda e: {"score": float(e), "train_loss": math.nan if e == 2 else 1.0})
    assert load_checkpoint(run_dir.last)["epoch"] == 1
    assert len(load_checkpoint(run_dir.last)["history"]) == 2


def test_search_stops_on_a_diverged_loss(tmp_path):
    r = run("search", *TINY_SEARCH, "--lr", "1e30", "--out", tmp_path / "r")
    assert_clean_failure(r, "diverged")
    assert not (tmp_path / "r").exists()  # no epoch finished: nothing to keep


def test_search_diverging_after_a_good_epoch_keeps_that_epoch_only(tmp_path, monkeypatch):
    from edgenas.checkpoints import load_checkpoint
    from edgenas.search import loop

    real = loop.BilevelStep.weight_step
    calls = {"n": 0}

    def diverge_in_epoch_two(self, x, y):
        logits, loss = real(self, x, y)
        calls["n"] += 1
        return logits, loss * math.nan if calls["n"] > steps_per_epoch else loss

    steps_per_epoch = 2  # synthetic:64, half of it for the weights, batch 16
    monkeypatch.setattr(loop.BilevelStep, "weight_step", diverge_in_epoch_two)
    out = tmp_path / "r"
    r = run("search", *[a if a != "1" else "3" for a in TINY_SEARCH], "--out", out)
    assert_clean_failure(r, "search stopped in epoch 2: train_loss is nan", "keeps epoch 1")
    assert load_checkpoint(out / "last.pt")["epoch"] == 0
    assert sorted(p.name for p in (out / "genotypes").iterdir()) == ["epoch_001.json"]
    assert not (out / "genotype.json").exists()


# --- 6. a corrected rerun of `edgenas run` continues ---------------------------------------------

def test_run_with_a_fixed_config_after_a_failed_first_attempt(tmp_path):
    out = tmp_path / "r"
    # a latency budget below anything the measured operators can meet is only known after profiling
    bad = toml(tmp_path, PIPE + '\n[budget]\nlatency_budget = "0.000001ms"\nbudget_batch = 1')
    r = run("run", "--config", bad, "--out", out, "-q")
    assert_clean_failure(r, "cheapest possible network needs")
    assert (out / "profile.json").exists() and not (out / "search" / "last.pt").exists()
    stages = json.loads((out / "stages.json").read_text())
    assert stages["completed"] == ["profile", "prune"] and stages["failed"] == "search"
    profile_bytes = (out / "profile.json").read_bytes()
    fixed = tmp_path / "fixed.toml"
    fixed.write_text(PIPE + "\n")
    r = run("run", "--config", fixed, "--out", out, "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["skipped"] == ["profile", "prune"] and doc["ran"] == ["search", "train", "export", "report"]
    assert (out / "profile.json").read_bytes() == profile_bytes  # not measured again
    # changing what a finished stage used is still refused, naming the setting
    r = run("run", "--config", toml(tmp_path, PIPE.replace("runs = 3", "runs = 4")), "--out", out, "--resume")
    assert_clean_failure(r, "profile stage ran with profile.runs=3")
