"""The latency model: robust timing, runtimes, whole-network prediction, units and refusals."""

from __future__ import annotations

import json
import time

import pytest
import torch

from edgenas.device import TimingStats, device_slug
from edgenas.errors import EdgenasError
from edgenas.genotypes import GENOTYPES, Genotype
from edgenas.latency import (
    check_same_target,
    compare,
    latency_lookup,
    op_scales,
    predict_latency,
    profile_missing,
)
from edgenas.nets import cell_shapes, default_config, setting_config
from edgenas.profiling import (
    REFERENCE_GENOTYPE,
    NetKey,
    Profile,
    ProfileEntry,
    ProfileSettings,
    ShapeKey,
    contention,
    load_profile,
    make_runtime,
    profile_ops,
    setting_shapes,
    timed,
)

CPU = torch.device("cpu")
QUICK = ProfileSettings(runs=5, min_warmup=1, max_warmup=3, min_seconds=0.01, max_seconds=0.1, sample_ms=0.0)
TINY_CFG = default_config("cifar10", C=4, layers=3, input_hw=(8, 8))
GENO = Genotype(normal=(("sep_conv_3x3", 0), ("skip_connect", 1), ("max_pool_3x3", 0), ("sep_conv_3x3", 2),
                        ("skip_connect", 0), ("dil_conv_3x3", 1), ("sep_conv_3x3", 3), ("skip_connect", 4)),
                normal_concat=(2, 3, 4, 5),
                reduce=(("max_pool_3x3", 0), ("sep_conv_3x3", 1), ("skip_connect", 2), ("dil_conv_3x3", 0),
                        ("max_pool_3x3", 1), ("skip_connect", 3), ("sep_conv_3x3", 4), ("skip_connect", 2)),
                reduce_concat=(2, 3, 4, 5))
OPS = ["skip_connect", "max_pool_3x3", "sep_conv_3x3", "dil_conv_3x3"]


# --- robust timing ---------------------------------------------------------------------------------

class _Calls:
    """A fake call whose every ``every``-th call is ``slow_ms`` slower while ``slow_until`` calls last."""

    def __init__(self, slow_every: int, slow_until: int, base_ms: float = 0.2, slow_ms: float = 5.0) -> None:
        self.n, self.every, self.until, self.base, self.slow = 0, slow_every, slow_until, base_ms, slow_ms

    def __call__(self, n: int) -> float:
        total = 0.0
        for _ in range(n):
            self.n += 1
            total += self.base + (self.slow if self.n <= self.until and self.n % self.every == 0 else 0.0)
        return total


def test_quiet_calls_settle_in_one_attempt():
    m = timed(_Calls(slow_every=10**9, slow_until=0), QUICK)
    assert m.stable and m.attempts == 1 and m.stats.median == pytest.approx(0.2)


def test_an_injected_slow_call_is_measured_again():
    # every 3rd call stalls during the warm-up and the first attempt only: the spread of that
    # attempt is far beyond max_spread, the second attempt is quiet and is kept
    settings = ProfileSettings(runs=12, min_warmup=1, max_warmup=3, min_seconds=0.0, max_seconds=1.0,
                               sample_ms=0.0, max_spread=0.3, attempts=3)
    calls = _Calls(slow_every=3, slow_until=3 + 12)
    m = timed(calls, settings)
    assert m.stable and m.attempts == 2 and m.stats.median == pytest.approx(0.2) and m.stats.p90 == pytest.approx(0.2)


def test_a_call_that_never_settles_is_flagged_with_its_narrowest_attempt():
    settings = ProfileSettings(runs=12, min_warmup=1, max_warmup=3, min_seconds=0.0, max_seconds=1.0,
                               sample_ms=0.0, max_spread=0.3, attempts=3)
    m = timed(_Calls(slow_every=3, slow_until=10**9), settings)
    assert not m.stable and m.attempts == 3 and m.spread > 0.3


