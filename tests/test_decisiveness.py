"""Decisiveness of the operator weights and seed agreement: the measures, a tiny search, the CLI."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from cli_assert import assert_clean_failure
from typer.testing import CliRunner

from edgenas.cells import CELL_TYPES
from edgenas.cli import app
from edgenas.genotypes import Genotype
from edgenas.run_report import decisiveness_blocks
from edgenas.search.decisiveness import (
    DECIDED_MARGIN,
    UNDECIDED_NOTE,
    agreement_report,
    chosen_edges,
    decisiveness,
    edge_margins_entropies,
    genotype_agreement,
    node_agreement,
    random_agreement_exact,
    random_agreement_sampled,
    random_genotype,
    sample_random_genotypes,
)

OPS = ("none", "skip_connect", "sep_conv_3x3", "max_pool_3x3")
TINY = ["--data", "synthetic:40", "--subset", "16", "--epochs", "2", "--batch-size", "4", "--layers", "3",
        "--channels", "4", "--nodes", "2", "--warmup-epochs", "0"]


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def geno(normal, reduce=None) -> Genotype:
    concat = tuple(range(2, len(normal) // 2 + 2))
    return Genotype(normal=normal, normal_concat=concat, reduce=reduce or normal, reduce_concat=concat)


def test_margin_and_entropy_ignore_none_and_span_uniform_to_one_hot():
    w = np.array([[0.7, 0.1, 0.1, 0.1],       # 'none' strongest: the real operators are uniform
                  [0.0, 1.0, 0.0, 0.0],       # one-hot
                  [0.1, 0.5, 0.3, 0.1]])
    margin, ent = edge_margins_entropies(w, OPS)
    assert margin[0] == pytest.approx(0.0) and ent[0] == pytest.approx(1.0)
    assert margin[1] == pytest.approx(1.0) and ent[1] == pytest.approx(0.0)
    p = np.array([0.5, 0.3, 0.1]) / 0.9
    assert margin[2] == pytest.approx(p[0] - p[1])
    assert ent[2] == pytest.approx(-(p * np.log(p)).sum() / np.log(3))


def test_chosen_edges_follow_the_darts_edge_order():
    # node 0: edges 0,1 (inputs 0,1); node 1: edges 2,3,4 (inputs 0,1,2)
    assert chosen_edges((("a", 1), ("b", 0), ("c", 2), ("d", 0))) == [1, 0, 4, 2]


def test_verdict_counts_only_the_derived_edges():
    uniform = np.full((5, 4), 0.25)
    decided = uniform.copy()
    decided[[0, 4]] = [0.0, 0.9, 0.05, 0.05]  # the two edges the genotype below takes ...
    g = geno((("skip_connect", 0), ("skip_connect", 1), ("skip_connect", 2), ("skip_connect", 1)))
    dec = decisiveness({"normal": decided, "reduce": decided}, OPS, g)
    # ... edges 0 and 4 of 5 are decided; the genotype takes 0, 1, 4, 3: half of them
    assert dec["cells"]["normal"]["decided"] == [True, False, False, False, True]
    assert dec["cells"]["normal"]["decided_share"] == pytest.approx(0.4)
    assert dec["chosen_decided_share"] == pytest.approx(0.5) and dec["mostly_undecided"] is False
    flat = decisiveness({"normal": uniform, "reduce": uniform}, OPS, g)
    assert flat["mostly_undecided"] is True and flat["cells"]["reduce"]["median_entropy"] == pytest.approx(1.0)
    assert flat["threshold"] == DECIDED_MARGIN
    assert any(UNDECIDED_NOTE in b for b in decisiveness_blocks([{"decisiveness": flat}]))
    assert not any(UNDECIDED_NOTE in b for b in decisiveness_blocks([{"decisiveness": dec}]))


def test_exact_chance_level_matches_brute_force_enumeration():
    ops, steps = ("none", "skip_connect", "sep_conv_3x3", "max_pool_3x3"), 3
    names = ["skip_connect", "sep_conv_3x3", "max_pool_3x3"]
    exact = random_agreement_exact(ops, steps)
    for j in range(steps):
        options = [((oa, a), (ob, b)) for a, b in itertools.combinations(range(j + 2), 2)
                   for oa, ob in itertools.product(names, names)]
        sums = {"inputs": 0.0, "operators": 0.0, "edges": 0.0}
        for x, y in itertools.product(options, options):
            for k, v in node_agreement(x, y).items():
                sums[k] += v
        for k, v in sums.items():
            assert exact["per_node"][j][k] == pytest.approx(v / len(options) ** 2, abs=1e-4)


def test_sampled_chance_level_agrees_with_exact_and_budget_sampling_respects_the_constraint():
    exact = random_agreement_exact(OPS, 2)["overall"]
    sampled = random_agreement_sampled(OPS, 2, lambda g: True, samples=3000, seed=1)["overall"]
    for k in exact:
        assert sampled[k] == pytest.approx(exact[k], abs=0.03)
    rng = np.random.default_rng(0)
    no_sep = sample_random_genotypes(OPS, 2, 5, rng, accept=lambda g: "sep_conv_3x3" not in g.ops())
    assert len(set(no_sep)) == 5 and all("sep_conv_3x3" not in g.ops() for g in no_sep)
    with pytest.raises(ValueError, match="found only"):
        sample_random_genotypes(OPS, 2, 1, rng, accept=lambda g: False, max_tries=50)


def test_agreement_of_identical_and_of_random_genotypes():
    g = random_genotype(OPS, 3, np.random.default_rng(0))
    same = genotype_agreement([g, g, g])
    assert same["pairs"] == 3 and same["overall"] == {"inputs": 1.0, "operators": 1.0, "edges": 1.0}
    report = agreement_report([g, g], OPS)
    assert report["random"]["method"] == "exact"
    assert report["ratio_to_random"]["edges"] == pytest.approx(1.0 / report["random"]["overall"]["edges"], rel=1e-2)


def test_tiny_search_records_decisiveness_every_epoch_and_says_when_it_did_not_choose(tmp_path):
    out = tmp_path / "run"
    result = invoke("search", *TINY, "--method", "darts", "--out", str(out))
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert len(records) == 2
    for r in records:
        dec = r["decisiveness"]
        for t in CELL_TYPES:
            assert len(dec["cells"][t]["margin"]) == len(r["op_weights"][t]) == 5
            assert all(0.0 <= e <= 1.0 for e in dec["cells"][t]["entropy"])
    # 2 x 2 architecture steps at the default arch lr cannot move weights past the threshold
    assert records[-1]["decisiveness"]["mostly_undecided"] is True
    assert "too short to choose" in " ".join(result.stdout.split())
    assert (out / "figures" / "arch_weights.png").exists()


def test_a_long_enough_step_decides(tmp_path):
    out = tmp_path / "run"
    result = invoke("search", *TINY, "--method", "darts", "--arch-lr", "0.5", "--out", str(out), "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["decisiveness"]["cells"]["normal"]["median_margin"] > DECIDED_MARGIN
    assert summary["note"] is None


def test_seeds_run_one_search_each_and_report_agreement(tmp_path):
    out = tmp_path / "multi"
    result = invoke("search", *TINY, "--method", "darts", "--epochs", "1", "--seeds", "0,1", "--out", str(out),
                    "--json", "--quiet")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert set(doc["seeds"]) == {"0", "1"}
    for s in (0, 1):
        assert (out / f"seed-{s}" / "genotype.json").exists()
    g0, g1 = (Genotype.from_dict(doc["seeds"][s]["genotype"]) for s in ("0", "1"))
    agreement = json.loads((out / "seed_agreement.json").read_text())
    assert agreement["format"] == "edgenas.seed-agreement"
    assert agreement["overall"] == genotype_agreement([g0, g1])["overall"] == doc["agreement"]["overall"]
    assert agreement["random"]["overall"] == random_agreement_exact(doc["seeds"]["0"]["ops"], 2)["overall"]
    assert len(agreement["cells"]["normal"]) == 2


@pytest.mark.parametrize("args, needle", [
    (["--seeds", "1"], "at least two distinct"),
    (["--seeds", "0,0"], "at least two distinct"),
    (["--seeds", "a,b"], "cannot read --seeds"),
    (["--seeds", "0,1", "--seed", "3"], "--seed and --seeds"),
])
def test_bad_seeds_fail_cleanly(tmp_path, args, needle):
    assert_clean_failure(invoke("search", *TINY, "--out", str(tmp_path / "x"), *args), needle)


def test_seeds_refuse_a_single_run_folder(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "history.jsonl").write_text("")
    assert_clean_failure(invoke("search", *TINY, "--seeds", "0,1", "--out", str(out)), "single search run folder")


def test_the_demo_search_can_move_its_weights_past_the_threshold():
    """Adam moves a logit by about arch_lr per step: the demo's reach must allow a decision."""
    import math
    from pathlib import Path

    from edgenas.pipeline import load_config

    cfg = load_config(Path(__file__).resolve().parents[1] / "edgenas/configs/demo.toml", {}).search
    steps = math.ceil(cfg.subset / 2 / cfg.batch_size) * (cfg.epochs - cfg.warmup_epochs)
    reach = cfg.arch_lr * steps
    # a leader `reach` ahead of three equal operators: margin e^r / (e^r + 3) - 1 / (e^r + 3)
    best_margin = (math.exp(reach) - 1) / (math.exp(reach) + 3)
    assert reach >= 1.0 and best_margin > 4 * DECIDED_MARGIN


