"""`edgenas run`: the whole chain on tiny data, its artefacts, resume between and inside stages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from edgenas.cli import app
from edgenas.errors import EdgenasError
from edgenas.pipeline import load_config, run_pipeline

CPU = torch.device("cpu")

TINY = """
data = "{data}"
method = "el_darts"
device = "cpu"
[profile]
shapes = "8x16x16:1,8x16x16:2"
batch = 1
runs = 5
max_seconds = 0.2
[prune]
# pinned so that two runs (each measuring its own profile) search the same space
keep = ["max_pool_3x3", "skip_connect", "sep_conv_3x3", "dil_conv_3x3"]
drop = ["none", "avg_pool_3x3", "sep_conv_5x5", "dil_conv_5x5"]
[search]
epochs = 2
warmup_epochs = 0
batch_size = 32
channels = 8
layers = 3
nodes = 2
subset = {subset}
[budget]
mac_budget = "{budget}"
[train]
channels = 8
layers = 3
epochs = 2
batch_size = 32
cutout = 0
subset = {subset}
test_subset = 100
[export]
runs = 5
max_seconds = 0.5
test_subset = 100
"""


def _config(tmp_path: Path, data: str = "synthetic:256", subset: int = 256, budget: str = "5M") -> Path:
    path = tmp_path / f"tiny-{budget}.toml"
    path.write_text(TINY.format(data=data, subset=subset, budget=budget))
    return path


def _check_artefacts(out: Path, budget: float) -> None:
    from edgenas.genotypes import load_genotype
    from edgenas.profiling import Profile
    from edgenas.space import SearchSpace

    Profile.load(out / "profile.json")
    space = SearchSpace.load(out / "space.json")
    genotype = load_genotype(str(out / "search" / "genotype.json"))
    genotype.validate(space.ops)
    assert (out / "train" / "last.pt").exists()
    export = json.loads((out / "export" / "report.json").read_text())
    assert export["verification"]["passed"] is True
    assert export["costs"]["macs"] <= budget  # the exported network honours the MAC budget
    # the run profiled this device, so the shapes of the trained network it lacked were measured
    assert export["prediction"]["missing"] == 0 and export["prediction"]["predicted_ms"] > 0
    check = json.loads((out / "budget.json").read_text())
    assert check["constrained"]["macs"] == export["costs"]["macs"]
    html = (out / "report.html").read_text()
    for title in ("Profile", "Pruned search space", "Search", "Budget check", "Retraining", "Export"):
        assert title in html
    assert "data:image/png;base64," in html and "src='figures" not in html  # self-contained
    md = (out / "report.md").read_text()
    assert md.count("![") >= 4
    assert "whole network, onnxruntime CPU provider, batch 1" in md


def _final_weights(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out / "train" / "last.pt", weights_only=True)["state"]["model"]


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("pipe")
    out = tmp / "run"
    result = CliRunner().invoke(app, ["run", "--config", str(_config(tmp)), "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    return out


def test_chain_produces_every_artefact(straight_run: Path) -> None:
    _check_artefacts(straight_run, 5e6)
    stages = json.loads((straight_run / "stages.json").read_text())["completed"]
    assert stages == ["profile", "prune", "search", "train", "export", "report"]


def test_resume_between_and_inside_stages_gives_the_same_run(straight_run: Path, tmp_path: Path) -> None:
    cfg = load_config(_config(tmp_path), {})
    out = tmp_path / "run"
    # interrupted after the prune stage, then inside the search (after its first epoch)
    first = run_pipeline(cfg, out, device=CPU, quiet=True, stop_after_stage="prune")
    assert first.ran == ["profile", "prune"] and not (out / "search").exists()
    second = run_pipeline(cfg, out, device=CPU, resume=True, quiet=True, stop_after_epochs=1)
    assert second.ran == [] and len((out / "search" / "history.jsonl").read_text().splitlines()) == 1
    third = run_pipeline(cfg, out, device=CPU, resume=True, quiet=True)
    assert third.ran == ["search", "train", "export", "report"]
    assert third.skipped == ["profile", "prune"]
    # each run measures its own profile; the pinned prune makes the spaces, and so the results, equal
    assert json.loads((out / "space.json").read_text())["ops"] == json.loads(
        (straight_run / "space.json").read_text())["ops"]
    assert (json.loads((out / "search" / "genotype.json").read_text())["normal"]
            == json.loads((straight_run / "search" / "genotype.json").read_text())["normal"])
    a, b = _final_weights(out), _final_weights(straight_run)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_bad_runs_exit_2_with_one_line(straight_run: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    cases = [
        (["run", "--out", str(straight_run), "--config", str(_config(tmp_path))], "already holds a run"),
        (["run", "--out", str(straight_run), "--config", str(_config(tmp_path, budget="6M")), "--resume"],
         "another configuration"),
        (["run", "--config", str(tmp_path / "missing.toml")], "does not exist"),
        (["run", "--config", str(_config(tmp_path)), "--mac-budget", "lots"], "cannot read"),
    ]
    bad = tmp_path / "bad.toml"
    bad.write_text("[search]\nepochz = 3\n")
    cases.append((["run", "--config", str(bad)], "unknown key 'epochz'"))
    broken = tmp_path / "broken.toml"
    broken.write_text("data = \n")
    cases.append((["run", "--config", str(broken)], "not valid TOML"))
    for args, message in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output[-300:])
        assert message in result.stderr and "Traceback" not in result.output
        assert len(result.stderr.strip().splitlines()) == 1


def test_impossible_budget_stops_before_searching(tmp_path: Path) -> None:
    cfg = load_config(_config(tmp_path, budget="1K"), {})
    with pytest.raises(EdgenasError, match="cheapest possible network needs"):
        run_pipeline(cfg, tmp_path / "run", device=CPU, quiet=True)
    assert not (tmp_path / "run" / "search").exists()


@pytest.mark.needs_data
def test_chain_on_a_slice_of_fashion_mnist(fashion_mnist_dir: Path, tmp_path: Path) -> None:
    cfg = load_config(_config(tmp_path, data=f"fashion-mnist:{fashion_mnist_dir}", subset=300), {})
    out = tmp_path / "run"
    run_pipeline(cfg, out, device=CPU, quiet=True)
    _check_artefacts(out, 5e6)


def test_the_shipped_demo_config_loads() -> None:
    """`make demo` runs this file: a typo in it must fail here, not ten minutes into a user's demo."""
    cfg = load_config(Path(__file__).resolve().parents[1] / "edgenas/configs/demo.toml", {})
    assert cfg.data == "fashion-mnist" and cfg.method == "el_darts"
    assert cfg.train.epochs >= 1 and cfg.search.epochs > cfg.search.warmup_epochs