def test_each_attempt_lasts_the_minimum_duration():
    settings = ProfileSettings(runs=1, min_warmup=1, max_warmup=1, min_seconds=0.05, max_seconds=1.0, sample_ms=0.0)
    t0 = time.perf_counter()
    m = timed(lambda n: 0.01 * n, settings)  # a call that takes no time at all
    assert time.perf_counter() - t0 >= 0.05 and m.stats.n > 1


# --- shapes from a setting ----------------------------------------------------------------------------

def test_setting_shapes_cover_every_genotype_of_the_space():
    cfg = setting_config("cifar10", channels=16, layers=8)
    shapes = setting_shapes(cfg)
    # C=16, 8 cells: exactly the default search supernet's shapes (the search prunes on them too)
    assert [str(s) for s in shapes] == ["16x32x32:1", "32x32x32:2", "32x16x16:1", "64x16x16:2", "64x8x8:1"]
    mobile = setting_config("imagenet-mobile")
    assert [str(s) for s in setting_shapes(mobile)] == [
        "48x28x28:1", "96x28x28:2", "96x14x14:1", "192x14x14:2", "192x7x7:1"]
    for name in ("DARTS_V2", "PC_DARTS_cifar", "PC_DARTS_image"):
        for c in (cfg, mobile):
            assert {(s.C, s.H, s.W, s.stride) for s in cell_shapes(GENOTYPES[name], c)} <= \
                {(s.C, s.H, s.W, s.stride) for s in setting_shapes(c)}


# --- a real (tiny) onnxruntime profile: the parts add up ----------------------------------------------

@pytest.fixture(scope="module")
def ort_profile() -> Profile:
    return profile_ops(CPU, OPS, setting_shapes(TINY_CFG), batch=1, threads=1, networks=[TINY_CFG], settings=QUICK)


def test_ort_profile_names_its_target(ort_profile):
    p = ort_profile
    assert (p.runtime, p.provider, p.batch, p.dtype, p.threads) == ("ort", "cpu", 1, "fp32", 1)
    assert p.units() == "onnxruntime CPU provider, batch 1"
    assert p.load_before is not None and p.load_after is not None
    # the identity runs no kernel in the deployed graph: it costs exactly nothing
    assert all(e.latency.median == 0 for e in p.entries if e.key.op == "skip_connect" and e.key.stride == 1)
    assert all(e.latency.median > 0 for e in p.entries if e.key.op == "sep_conv_3x3")


def test_prediction_is_the_fixed_part_plus_every_operator_instance(ort_profile):
    pred = predict_latency(GENO, TINY_CFG, ort_profile)
    part = ort_profile.part(NetKey.of(TINY_CFG))
    shapes = cell_shapes(GENO, TINY_CFG)
    found, missing = latency_lookup(ort_profile, shapes)
    assert pred.complete and not missing and sum(n for _, n, _ in pred.looked_up) == len(shapes)
    # each operator's entries count as its calibration scale in this network says
    scales = op_scales(ort_profile, TINY_CFG)
    assert pred.total_ms == pytest.approx(part.ms + sum(found[s] * scales.get(s.op, 1.0) for s in shapes))
    assert {c.op for c in part.calibration} == set(OPS) - {"none"}
    assert pred.sentence() == f"predicted {pred.total_ms:.3g} ms, whole network, onnxruntime CPU provider, batch 1"
    # the reference network is predicted as exactly what was measured of it
    ref = predict_latency(REFERENCE_GENOTYPE, TINY_CFG, ort_profile)
    assert ref.total_ms == pytest.approx(part.network_ms)
    assert part.reference_ops_ms == pytest.approx(ref.found_ms)


def test_compare_measures_on_the_profiles_runtime(ort_profile):
    c = compare(GENO, TINY_CFG, ort_profile, CPU)
    assert c.measured_ms > 0 and c.error == pytest.approx((c.predicted_ms - c.measured_ms) / c.measured_ms)
    assert c.sentence().endswith("whole network, onnxruntime CPU provider, batch 1")


