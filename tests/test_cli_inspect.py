"""`edgenas inspect` and `edgenas list genotypes` through the CLI, including every bad-input path."""

from __future__ import annotations

import json

import pytest
from cli_assert import assert_clean_failure
from typer.testing import CliRunner

from edgenas.cli import app
from edgenas.costs import count_macs
from edgenas.genotypes import GENOTYPES, save_genotype
from edgenas.nets import build_network, cell_shapes, default_config
from edgenas.network_costs import network_macs

TINY = ["--channels", "8", "--layers", "5", "--input", "16x16"]


def run(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_inspect_darts_v2_cifar_published_numbers() -> None:
    r = run("inspect", "DARTS_V2", "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["params"] == 3_349_342
    cfg = default_config("cifar10")
    assert out["macs"] == count_macs(build_network(GENOTYPES["DARTS_V2"], cfg), cfg.input_shape)
    assert out["thop_macs"] > out["macs"]  # thop also counts BatchNorm
    assert "Conv2d and Linear only" in out["mac_convention"]
    assert out["mobile_setting"]["meets"] is None and out["latency"] is None and out["fit"] is None
    assert out["config"]["C"] == 36 and out["config"]["layers"] == 20
    # the human summary still goes to stderr under --json
    assert "3,349,342" in r.stderr and "auxiliary head excluded" in r.stderr


def test_inspect_imagenet_mobile_verdict() -> None:
    r = run("inspect", "DARTS_V2", "--setting", "imagenet-mobile")
    assert r.exit_code == 0, r.output
    assert "4,718,752" in r.stdout and "meets the mobile setting" in r.stdout
    assert "thop" in r.stdout and "1 MAC = 1 multiply-add" in r.stdout
    # a wider network no longer meets it; another input size is judged at 224x224, where the setting is defined
    r = run("inspect", "DARTS_V2", "--setting", "imagenet-mobile", "--channels", "64", "--json")
    assert json.loads(r.stdout)["mobile_setting"]["meets"] is False
    r = run("inspect", "DARTS_V2", "--setting", "imagenet-mobile", "--input", "64x64", "--json")
    out = json.loads(r.stdout)
    assert out["mobile_setting"]["meets"] is True and out["macs"] < 100_000_000
    assert "counted at 224x224, this network's input is 64x64" in out["mobile_setting"]["note"]


def test_inspect_grayscale_classes_and_files(tmp_path) -> None:
    g = GENOTYPES["PC_DARTS_cifar"]
    save_genotype(g, tmp_path / "g.json")
    (tmp_path / "g.txt").write_text("best genotype = " + g.to_literal() + "\n")
    outs = []
    for spec in (tmp_path / "g.json", tmp_path / "g.txt", "PC_DARTS_cifar"):
        r = run("inspect", spec, *TINY, "--classes", "7", "--in-channels", "1", "--json")
        assert r.exit_code == 0, r.output
        outs.append(json.loads(r.stdout))
    assert outs[0]["genotype"] == outs[1]["genotype"] == g.to_dict()
    assert outs[0]["macs"] == outs[1]["macs"] == outs[2]["macs"]
    assert outs[0]["config"]["in_channels"] == 1 and outs[0]["config"]["num_classes"] == 7
    assert outs[0]["name"] == "g" and outs[2]["name"] == "PC_DARTS_cifar"


@pytest.mark.parametrize("budget", ["2M", "0.002G", "2000000"])
def test_inspect_fit_macs_budget_forms(budget: str) -> None:
    r = run("inspect", "DARTS_V2", "--layers", "5", "--input", "16x16", "--fit-macs", budget, "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    C = out["fit"]["C"]
    assert out["config"]["C"] == C and C % 2 == 0
    assert out["macs"] <= 2_000_000 < out["fit"]["next_macs"]
    g = GENOTYPES["DARTS_V2"]
    cfg = default_config("cifar10", layers=5, input_hw=(16, 16), C=C + 2)
    assert out["fit"]["next_macs"] == network_macs(g, cfg)


def test_inspect_plot_writes_png(tmp_path) -> None:
    r = run("inspect", "DARTS_V1", *TINY, "--plot", tmp_path / "figs")
    assert r.exit_code == 0, r.output
    png = tmp_path / "figs" / "DARTS_V1_cells.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert str(png) in r.stdout


def _profile(tmp_path, genotype: str, skip: int, fixed: float | None = 1.5) -> tuple:
    """A hand-made eager profile: every operator shape at 0.5 ms but the first ``skip``, and the
    TINY network's fixed part at ``fixed`` ms (None: no fixed part)."""
    from edgenas.device import TimingStats
    from edgenas.profiling import FixedPart, NetKey, Profile, ProfileEntry, ShapeKey

    cfg = default_config("cifar10", C=8, layers=5, input_hw=(16, 16))
    shapes = cell_shapes(GENOTYPES[genotype], cfg)
    distinct = list(dict.fromkeys(shapes))
    entries = [ProfileEntry(ShapeKey(*s), TimingStats(0.5, 0.4, 0.6, 0.5, 0.01, 5), 0, "test", 0, 0)
               for s in distinct[skip:]]
    parts = [] if fixed is None else [FixedPart(NetKey.of(cfg), TimingStats(fixed, fixed, fixed, fixed, 0.0, 5),
                                                fixed + 1.0, 1.0)]
    path = Profile("cpu-test", 4, "fp32", "forward", {}, entries, parts=parts).save(tmp_path / "p.json")
    return path, shapes, distinct


def test_inspect_profile_complete_is_the_whole_network(tmp_path) -> None:
    path, shapes, _ = _profile(tmp_path, "DARTS_V2", skip=0)
    r = run("inspect", "DARTS_V2", *TINY, "--profile", path, "--json")
    assert r.exit_code == 0, r.output
    lat = json.loads(r.stdout)["latency"]
    # prediction = fixed part + every operator instance: the parts add up
    assert lat["complete"] and lat["total_ms"] == pytest.approx(1.5 + 0.5 * len(shapes))
    assert lat["fixed_ms"] == 1.5 and lat["found_ms"] == pytest.approx(0.5 * len(shapes))
    assert sum(e["instances"] for e in lat["looked_up"]) == len(shapes) and lat["batch"] == 4
    r = run("inspect", "DARTS_V2", *TINY, "--profile", path)
    total = 1.5 + 0.5 * len(shapes)
    assert f"predicted {total:.3g} ms, whole network, PyTorch eager on cpu, batch 4" in r.stdout
    assert "whole network" in r.stdout and "stems" in r.stdout


def test_inspect_profile_missing_shapes_are_listed(tmp_path) -> None:
    path, _, distinct = _profile(tmp_path, "DARTS_V2", skip=2)
    r = run("inspect", "DARTS_V2", *TINY, "--profile", path, "--json")
    assert r.exit_code == 0, r.output
    lat = json.loads(r.stdout)["latency"]
    assert lat["total_ms"] is None and not lat["complete"]
    assert [(m["op"], m["C"], m["H"], m["W"], m["stride"]) for m in lat["missing"]] == [tuple(s) for s in distinct[:2]]
    r = run("inspect", "DARTS_V2", *TINY, "--profile", path)
    assert "no prediction (2 operator shape(s) missing)" in r.stdout and "missing" in r.stdout
    text = r.stdout.replace("\n", " ")
    assert "--setting cifar10 --channels 8 --layers 5 --input 16x16 --batch 4" in text
    assert f"--ops {distinct[0].op}" in text


def test_inspect_names_a_missing_fixed_part(tmp_path) -> None:
    path, _, _ = _profile(tmp_path, "DARTS_V2", skip=0, fixed=None)
    r = run("inspect", "DARTS_V2", *TINY, "--profile", path, "--json")
    lat = json.loads(r.stdout)["latency"]
    assert lat["total_ms"] is None and lat["missing_part"].startswith("cifar10 C=8, 5 cells, 3x16x16")
    r = run("inspect", "DARTS_V2", *TINY, "--profile", path)
    assert "no fixed part for cifar10 C=8, 5 cells" in r.stdout.replace("\n", " ")


def test_inspect_measure_on_another_device_is_refused(tmp_path) -> None:
    path, _, _ = _profile(tmp_path, "DARTS_V2", skip=0)  # device "cpu-test" is not this machine
    r = run("inspect", "DARTS_V2", *TINY, "--profile", path, "--measure")
    assert_clean_failure(r, "device cpu-test")
    r = run("inspect", "DARTS_V2", *TINY, "--measure")
    assert_clean_failure(r, "need a --profile")


def test_inspect_measure_prints_predicted_measured_and_error(tmp_path) -> None:
    """A real (tiny) onnxruntime profile of the TINY network, then --measure on it."""
    out = tmp_path / "ort.json"
    r = run("profile", "--setting", "cifar10", "--channels", "8", "--layers", "5", "--input", "16x16",
            "--no-search-shapes", "--ops", "skip_connect,sep_conv_3x3,max_pool_3x3,dil_conv_3x3",
            "--threads", "1", "--min-seconds", "0.02", "--max-seconds", "0.05", "--runs", "3", "--out", out, "-q")
    assert r.exit_code == 0, r.output
    geno = tmp_path / "g.json"
    from edgenas.genotypes import Genotype

    g = Genotype(normal=(("sep_conv_3x3", 0), ("skip_connect", 1), ("dil_conv_3x3", 0), ("sep_conv_3x3", 2),
                         ("skip_connect", 0), ("max_pool_3x3", 1), ("sep_conv_3x3", 3), ("skip_connect", 4)),
                 normal_concat=(2, 3, 4, 5),
                 reduce=(("max_pool_3x3", 0), ("sep_conv_3x3", 1), ("skip_connect", 2), ("dil_conv_3x3", 0),
                         ("max_pool_3x3", 1), ("skip_connect", 3), ("sep_conv_3x3", 4), ("skip_connect", 2)),
                 reduce_concat=(2, 3, 4, 5))
    save_genotype(g, geno)
    r = run("inspect", str(geno), *TINY, "--profile", out, "--measure", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    m, lat = doc["measured"], doc["latency"]
    assert lat["complete"] and m["predicted_ms"] == lat["total_ms"] and m["measured_ms"] > 0
    assert m["relative_error"] == pytest.approx((m["predicted_ms"] - m["measured_ms"]) / m["measured_ms"])
    assert m["units"] == "onnxruntime CPU provider, batch 1"
    r = run("inspect", str(geno), *TINY, "--profile", out, "--measure")
    assert "measured" in r.stdout and "error" in r.stdout and "onnxruntime CPU provider, batch 1" in r.stdout


def test_list_genotypes() -> None:
    r = run("list", "genotypes", "--json")
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)
    assert [row["name"] for row in rows] == list(GENOTYPES)
    assert rows[1]["normal"] == GENOTYPES["DARTS_V2"].to_dict()["normal"]
    r = run("list", "genotypes")
    assert "PC_DARTS_image" in r.stdout and "Xu et al." in r.stdout


def _bad_genotype(tmp_path, name: str, **changes) -> str:
    d = GENOTYPES["DARTS_V2"].to_dict()
    d.update(changes)
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({"format": "edgenas.genotype", "version": 1, **d}))
    return str(path)


def _edges(i: int, edge: list) -> list:
    e = GENOTYPES["DARTS_V2"].to_dict()["normal"]
    e[i] = edge
    return e


def test_inspect_bad_genotypes(tmp_path) -> None:
    assert_clean_failure(run("inspect", tmp_path / "missing.json"), "does not exist")
    assert_clean_failure(run("inspect", "DARTS_V3"), "'DARTS_V3' is neither a built-in", "DARTS_V2", "PC_DARTS_image")
    (tmp_path / "junk.txt").write_text("this is neither JSON nor a literal\n")
    assert_clean_failure(run("inspect", tmp_path / "junk.txt"), "no Genotype(...) literal found")
    (tmp_path / "broken.json").write_text('{"format": "edgenas.genotype", "version": 1, "normal": [')
    assert_clean_failure(run("inspect", tmp_path / "broken.json"), "not valid JSON")
    cases = {
        "index": ({"normal": _edges(3, ["sep_conv_3x3", 4])}, "normal[3]: input index 4 does not precede node 1"),
        "unknown": ({"normal": _edges(0, ["conv_9x9", 0])}, "normal[0]: unknown operator 'conv_9x9'"),
        "none": ({"normal": _edges(2, ["none", 1])}, "normal[2]: 'none' cannot be chosen"),
        "count": ({"reduce": GENOTYPES["DARTS_V2"].to_dict()["reduce"][:5]}, "reduce: 5 edges"),
        "concat": ({"normal_concat": [2, 3, 7]}, "normal_concat: 7 is not an intermediate node"),
    }
    for name, (changes, message) in cases.items():
        assert_clean_failure(run("inspect", _bad_genotype(tmp_path, name, **changes)), message, f"{name}.json")
    literal = GENOTYPES["DARTS_V2"].to_literal().replace("('dil_conv_3x3', 2)", "('dil_conv_3x3', 9)")
    (tmp_path / "lit.py").write_text(literal)
    assert_clean_failure(run("inspect", tmp_path / "lit.py"), "normal[7]: input index 9 does not precede node 3")


def test_inspect_bad_options(tmp_path) -> None:
    assert_clean_failure(run("inspect", "DARTS_V2", "--setting", "imagenet-mobile", "--channels", "47"),
                         "channel count 47 is odd", "even")
    assert_clean_failure(run("inspect", "DARTS_V2", "--layers", "5", "--input", "16x16", "--fit-macs", "1K"),
                         "no network fits", "smallest, C=2")
    assert_clean_failure(run("inspect", "DARTS_V2", "--fit-macs", "lots"), "cannot read --fit-macs budget 'lots'")
    assert_clean_failure(run("inspect", "DARTS_V2", "--fit-macs", "600M", "--channels", "36"), "--fit-macs")
    assert_clean_failure(run("inspect", "DARTS_V2", "--input", "32by32"), "cannot read input size")
    assert_clean_failure(run("inspect", "DARTS_V2", "--setting", "mnist"), "unknown setting 'mnist'")
    (tmp_path / "p.json").write_text("{}")
    assert_clean_failure(run("inspect", "DARTS_V2", "--profile", tmp_path / "p.json"), "field 'format'")
    assert_clean_failure(run("inspect", "DARTS_V2", "--profile", tmp_path / "none.json"), "does not exist")