def test_run_report_shows_decisiveness_per_epoch_and_the_warning(tmp_path):
    from edgenas.run_report import collect, write_run_report

    uniform = np.full((5, 4), 0.25)
    g = geno((("skip_connect", 0), ("skip_connect", 1), ("skip_connect", 2), ("skip_connect", 1)))
    dec = decisiveness({"normal": uniform, "reduce": uniform}, OPS, g)
    (tmp_path / "search").mkdir()
    (tmp_path / "search" / "history.jsonl").write_text(json.dumps({"epoch": 0, "decisiveness": dec}) + "\n")
    md, page = write_run_report(tmp_path, {"method": "el_darts", "data": "synthetic"})
    text = md.read_text()
    assert "decided normal (median margin)" in text and "| 0% (0.000) |" in text
    assert UNDECIDED_NOTE in text and UNDECIDED_NOTE in page.read_text()
    assert collect(tmp_path)["search_note"] == UNDECIDED_NOTE


def test_an_interrupted_multi_seed_search_resumes_and_a_rerun_without_resume_is_refused(tmp_path):
    out = tmp_path / "multi"
    base = ["search", *TINY, "--method", "darts", "--seeds", "0,1", "--out", str(out), "--json", "--quiet"]
    first = invoke(*base, "--stop-after", "1")
    assert first.exit_code == 0, first.output
    assert json.loads(first.stdout)["agreement"] is None and not (out / "seed_agreement.json").exists()
    (out / "seed-1").rename(tmp_path / "moved")  # seed 1 never started: --resume must start it
    done = invoke(*base, "--resume")
    assert done.exit_code == 0, done.output
    doc = json.loads(done.stdout)
    assert doc["seeds"]["0"]["epochs_done"] == 2 and doc["agreement"]["seeds"] == 2
    assert_clean_failure(invoke(*base[:-2]), "seed-0", "already holds a search run")


def test_chance_under_a_budget_few_genotypes_meet_ends_and_says_how_it_was_estimated():
    from edgenas.search.decisiveness import random_agreement_exact

    calls = []

    def rare(g):
        calls.append(g)
        return len(calls) in (7, 19, 40)  # three genotypes ever meet it: one pair

    few = random_agreement_sampled(OPS, 2, rare, samples=100, max_tries=500)
    assert len(calls) == 500 and few["method"].startswith("sampled (1 pair of")
    none = random_agreement_sampled(OPS, 2, lambda g: False, samples=100, max_tries=300)
    assert "no two of 300" in none["method"]
    assert none["overall"] == random_agreement_exact(OPS, 2)["overall"]