def test_a_setting_the_profile_does_not_cover_names_the_missing_parts(ort_profile):
    other = default_config("cifar10", C=6, layers=3, input_hw=(8, 8))
    pred = predict_latency(GENO, other, ort_profile)
    assert pred.total_ms is None and pred.missing and pred.missing_part == NetKey.of(other)
    assert "no fixed part for cifar10 C=6, 3 cells" in pred.sentence()
    grown = profile_missing(ort_profile, cell_shapes(GENO, other), CPU, networks=[other])
    assert predict_latency(GENO, other, grown).complete
    assert len(ort_profile.parts) == 1  # the original is untouched


def test_round_trip_keeps_every_new_field(ort_profile, tmp_path):
    path = ort_profile.save(tmp_path / "p.json")
    doc = json.loads(path.read_text())
    assert doc["version"] == 2 and doc["units"] == "onnxruntime CPU provider, batch 1"
    assert {"p10", "median", "p90"} <= set(doc["entries"][0]["latency_ms"]) and "stable" in doc["entries"][0]
    back = load_profile(path)
    assert back.entries == ort_profile.entries and back.parts == ort_profile.parts
    assert (back.runtime, back.provider, back.threads) == ("ort", "cpu", 1)


# --- refusals ------------------------------------------------------------------------------------------

def _fake(**over) -> Profile:
    entry = ProfileEntry(ShapeKey("skip_connect", 4, 8, 8, 1), TimingStats(0.1, 0.1, 0.1, 0.1, 0.0, 5), 0, "x", 0, 0)
    fields = dict(device="cpu-here", batch=1, dtype="fp32", mode="forward", environment={}, entries=[entry],
                  runtime="ort", provider="cpu", threads=2)
    fields.update(over)
    return Profile(**fields)


@pytest.mark.parametrize("target, needle", [
    (dict(runtime="eager", provider=None), "runtime onnxruntime, the measurement here is with runtime PyTorch eager"),
    (dict(provider="cuda"), "provider cpu, the measurement here is with provider cuda"),
    (dict(batch=8), "batch 1, the measurement here is with batch 8"),
    (dict(device="cuda-h100"), "device cpu-here"),
])
def test_a_measurement_elsewhere_is_refused(target, needle):
    args = dict(runtime="ort", provider="cpu", batch=1, device="cpu-here")
    args.update(target)
    with pytest.raises(EdgenasError, match=needle) as e:
        check_same_target(_fake(), **args)
    assert "edgenas profile" in e.value.hint
    check_same_target(_fake(), runtime="ort", provider="cpu", batch=1, device="cpu-here")  # same target: fine


def test_inspect_measure_of_an_eager_profile_runs_eager(tmp_path):
    prof = profile_ops(CPU, OPS, setting_shapes(TINY_CFG), batch=1, runtime="eager", networks=[TINY_CFG],
                       settings=QUICK)
    assert prof.units() == "PyTorch eager on cpu, batch 1" and prof.provider is None
    c = compare(GENO, TINY_CFG, prof, CPU)
    assert c.measured_ms > 0 and "PyTorch eager" in c.sentence()


def test_unavailable_provider_names_what_is_available():
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present here")
    for provider in ("cuda", "tensorrt"):
        with pytest.raises(EdgenasError) as e:
            make_runtime("ort", CPU, provider=provider)
        assert f"execution provider {provider}" in e.value.message and "available here: cpu" in e.value.hint


def test_runtime_option_combinations_are_checked():
    with pytest.raises(EdgenasError, match="unknown runtime"):
        make_runtime("tflite", CPU)
    with pytest.raises(EdgenasError, match="inference only"):
        make_runtime("ort", CPU, mode="train")
    with pytest.raises(EdgenasError, match="onnxruntime setting"):
        make_runtime("eager", CPU, provider="cpu")
    with pytest.raises(EdgenasError, match="fp32 or fp16"):
        make_runtime("ort", CPU, dtype="bf16")


