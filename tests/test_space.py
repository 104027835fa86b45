"""Search spaces and the prune rules, on hand-built profiles where each rule can and cannot fire."""

from __future__ import annotations

import json

import pytest

from edgenas.device import TimingStats
from edgenas.errors import EdgenasError
from edgenas.ops import DARTS_OPS, EL_DARTS_OPS
from edgenas.profiling import MEMORY_CPU, Profile, ProfileEntry, Shape, ShapeKey
from edgenas.space import PruneConfig, SearchSpace, op_totals, prune

S1, S2 = Shape(16, 32, 32, 1), Shape(32, 32, 32, 2)

# latency ms, MACs, params, memory bytes: shaped like a typical CPU profile
TYPICAL = {
    "none": (0.05, 0, 0, 100),
    "max_pool_3x3": (0.4, 0, 0, 300),
    "avg_pool_3x3": (0.5, 0, 0, 100),
    "skip_connect": (0.01, 0, 0, 0),
    "sep_conv_3x3": (2.0, 800, 50, 1400),
    "sep_conv_5x5": (3.0, 1300, 80, 1400),
    "dil_conv_3x3": (1.2, 400, 25, 800),
    "dil_conv_5x5": (1.6, 650, 40, 800),
}


def entry(op: str, shape: Shape, lat: float, macs: int, params: int, mem: int) -> ProfileEntry:
    t = TimingStats(lat, lat, lat, lat, 0.0, 1)
    return ProfileEntry(ShapeKey(op, shape.C, shape.H, shape.W, shape.stride), t, mem, MEMORY_CPU, macs, params)


def make_profile(rows: dict[str, tuple], shapes=(S1,), **per_shape) -> Profile:
    """One row of numbers per op, repeated at each shape unless ``per_shape[op]`` lists them."""
    entries = [entry(op, s, *per_shape.get(op, [row] * len(shapes))[i])
               for i, s in enumerate(shapes) for op, row in rows.items()]
    return Profile("cpu-test", 32, "fp32", "forward", {}, entries)


def with_(**changes) -> dict[str, tuple]:
    rows = dict(TYPICAL)
    rows.update(changes)
    return rows


def rules(space: SearchSpace) -> dict[str, str]:
    """The rules that dropped measured operators (unmeasured ones are tested on their own)."""
    return {d.op: d.rule for d in space.dropped if d.rule != "unmeasured"}


def test_typical_profile_arrives_at_el_darts():
    space = prune(make_profile(TYPICAL, shapes=(S1, S2)), source="p.json")
    assert space.ops == EL_DARTS_OPS
    assert rules(space) == {"none": "zero", "avg_pool_3x3": "pool",
                            "sep_conv_5x5": "kernel", "dil_conv_5x5": "kernel"}
    assert space.profile == "p.json"
    d = {d.op: d for d in space.dropped}
    # the numbers that dropped it: summed over both shapes, its own and the winner's
    assert d["sep_conv_5x5"].numbers["latency_ms"] == pytest.approx(6.0)
    assert d["sep_conv_5x5"].numbers["than_latency_ms"] == pytest.approx(4.0)
    assert d["sep_conv_5x5"].numbers["than_macs"] == 1600
    assert "sep_conv_3x3" in d["sep_conv_5x5"].reason
    assert d["avg_pool_3x3"].numbers == {"latency_ms": 1.0, "macs": 0.0, "params": 0.0, "memory_bytes": 200.0,
                                         "than_latency_ms": 0.8, "than_macs": 0.0, "than_params": 0.0,
                                         "than_memory_bytes": 600.0, "margin_ms": 0.0}
    assert any("summed over 2 shape(s)" in n for n in space.notes)


def test_zero_rule_fires_only_for_the_zero_op():
    space = prune(make_profile(TYPICAL))
    assert rules(space)["none"] == "zero"
    kept = prune(make_profile(TYPICAL), PruneConfig(keep=("none",)))
    assert "none" in kept.ops and "none" not in rules(kept)
    no_zero = {k: v for k, v in TYPICAL.items() if k != "none"}
    assert "zero" not in rules(prune(make_profile(no_zero))).values()


@pytest.mark.parametrize("field", range(4))
def test_kernel_rule_needs_the_smaller_kernel_no_worse_on_every_count(field):
    # make sep_conv_3x3 worse than sep_conv_5x5 on one count only: the 5x5 must stay
    worse = list(TYPICAL["sep_conv_3x3"])
    worse[field] = TYPICAL["sep_conv_5x5"][field] + (0.1 if field == 0 else 1)
    space = prune(make_profile(with_(sep_conv_3x3=tuple(worse))))
    assert "sep_conv_5x5" in space.ops and "sep_conv_3x3" in space.ops
    assert rules(space)["dil_conv_5x5"] == "kernel"  # the other family still prunes
    assert any(n.startswith("sep_conv_5x5 kept") for n in space.notes)


