"""`edgenas search` and `edgenas list methods` through the CLI, including every bad input it handles."""

from __future__ import annotations

import json

import pytest
from cli_assert import assert_clean_failure
from typer.testing import CliRunner

from edgenas.cli import app
from edgenas.space import SearchSpace

TINY = ["--data", "synthetic:40", "--subset", "16", "--epochs", "2", "--batch-size", "4", "--layers", "3",
        "--channels", "4", "--nodes", "2", "--warmup-epochs", "0", "--quiet"]


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def test_list_methods_json_has_all_six():
    result = invoke("list", "methods", "--json")
    assert result.exit_code == 0
    rows = json.loads(result.stdout)
    assert [r["name"] for r in rows] == ["darts", "pc_darts", "adarts", "swd", "el_darts", "attn_darts"]
    el = next(r for r in rows if r["name"] == "el_darts")
    assert el["settings"]["partial_k"] == 4 and el["settings"]["t_init"] == 5.0
    assert next(r for r in rows if r["name"] == "swd")["default_cells"] == 5


@pytest.fixture(scope="module")
def paused_run(tmp_path_factory):
    """A pc_darts search over a pruned 3-operator space, stopped after its first of two epochs."""
    root = tmp_path_factory.mktemp("search-cli")
    space = SearchSpace(("max_pool_3x3", "skip_connect", "sep_conv_3x3")).save(root / "space.json")
    out = root / "run"
    result = invoke("search", *TINY, "--method", "pc_darts", "--partial-k", "2", "--space", str(space),
                    "--out", str(out), "--stop-after", "1")
    assert result.exit_code == 0, result.output
    return root, out, space


def test_cli_resumes_and_prints_json(paused_run):
    root, out, space = paused_run
    result = invoke("search", *TINY, "--method", "pc_darts", "--partial-k", "2", "--space", str(space),
                    "--out", str(out), "--resume", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["epochs_done"] == 2 and summary["ops"] == ["max_pool_3x3", "skip_connect", "sep_conv_3x3"]
    assert {op for op, _ in summary["genotype"]["normal"]} <= set(summary["ops"])
    assert summary["normal_skip_connect"] == sum(op == "skip_connect" for op, _ in summary["genotype"]["normal"])
    assert len(summary["seconds_per_epoch"]) == 2 and summary["peak_memory_bytes"] > 0
    assert (out / "figures" / "arch_weights.png").exists() and (out / "figures" / "genotype.png").exists()


def test_resume_with_another_method_or_space_is_refused(paused_run, tmp_path):
    root, out, space = paused_run
    assert_clean_failure(invoke("search", *TINY, "--method", "el_darts", "--partial-k", "2", "--space", str(space),
               "--out", str(out), "--resume"), "method=pc_darts", "method=el_darts")
    other = SearchSpace(("max_pool_3x3", "sep_conv_3x3")).save(tmp_path / "other.json")
    assert_clean_failure(invoke("search", *TINY, "--method", "pc_darts", "--partial-k", "2", "--space", str(other),
               "--out", str(out), "--resume"), "ops=", "search checkpoint")


def test_starting_over_an_existing_run_is_refused(paused_run):
    root, out, space = paused_run
    assert_clean_failure(invoke("search", *TINY, "--method", "pc_darts", "--partial-k", "2", "--out", str(out)),
                         "already holds", "--resume")


def test_unknown_method(tmp_path):
    assert_clean_failure(invoke("search", *TINY, "--method", "enas", "--out", str(tmp_path / "r")),
                         "unknown search method 'enas'", "pc_darts")


@pytest.mark.parametrize("content,fragment", [
    (None, "does not exist"),
    ("{not json", "is not valid JSON"),
    ('{"format": "edgenas.space", "version": 1, "ops": ["sep_conv_3x3"]}', "at least 2 operators"),
    ('{"format": "edgenas.space", "version": 1, "ops": ["sep_conv_3x3", "warp_drive"]}', "unknown operator"),
    ('{"format": "edgenas.profile", "version": 1}', "'format'"),
])
def test_bad_space_files(tmp_path, content, fragment):
    path = tmp_path / "space.json"
    if content is not None:
        path.write_text(content)
    assert_clean_failure(invoke("search", *TINY, "--space", str(path), "--out", str(tmp_path / "r")), fragment)
    assert not (tmp_path / "r").exists(), "nothing may be written for a bad input"


def test_k_that_does_not_divide_the_channels(tmp_path):
    assert_clean_failure(invoke("search", *TINY, "--method", "el_darts", "--partial-k", "3",
                                "--out", str(tmp_path / "r")),
                         "--partial-k 3 does not divide --channels 4")


def test_option_for_another_method(tmp_path):
    assert_clean_failure(invoke("search", *TINY, "--method", "darts", "--no-entropy", "--out", str(tmp_path / "r")),
        "--no-entropy does not apply to method 'darts'")


def test_dataset_too_small_to_halve(tmp_path):
    args = [a if a != "16" else "1" for a in TINY]  # --subset 1
    assert_clean_failure(invoke("search", *args, "--out", str(tmp_path / "r")), "too few to split into halves")


def test_warmup_must_end_before_the_last_epoch(tmp_path):
    args = [a if a != "0" else "2" for a in TINY]  # --warmup-epochs 2 of 2
    assert_clean_failure(invoke("search", *args, "--out", str(tmp_path / "r")),
                         "--warmup-epochs 2 is not below --epochs 2")


def test_help_shows_the_defaults_of_the_configs_options_override():
    from edgenas.profiling import ProfileSettings
    from edgenas.search.budgets import BudgetSpec
    from edgenas.search.loop import SearchConfig

    runner = CliRunner()
    text = " ".join(runner.invoke(app, ["search", "--help"], env={"COLUMNS": "200"}).output.split())
    for shown in (f"Search epochs [{SearchConfig().epochs}]", f"augmentation [{SearchConfig().seed}]",
                  f"[{SearchConfig().batch_size}]", f"[{BudgetSpec().budget_batch}]"):
        assert shown in text
    assert "{" not in text
    # bracketed text is text, not markup: the default run folder and the penalty's E[cost] show
    assert "Run folder [runs/search-<method>" in text and "E[cost]" in text
    text = " ".join(runner.invoke(app, ["profile", "--help"], env={"COLUMNS": "200"}).output.split())
    assert f"at least [{ProfileSettings().runs}]" in text and "{" not in text