def test_fp16_on_the_cpu_provider_runs_or_is_skipped_with_its_reason():
    p = profile_ops(CPU, ["skip_connect", "sep_conv_3x3"], setting_shapes(TINY_CFG)[:1], batch=1, dtype="fp16",
                    threads=1, settings=QUICK) if _fp16_runs() else None
    if p is None:
        with pytest.raises(EdgenasError, match="no operator could run"):
            profile_ops(CPU, ["sep_conv_3x3"], setting_shapes(TINY_CFG)[:1], batch=1, dtype="fp16", threads=1,
                        settings=QUICK)
    else:
        assert p.dtype == "fp16" and p.units() == "onnxruntime CPU provider, batch 1, fp16"


def _fp16_runs() -> bool:
    try:
        profile_ops(CPU, ["sep_conv_3x3"], setting_shapes(TINY_CFG)[:1], batch=1, dtype="fp16", threads=1,
                    settings=QUICK)
    except EdgenasError:
        return False
    return True


def test_version_1_profiles_are_read_as_eager(tmp_path):
    doc = _fake().to_dict()
    for key in ("runtime", "provider", "threads", "parts", "units", "load_average_before", "load_average_after"):
        doc.pop(key)
    for e in doc["entries"]:
        e.pop("stable"), e.pop("attempts")
    doc["environment"] = {"torch_threads": 2}
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"format": "edgenas.profile", "version": 1, **doc}))
    p = load_profile(path)
    assert (p.runtime, p.provider, p.threads, p.parts) == ("eager", None, 2, [])
    assert p.units() == "PyTorch eager on cpu, batch 1"


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.update(runtime="tflite"), "field 'runtime' is 'tflite'"),
    (lambda d: d.update(provider=None), "names no 'provider'"),
    (lambda d: d.update(provider="npu"), "field 'provider' is 'npu'"),
    (lambda d: d.update(threads=-1), "threads -1 is out of range"),
    (lambda d: d.update(batch=0), "batch 0 is out of range"),
    (lambda d: d["entries"][0].update(stable="yes"), "field 'stable' should be bool"),
    (lambda d: d["parts"].append({"setting": "mnist"}), "field 'setting' is 'mnist'"),
])
def test_load_checks_the_new_fields(tmp_path, mutate, message):
    doc = {"format": "edgenas.profile", "version": 2, **_fake().to_dict()}
    mutate(doc)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(EdgenasError, match=message):
        load_profile(path)


# --- GPU providers: real code paths, run where there is a GPU ---------------------------------------

@pytest.mark.needs_cuda
@pytest.mark.parametrize("provider", ["cuda", "tensorrt"])
def test_gpu_provider_profile_and_measure(provider):
    from edgenas.latency import target_device

    dev = torch.device("cuda", torch.cuda.current_device())
    try:
        p = profile_ops(dev, OPS, setting_shapes(TINY_CFG), batch=1, provider=provider, networks=[TINY_CFG],
                        settings=QUICK)
    except EdgenasError as e:  # e.g. TensorRT libraries absent: the refusal names what runs here
        assert "available here" in e.hint
        pytest.skip(str(e))
    assert p.provider == provider and p.device == device_slug(dev) and p.parts
    assert target_device(p, dev) == dev
    c = compare(GENO, TINY_CFG, p, dev)
    assert c.measured_ms > 0 and c.predicted_ms > 0