def test_kernel_rule_fires_on_ties():
    space = prune(make_profile(with_(sep_conv_3x3=TYPICAL["sep_conv_5x5"])))
    assert rules(space)["sep_conv_5x5"] == "kernel"


def test_kernel_rule_compares_sums_over_shapes():
    # the 3x3 is slower at one shape, faster at the other; the sum decides (a net pays both)
    rows = {"sep_conv_3x3": TYPICAL["sep_conv_3x3"], "sep_conv_5x5": TYPICAL["sep_conv_5x5"],
            "skip_connect": TYPICAL["skip_connect"]}
    faster_overall = make_profile(rows, (S1, S2),
                                  sep_conv_3x3=[(4.0, 800, 50, 1400), (1.0, 800, 50, 1400)],
                                  sep_conv_5x5=[(3.0, 1300, 80, 1400), (3.0, 1300, 80, 1400)])
    assert rules(prune(faster_overall)) == {"sep_conv_5x5": "kernel"}
    slower_overall = make_profile(rows, (S1, S2),
                                  sep_conv_3x3=[(4.0, 800, 50, 1400), (2.5, 800, 50, 1400)],
                                  sep_conv_5x5=[(3.0, 1300, 80, 1400), (3.0, 1300, 80, 1400)])
    assert rules(prune(slower_overall)) == {}
    assert op_totals(slower_overall, "sep_conv_3x3", [S1, S2]).latency_ms == pytest.approx(6.5)


def test_kernel_rule_ignores_a_smaller_kernel_the_user_dropped():
    space = prune(make_profile(TYPICAL), PruneConfig(drop=("sep_conv_3x3",)))
    assert "sep_conv_5x5" in space.ops
    assert rules(space)["sep_conv_3x3"] == "user"


def _with_spread(profile: Profile, op: str, half_width: float) -> Profile:
    """``op``'s entries with p10/p90 at median -/+ half_width."""
    from dataclasses import replace as dc_replace

    entries = [dc_replace(e, latency=TimingStats(e.latency.median, e.latency.median - half_width,
                                                 e.latency.median + half_width, e.latency.median, 0.0, 1))
               if e.key.op == op else e for e in profile.entries]
    return dc_replace(profile, entries=entries)


def test_pool_rule_replaces_max_pool_only_beyond_the_measured_spread():
    faster = make_profile(with_(avg_pool_3x3=(0.3, 0, 0, 100)))  # 0.1 ms faster, no spread
    space = prune(faster)
    assert "avg_pool_3x3" in space.ops and rules(space)["max_pool_3x3"] == "pool"
    assert any("avg_pool_3x3 replaces max_pool_3x3: faster by 0.1000 ms, more than the measured spread margin "
               "0.0000 ms" in n for n in space.notes)
    # the same gap inside the noise: the paper's max_pool_3x3 stays, and the margin is printed
    noisy = prune(_with_spread(faster, "avg_pool_3x3", 0.12))
    assert "max_pool_3x3" in noisy.ops and rules(noisy)["avg_pool_3x3"] == "pool"
    d = next(d for d in noisy.dropped if d.op == "avg_pool_3x3")
    assert d.numbers["margin_ms"] == pytest.approx(0.12)
    assert any("max_pool_3x3 kept over avg_pool_3x3" in n and "margin 0.1200 ms" in n for n in noisy.notes)
    # max_pool_3x3 already the faster: it stays whatever the spread
    assert rules(prune(make_profile(TYPICAL)))["avg_pool_3x3"] == "pool"


def test_pool_rule_needs_two_pools():
    rows = {k: v for k, v in TYPICAL.items() if k != "avg_pool_3x3"}
    space = prune(make_profile(rows))
    assert "max_pool_3x3" in space.ops and "pool" not in rules(space).values()
    # skip_connect is parameter-free too, but has no rival in its family
    assert "skip_connect" in space.ops


def test_pool_rule_respects_keep():
    space = prune(make_profile(TYPICAL), PruneConfig(keep=("avg_pool_3x3",)))
    assert {"avg_pool_3x3", "max_pool_3x3"} <= set(space.ops)