def test_a_missing_dataset_stops_the_run_before_any_stage(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["run", "--data", f"fashion-mnist:{tmp_path / 'nope'}", "--out", str(out)])
    assert result.exit_code == 2 and "does not exist" in result.stderr and "Traceback" not in result.output
    assert not out.exists()  # no profile measured, nothing half-written


def test_a_profile_batch_other_than_the_exports_stops_the_run_before_any_stage(tmp_path: Path) -> None:
    """The export compares the profile's prediction with onnxruntime at its own batch: a run whose
    profile is for another batch is refused before minutes of searching, not at the export."""
    path = _config(tmp_path)
    path.write_text(path.read_text().replace("[profile]\n", "[profile]\nbatch = 4\n", 1).replace("batch = 1\n", "", 1))
    cfg = load_config(path, {})
    assert cfg.profile.batch == 4 and cfg.export.batch == 1
    with pytest.raises(EdgenasError, match=r"\[profile\] batch 4 differs from \[export\] batch 1"):
        run_pipeline(cfg, tmp_path / "run", device=CPU, quiet=True)
    assert not (tmp_path / "run" / "profile.json").exists()


def test_the_demo_profiles_what_the_export_ships() -> None:
    cfg = load_config(Path(__file__).resolve().parents[1] / "edgenas/configs/demo.toml", {})
    assert (cfg.profile.runtime, cfg.profile.provider, cfg.profile.batch) == ("ort", "cpu", cfg.export.batch)


def test_run_report_export_section_has_the_budget_line(straight_run: Path) -> None:
    """The run report repeats the export's sentences: prediction against measurement and, for a
    latency-budgeted run, whether the exported model meets the budget as measured."""
    from edgenas.export.report import describe_budget, describe_prediction
    from edgenas.run_report import _export

    exp = json.loads((straight_run / "export" / "report.json").read_text())
    p = exp["prediction"]
    assert describe_budget(p) is None and describe_prediction(p) in _export(exp, None)
    p["budget"] = {"limit_ms": 1e-6, "measured_ms": p["measured_ms"], "units": p["units"], "met": False}
    blocks = _export(exp, None)
    assert "Latency budget: the exported model does NOT meet 1e-06 ms as measured" in " ".join(
        b for b in blocks if isinstance(b, str))


@pytest.mark.parametrize("edit, needle", [
    (lambda t: t.replace("[profile]\n", '[profile]\nmode = "train"\n', 1), r"\[profile\] mode is 'train'"),
    (lambda t: t.replace("[profile]\n", '[profile]\ndtype = "fp16"\n', 1)
     .replace("[budget]\n", '[budget]\nlatency_budget = "50ms"\n', 1), r"\[profile\] dtype is 'fp16'"),
])
def test_profile_settings_the_export_would_refuse_stop_the_run_before_any_stage(tmp_path: Path, edit,
                                                                                needle) -> None:
    """The export refuses a train-mode profile, and an fp16 one for a latency budget: a run is
    refused for them before the first stage, not after minutes of searching and training."""
    path = _config(tmp_path)
    path.write_text(edit(path.read_text()))
    with pytest.raises(EdgenasError, match=needle):
        run_pipeline(load_config(path, {}), tmp_path / "run", device=CPU, quiet=True)
    assert not (tmp_path / "run" / "profile.json").exists()