def _benchmark_module():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "latency_model.py"
    spec = importlib.util.spec_from_file_location("latency_model_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_helpers():
    import random

    bench = _benchmark_module()
    assert bench.kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert bench.kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert bench.kendall_tau([1, 2, 3], [1, 3, 2]) == pytest.approx(1 / 3)
    rng = random.Random(0)
    for _ in range(20):
        g = bench.random_genotype(rng)
        g.validate()
        assert "none" not in g.ops()
        for cell in (g.normal, g.reduce):  # two distinct inputs per node
            assert all(cell[2 * n][1] != cell[2 * n + 1][1] for n in range(4))


def test_the_benchmark_keeps_the_median_round_and_reads_the_probe_in_each_profiles_terms(monkeypatch):
    from types import SimpleNamespace

    from edgenas.profiling import FixedPart, Measured

    bench = _benchmark_module()

    def measured(v: float) -> Measured:
        return Measured(TimingStats(v, v, v, v, 0.0, 5), 1, True)

    other = Genotype(normal=GENO.reduce, normal_concat=(2, 3, 4, 5), reduce=GENO.normal, reduce_concat=(2, 3, 4, 5))
    values = {REFERENCE_GENOTYPE: iter([2.4] * 20), GENO: iter([100.0, 5.0, 1.0, 3.0]), other: iter([2.0, 4.0, 6.0])}
    monkeypatch.setattr(bench, "network_timer", lambda g, cfg, prof: lambda: measured(next(values[g])))
    monkeypatch.setattr(bench, "predict_latency", lambda g, cfg, prof: SimpleNamespace(total_ms=3.3))

    def profile(network_ms: float) -> Profile:
        t = TimingStats(1.0, 1.0, 1.0, 1.0, 0.0, 5)
        return _fake(parts=[FixedPart(NetKey.of(TINY_CFG), t, network_ms, 1.0, True, 1, ())])

    cache: dict = {}
    out = bench.evaluate(profile(2.0), TINY_CFG, {"a": GENO, "b": other}, cache, rounds=3)
    a, b = out["rows"]
    assert a["measured_rounds_ms"] == [5.0, 1.0, 3.0] and a["measured_ms"] == 3.0  # the first call untimed
    assert b["measured_ms"] == 4.0 and a["error"] == pytest.approx(0.1)
    assert a["machine_speed"] == pytest.approx(1.2) and out["steady"]["n"] == 0  # 20 % off: not steady
    assert out["round_to_round"]["kendall_tau"] == pytest.approx(-1.0)  # round 1: a > b, round 2: a < b
    # another variant of the runtime reuses the measurements, its probe read against its own profile
    again = bench.evaluate(profile(2.4), TINY_CFG, {"a": GENO, "b": other}, cache, rounds=3)
    assert again["rows"][0]["machine_speed"] == pytest.approx(1.0) and again["steady"]["n"] == 2


def test_an_ort_entry_of_zero_loads_and_an_eager_one_does_not(tmp_path):
    """An ONNX Runtime entry is an increment over a graph of copies, clamped at zero: a cheap
    operator may measure exactly 0 there. An eager operator never takes zero time."""
    zero = ProfileEntry(ShapeKey("max_pool_3x3", 4, 8, 8, 2), TimingStats(0.0, 0.0, 0.001, 0.0, 0.0, 5), 0, "x", 0,
                        0)
    path = tmp_path / "p.json"
    _fake(entries=[zero]).save(path)
    assert load_profile(path).entries[0].latency.median == 0.0
    _fake(entries=[zero], runtime="eager", provider=None).save(path)
    with pytest.raises(EdgenasError, match="latency_ms.median 0 is out of range"):
        load_profile(path)


@pytest.mark.parametrize("field", ["device", "dtype", "mode"])
def test_a_version_1_profile_without_a_field_every_version_has_is_refused(tmp_path, field):
    doc = _fake().to_dict()
    for key in ("runtime", "provider", "threads", "parts", "units", "load_average_before", "load_average_after",
                field):
        doc.pop(key)
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"format": "edgenas.profile", "version": 1, **doc}))
    with pytest.raises(EdgenasError, match=f"'{field}'"):
        load_profile(path)