def test_latency_ratio_rule():
    # parametric ops' latencies 2.0, 3.0, 1.2, 1.6 -> median 1.8
    p = make_profile(TYPICAL)
    space = prune(p, PruneConfig(max_latency_ratio=1.05))
    # sep_conv_5x5 goes by the kernel rule first; sep_conv_3x3 (2.0 > 1.89) by the ratio
    assert rules(space)["sep_conv_3x3"] == "latency"
    d = next(d for d in space.dropped if d.op == "sep_conv_3x3")
    assert d.numbers["median_parametric_ms"] == pytest.approx(1.8)
    assert d.numbers["max_latency_ratio"] == 1.05
    assert "1.11 x the median" in d.reason
    assert "latency" not in rules(prune(p, PruneConfig(max_latency_ratio=1.2))).values()
    assert "sep_conv_3x3" in prune(p, PruneConfig(keep=("sep_conv_3x3",), max_latency_ratio=1.05)).ops


def test_latency_ratio_needs_parametric_ops():
    rows = {k: TYPICAL[k] for k in ("max_pool_3x3", "skip_connect", "avg_pool_3x3")}
    with pytest.raises(EdgenasError, match="no.*parametric|has none"):
        prune(make_profile(rows), PruneConfig(max_latency_ratio=2))
    with pytest.raises(EdgenasError, match="--max-latency-ratio 0 is out of range: it must be > 0"):
        prune(make_profile(TYPICAL), PruneConfig(max_latency_ratio=0))


def test_override_errors():
    p = make_profile({k: TYPICAL[k] for k in ("skip_connect", "sep_conv_3x3", "max_pool_3x3")})
    with pytest.raises(EdgenasError, match="unknown operator 'conv9'") as e:
        prune(p, PruneConfig(drop=("conv9",)))
    assert "sep_conv_5x5" in e.value.hint
    with pytest.raises(EdgenasError, match="'dil_conv_3x3' is not in the profile"):
        prune(p, PruneConfig(keep=("dil_conv_3x3",)))
    with pytest.raises(EdgenasError, match="both kept and dropped"):
        prune(p, PruneConfig(keep=("skip_connect",), drop=("skip_connect",)))
    with pytest.raises(EdgenasError, match="leaves 1 operator"):
        prune(p, PruneConfig(drop=("skip_connect", "sep_conv_3x3")))


# --- SearchSpace ------------------------------------------------------------------------------

def test_builtin_spaces():
    assert SearchSpace.default().ops == DARTS_OPS
    assert SearchSpace.el_darts().ops == EL_DARTS_OPS
    # kept in registry (DARTS) order whatever order they were given in
    assert SearchSpace(("dil_conv_3x3", "none", "skip_connect")).ops == ("none", "skip_connect", "dil_conv_3x3")


@pytest.mark.parametrize("ops, message", [
    (("skip_connect",), "at least 2"), (("skip_connect", "conv9"), "unknown operator 'conv9'"),
    (("skip_connect", "skip_connect"), "twice"),
])
def test_space_validation(ops, message):
    with pytest.raises(EdgenasError, match=message):
        SearchSpace(ops)


def test_space_round_trip(tmp_path):
    space = prune(make_profile(TYPICAL), source="profiles/x.json")
    path = space.save(tmp_path / "space.json")
    doc = json.loads(path.read_text())
    assert (doc["format"], doc["version"], doc["profile"]) == ("edgenas.space", 1, "profiles/x.json")
    assert SearchSpace.load(path) == space


@pytest.mark.parametrize("doc, message", [
    ({"format": "edgenas.space", "version": 1, "ops": ["skip_connect", "conv9"]}, "unknown operator"),
    ({"format": "edgenas.space", "version": 1, "ops": ["skip_connect"]}, "at least 2"),
    ({"format": "edgenas.space", "version": 1, "ops": "skip_connect"}, "field 'ops' should be list"),
    ({"format": "edgenas.space", "version": 1, "ops": [1, 2]}, "list of operator names"),
    ({"format": "edgenas.space", "version": 1}, "field 'ops' is missing"),
    ({"format": "edgenas.profile", "version": 1, "ops": []}, "field 'format'"),
    ({"format": "edgenas.space", "version": 9, "ops": []}, "field 'version'"),
    ({"format": "edgenas.space", "version": 1, "ops": list(EL_DARTS_OPS),
      "dropped": [{"op": "none", "rule": "zero", "reason": "", "numbers": {"a": "x"}}]}, "numbers"),
])
def test_space_load_rejects(tmp_path, doc, message):
    path = tmp_path / "s.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(EdgenasError, match=message) as e:
        SearchSpace.load(path)
    assert str(path) in str(e.value)