def test_an_onnxruntime_failure_is_a_skipped_entry(monkeypatch):
    """onnxruntime raises its own exception classes (not RuntimeError): one failing entry is
    skipped with its reason, the others are measured."""
    from edgenas.profiling import measure_entries

    class OrtFailure(Exception):
        pass

    rt = make_runtime("ort", CPU, provider="cpu", settings=QUICK)
    real = rt.time_op

    def time_op(key, build, batch):
        if key.C == 8:
            raise OrtFailure("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Non-zero status code")
        return real(key, build, batch)

    monkeypatch.setattr(rt, "time_op", time_op)
    keys = [ShapeKey("max_pool_3x3", 4, 8, 8, 1), ShapeKey("max_pool_3x3", 8, 8, 8, 1)]
    entries, skipped = measure_entries(keys, rt, batch=1, mode="forward")
    assert [e.key for e in entries] == [keys[0]] and [s.key for s in skipped] == [keys[1]]
    assert "RUNTIME_EXCEPTION" in skipped[0].reason


# --- calibration: each operator's entries set against a network of that operator ------------------

def test_fit_part_recovers_each_operators_scale_and_keeps_the_reference_exact():
    from edgenas.profiling import MIN_CALIBRATION_SHARE, SCALE_RANGE, fit_part

    # a network of fixed part 3 ms where sep_conv_3x3 costs 1.2x its entries and max_pool_3x3 0.8x
    ref_ops = {"skip_connect": 0.0, "max_pool_3x3": 0.5}  # the reference network's stand-ins' entries
    reference_ms = 3.0 + 0.8 * 0.5
    timed = [("sep_conv_3x3", 3.0 + 1.2 * 10.0, 10.0), ("max_pool_3x3", 3.0 + 0.8 * 2.0, 2.0),
             ("skip_connect", 3.0 + 0.01, 0.01),       # a small share of its network: keeps 1
             ("dil_conv_3x3", 3.0 + 9.0 * 4.0, 4.0)]   # a ratio of 9 is a wrong timing: clipped
    fixed, calibration = fit_part(reference_ms, ref_ops, timed)
    scale = {c.op: c.scale for c in calibration}
    assert fixed == pytest.approx(3.0, abs=1e-3)
    assert scale["sep_conv_3x3"] == pytest.approx(1.2, abs=1e-3)
    assert scale["max_pool_3x3"] == pytest.approx(0.8, abs=1e-3)
    assert 0.01 / 3.01 < MIN_CALIBRATION_SHARE and scale["skip_connect"] == 1.0
    assert scale["dil_conv_3x3"] == SCALE_RANGE[1]
    # the reference network is predicted as measured: fixed part plus its stand-ins as scaled
    assert fixed + sum(scale.get(op, 1.0) * ms for op, ms in ref_ops.items()) == pytest.approx(reference_ms, abs=1e-3)


def test_a_profile_without_calibration_predicts_with_entries_as_timed(ort_profile, tmp_path):
    doc = ort_profile.to_dict()
    for part in doc["parts"]:
        part.pop("calibration")
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"format": "edgenas.profile", "version": 2, **doc}))
    old = load_profile(path)
    pred = predict_latency(GENO, TINY_CFG, old)
    shapes = cell_shapes(GENO, TINY_CFG)
    found, _ = latency_lookup(old, shapes)
    assert pred.scales == () and pred.total_ms == pytest.approx(old.parts[0].ms + sum(found[s] for s in shapes))


@pytest.mark.parametrize("scale, message", [(float("nan"), "scale"), (5.0, "scale 5"), (0.1, "scale 0.1")])
def test_a_calibration_scale_out_of_range_is_refused(ort_profile, tmp_path, scale, message):
    doc = {"format": "edgenas.profile", "version": 2, **ort_profile.to_dict()}
    doc["parts"][0]["calibration"][0]["scale"] = scale
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(EdgenasError, match=message) as e:
        load_profile(path)
    assert "calibration[0]" in str(e.value)


def test_contention_names_the_threads_to_use_and_stays_quiet_without_a_reading(monkeypatch):
    import edgenas.profiling as profiling

    monkeypatch.setattr(profiling, "usable_cpus", lambda: 4)
    assert contention(_fake(threads=2, others_busy_cores=None)) is None
    assert contention(_fake(threads=2, others_busy_cores=1.0)) is None  # 2 threads fit in the 3 cores left
    said = contention(_fake(threads=4, others_busy_cores=1.0))
    assert "1.0 of 4 CPUs" in said and "--threads 3" in said
    assert contention(_fake(provider="cuda", device="cuda-h100", threads=0, others_busy_cores=3.0)) is None
    assert contention(_fake(runtime="eager", provider=None, device="cuda-h100", threads=0,
                            others_busy_cores=3.0)) is None  # a GPU's times are the GPU's
    assert contention(_fake(threads=8, others_busy_cores=0.0)) is None  # no neighbour to blame


def test_a_profile_without_the_neighbours_reading_still_loads(tmp_path):
    path = tmp_path / "p.json"
    _fake(others_busy_cores=0.5).save(path)
    assert load_profile(path).others_busy_cores == 0.5
    doc = json.loads(path.read_text())
    doc.pop("others_busy_cores")
    path.write_text(json.dumps(doc))
    assert load_profile(path).others_busy_cores is None
    doc["others_busy_cores"] = -1
    path.write_text(json.dumps(doc))
    with pytest.raises(EdgenasError, match="others_busy_cores"):
        load_profile(path)


def test_a_calibration_at_its_bound_is_named_and_one_inside_is_not():
    from edgenas.device import TimingStats
    from edgenas.profiling import Calibration, FixedPart, clipped_scales

    cfg = setting_config("cifar10", channels=8, layers=5)
    t = TimingStats(1.0, 1.0, 1.0, 1.0, 0.0, 5)
    part = FixedPart(NetKey.of(cfg), t, 2.0, 1.0, True, 1,
                     (Calibration("sep_conv_3x3", 4.0, 1.0, 2.0), Calibration("dil_conv_3x3", 3.0, 1.5, 1.3),
                      Calibration("skip_connect", 2.0, 0.01, 1.0), Calibration("max_pool_3x3", 2.0, 0.5, 0.5)))
    named = clipped_scales(_fake(parts=[part]))
    assert len(named) == 2 and named[0].startswith("sep_conv_3x3 in cifar10 C=8") and "scale 2" in named[0]
    assert "max_pool_3x3" in named[1] and "scale 0.5" in named[1]
    assert clipped_scales(_fake()) == []


def test_an_operator_first_measured_by_profile_missing_is_calibrated_in_the_existing_part():
    base = profile_ops(CPU, ["max_pool_3x3", "skip_connect", "sep_conv_3x3"], setting_shapes(TINY_CFG), batch=1,
                       threads=1, networks=[TINY_CFG], settings=QUICK)
    assert {c.op for c in base.part(NetKey.of(TINY_CFG)).calibration} == {"max_pool_3x3", "skip_connect",
                                                                         "sep_conv_3x3"}
    g = Genotype(normal=(("dil_conv_3x3", 0), ("skip_connect", 1)) * 4, normal_concat=(2, 3, 4, 5),
                 reduce=(("max_pool_3x3", 0), ("max_pool_3x3", 1)) * 4, reduce_concat=(2, 3, 4, 5))
    more = profile_missing(base, cell_shapes(g, TINY_CFG), CPU, networks=[TINY_CFG])
    part = more.part(NetKey.of(TINY_CFG))
    before = base.part(NetKey.of(TINY_CFG))
    dil = [c for c in part.calibration if c.op == "dil_conv_3x3"]
    assert len(dil) == 1 and 0.5 <= dil[0].scale <= 2.0 and dil[0].network_ms > 0
    # the part itself and the operators calibrated before are untouched
    assert part.ms == before.ms and part.calibration[:3] == before.calibration
    pred = predict_latency(g, TINY_CFG, more)
    assert dict(pred.scales)["dil_conv_3x3"] == dil[0].scale and pred.complete
