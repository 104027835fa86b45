"""Export precisions and the GPU sessions' checks, as far as they are decided without a GPU: the
provider options (TensorRT fp16, caches, shape profiles), the CPU-fallback probe, parity per session
with the CPU provider standing in, the fp16 model, and the PyTorch reference in full fp32."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from typer.testing import CliRunner

from edgenas.errors import EdgenasError, VerificationError
from edgenas.export import (
    FP16_FILE,
    MODEL_FILE,
    PARITY_INPUTS,
    ExportSettings,
    OrtModel,
    ShapeProfile,
    Tolerance,
    convert_fp16,
    cpu_fallback,
    open_session,
    provider_chain,
    provider_options,
    raise_if_sessions_failed,
    run_export,
    session_parity,
    tolerance_for,
    trt_cache_dir,
)
from edgenas.export.runtime import FALLBACK_KEY, export_provider_options, no_fallback_options

CPU = torch.device("cpu")
FAST = dict(runs=3, max_seconds=0.5, random_batches=2, max_warmup=1)
GPU = torch.device("cuda", 1)


def _tiny_model(path: Path) -> Path:
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((5, 3, 3, 3)).astype(np.float32), "W")
    g = helper.make_graph(
        [helper.make_node("Conv", ["input", "W"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("GlobalAveragePool", ["c"], ["p"]), helper.make_node("Flatten", ["p"], ["logits"])],
        "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 6, 6])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 5])], [w])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    return path


# --- settings ----------------------------------------------------------------------------------------

def test_precision_and_the_older_quantize_spelling_agree():
    assert ExportSettings(quantize="int8").precision == "int8"
    assert ExportSettings(precision="int8").quantize == "int8"
    assert ExportSettings(precision="fp16").quantize is None
    assert ExportSettings().precision == "fp32"
    with pytest.raises(EdgenasError, match="contradicts"):
        ExportSettings(quantize="int8", precision="fp16")
    with pytest.raises(EdgenasError, match="unknown precision 'fp64'"):
        ExportSettings(precision="fp64")


def test_cli_refuses_an_unknown_precision_with_one_line(tiny_train_run: Path, tmp_path: Path):
    from edgenas.cli import app

    r = CliRunner().invoke(app, ["export", str(tiny_train_run), "--out", str(tmp_path / "o"), "--precision", "fp8"])
    assert r.exit_code == 2
    assert "unknown precision 'fp8'" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "o").exists()
    r = CliRunner().invoke(app, ["export", str(tiny_train_run), "--out", str(tmp_path / "o"), "--precision", "fp16",
                                 "--quantize", "int8"])
    assert r.exit_code == 2 and "--quantize int8 contradicts --precision fp16" in r.output


def test_cli_fp16_export_prints_one_json_document(tiny_train_run: Path, tmp_path: Path):
    from edgenas.cli import app

    r = CliRunner().invoke(app, ["export", str(tiny_train_run), "--out", str(tmp_path / "o"), "--precision", "fp16",
                                 "--runs", "2", "--warmup", "1", "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["fp16"]["file"] == FP16_FILE and doc["settings"]["precision"] == "fp16"


# --- provider options -----------------------------------------------------------------------------------

def test_tensorrt_options_carry_fp16_caches_and_the_device(tmp_path: Path):
    profile = ShapeProfile(1, 8, 100, (3, 32, 32))
    opts = provider_options("tensorrt", GPU, fp16=True, cache_dir=tmp_path, profile=profile)
    assert opts["device_id"] == 1 and opts["trt_fp16_enable"] is True
    assert opts["trt_engine_cache_enable"] and opts["trt_engine_cache_path"] == str(tmp_path)
    assert opts["trt_timing_cache_enable"] and opts["trt_timing_cache_path"] == str(tmp_path)
    assert opts["trt_profile_min_shapes"] == "input:1x3x32x32"
    assert opts["trt_profile_opt_shapes"] == "input:8x3x32x32"
    assert opts["trt_profile_max_shapes"] == "input:100x3x32x32"
    assert provider_options("tensorrt", GPU)["trt_fp16_enable"] is False
    assert provider_options("cuda", GPU) == {"device_id": 1, "use_tf32": 0}
    assert provider_options("cpu", GPU) == {}


def test_export_options_cover_every_batch_the_export_runs(tmp_path: Path):
    dyn = ExportSettings(batch=4, dynamic_batch=True, eval_batch=8, trt_cache=str(tmp_path))
    opts = export_provider_options("tensorrt", dyn, GPU, (1, 16, 16), fp16=True)
    assert opts["trt_profile_max_shapes"] == f"input:{max(4 + 2, 8, PARITY_INPUTS)}x1x16x16"
    assert opts["trt_profile_opt_shapes"] == "input:4x1x16x16" and opts["trt_fp16_enable"]
    assert opts["trt_engine_cache_path"] == str(tmp_path)
    fixed = export_provider_options("tensorrt", ExportSettings(batch=4, trt_cache=str(tmp_path)), GPU, (1, 16, 16))
    assert not any(k.startswith("trt_profile") for k in fixed)  # static shapes need no profile


def test_trt_cache_folder_precedence(monkeypatch, tmp_path: Path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("EDGENAS_TRT_CACHE", raising=False)
    assert trt_cache_dir() == tmp_path / "xdg" / "edgenas" / "tensorrt"
    monkeypatch.setenv("EDGENAS_TRT_CACHE", str(tmp_path / "env"))
    assert trt_cache_dir() == tmp_path / "env"
    assert trt_cache_dir(str(tmp_path / "opt")) == tmp_path / "opt"


def test_provider_chains():
    trt = provider_chain("tensorrt", {"x": 1}, GPU)
    assert [c if isinstance(c, str) else c[0] for c in trt] == [
        "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert trt[1][1] == {"device_id": 1, "use_tf32": 0}
    assert [c[0] for c in provider_chain("cuda", {}, GPU, cpu=False)] == ["CUDAExecutionProvider"]
    assert provider_chain("cpu", {}, CPU) == [("CPUExecutionProvider", {})]


# --- CPU fallback ------------------------------------------------------------------------------------------

def test_fallback_probe_session_forbids_the_cpu():
    assert no_fallback_options(1).get_session_config_entry(FALLBACK_KEY) == "1"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the fallback ORT takes where CUDA cannot load")
def test_cpu_fallback_is_detected_where_cuda_cannot_run(tmp_path: Path):
    """Without a GPU the CUDA provider cannot load and ORT puts every node on its CPU provider:
    the same fallback a GPU session shows for nodes CUDA lacks kernels for."""
    model = _tiny_model(tmp_path / "m.onnx")
    reason = cpu_fallback(str(model), "cuda", provider_options("cuda", CPU), CPU, 1)
    assert "CPU" in reason


# --- parity per session, the CPU provider standing in -------------------------------------------------------

class _Shifted(OrtModel):
    """A session whose logits are off by ``shift`` (as a provider computing in lower precision would be)."""

    def __init__(self, base: OrtModel, shift: float, key: str) -> None:
        super().__init__(base.session, base.status)
        self.shift = shift
        from dataclasses import replace

        self.status = replace(base.status, key=key, name=f"{key} stand-in")

    def run(self, x: np.ndarray) -> np.ndarray:
        return super().run(x) + self.shift


def test_tolerances_per_precision_and_provider():
    assert tolerance_for("fp32", "cpu", 1e-4) == Tolerance(1e-4)
    assert tolerance_for("fp32", "cpu", 5e-4) == Tolerance(5e-4)  # --atol governs the exact check
    assert tolerance_for("fp16", "cuda").rtol > tolerance_for("fp32", "tensorrt").rtol > 0
    assert tolerance_for("fp32", "cuda").limit(100.0) == tolerance_for("fp32", "cuda").atol
    assert tolerance_for("int8", "cpu") is None
    assert Tolerance(1e-3, 2e-2).limit(10.0) == pytest.approx(0.201)


def test_session_parity_bounds_each_session_by_its_precision(tmp_path: Path):
    model = _tiny_model(tmp_path / "m.onnx")
    session, status = open_session(model, "cpu", threads=1)
    ref = OrtModel(session, status)
    x = np.random.default_rng(0).standard_normal((6, 3, 6, 6), dtype=np.float32)
    want = ref.run(x)
    exact = session_parity(ref, "fp32", x, want, 1e-4)
    assert exact.passed and exact.max_abs_diff == 0 and exact.agree == 6
    scale = float(np.abs(want).max())
    off = 0.5 * Tolerance(1e-3, 2e-2).limit(scale)  # inside the fp16 bound, far outside fp32's
    assert session_parity(_Shifted(ref, off, "cuda"), "fp16", x, want, 1e-4).passed
    bad = session_parity(_Shifted(ref, off, "cuda"), "fp32", x, want, 1e-4)
    assert not bad.passed and bad.limit == pytest.approx(1e-3)
    with pytest.raises(VerificationError, match="cuda stand-in running the fp32 model disagrees"):
        raise_if_sessions_failed([exact, bad])
    int8 = session_parity(_Shifted(ref, 10.0, "cpu"), "int8", x, want, 1e-4)
    assert int8.passed and int8.limit is None and int8.to_dict()["top1_agreement"] == 100.0


# --- the fp16 model --------------------------------------------------------------------------------------------

def test_fp16_model_has_fp16_weights_and_fp32_edges(tmp_path: Path):
    src = _tiny_model(tmp_path / "m.onnx")
    scheme = convert_fp16(src, tmp_path / "h.onnx", {"edgenas.test": "1"})
    half = onnx.load(str(tmp_path / "h.onnx"))
    assert all(t.data_type == onnx.TensorProto.FLOAT16 for t in half.graph.initializer)
    assert half.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert half.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert [n.op_type for n in half.graph.node].count("Cast") == 2
    props = {p.key: p.value for p in half.metadata_props}
    assert props["edgenas.test"] == "1" and json.loads(props["edgenas.precision"]) == scheme
    # the CPU provider runs it (through casts ORT inserts) or refuses it with one line
    session, status = open_session(tmp_path / "h.onnx", "cpu", threads=1)
    if session is None:
        assert status.reason and "\n" not in status.reason
    else:
        x = np.random.default_rng(0).standard_normal((2, 3, 6, 6), dtype=np.float32)
        ref = OrtModel(*open_session(src, "cpu", threads=1))
        got = OrtModel(session, status).run(x)
        assert 0 < np.abs(got - ref.run(x)).max() < 0.05  # weights were rounded, and only that


def test_fp16_export_end_to_end_on_the_cpu(tiny_train_run: Path, tmp_path: Path):
    out = tmp_path / "o"
    doc = run_export(tiny_train_run, data=None, out=out, device=CPU,
                     settings=ExportSettings(precision="fp16", dynamic_batch=True, **FAST)).to_dict()
    assert (out / FP16_FILE).exists() and (out / MODEL_FILE).exists()
    f = doc["fp16"]
    assert f["bytes"] == (out / FP16_FILE).stat().st_size
    acc = {a["provider"]: a for a in f["accuracy"]}
    assert acc["CPUExecutionProvider"]["n"] == doc["verification"]["test"]["n"]
    assert acc["CPUExecutionProvider"]["fp32_top1"] == doc["verification"]["test"]["ort_top1"]
    assert all(p["model"] == "fp16" and p["passed"] for p in f["parity"])
    assert any(t["model"] == "fp16" for t in doc["timing"])
    if not torch.cuda.is_available():  # the GPU paths say why they did not run
        assert any("CUDAExecutionProvider: not run" in n for n in f["notes"])
    assert [s["model"] for s in doc["verification"]["sessions"]] == ["fp32"]
    env = doc["environment"]
    assert env["verification"]["pytorch"] == "fp32 with TF32 off"
    assert "clocks_during_timing" in env
    assert "FP16 on CPU" in (out / "report.md").read_text()


def test_fp16_export_without_a_provider_for_it_fails_and_writes_nothing(tiny_train_run: Path, tmp_path: Path,
                                                                       monkeypatch):
    from edgenas.export import fp16

    monkeypatch.setattr(fp16, "timing_sessions", lambda *a, **k: ([], []))
    with pytest.raises(EdgenasError, match="no execution provider here can run the fp16 model"):
        run_export(tiny_train_run, data=None, out=tmp_path / "o", device=CPU,
                   settings=ExportSettings(precision="fp16", **FAST))
    assert [p.name for p in (tmp_path / "o").iterdir()] == []


# --- the PyTorch reference runs in full fp32 ------------------------------------------------------------------

def test_parity_reference_runs_with_tf32_off(tiny_train_run: Path, tmp_path: Path):
    from edgenas import device as dev
    from edgenas.export import check_parity, load_export_data, load_trained, reference_session
    from edgenas.export.onnx_export import export_onnx

    net = load_trained(tiny_train_run)
    settings = ExportSettings(**FAST)
    seen = []

    class Spy(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            seen.append(dev.tf32_state())
            return self.inner(x)

    before = dev.tf32_state()
    path = tmp_path / "m.onnx"
    export_onnx(net, path, settings)
    bundle = load_export_data(net, None, settings)
    check_parity(Spy(net.model.eval()), reference_session(path, 1), net, settings, CPU, bundle.test)
    assert seen and all(s == {"cudnn_conv": False, "cuda_matmul": False} for s in seen)
    assert dev.tf32_state() == before


def test_a_reduced_precision_profile_is_flagged_against_fp32_eager(tiny_train_run: Path):
    from edgenas.device import TimingStats
    from edgenas.export import load_trained
    from edgenas.export.run import _prediction
    from edgenas.nets import cell_shapes
    from edgenas.profiling import Profile, ProfileEntry, ShapeKey

    net = load_trained(tiny_train_run)
    keys = list(dict.fromkeys(ShapeKey(s.op, s.C, s.H, s.W, s.stride) for s in cell_shapes(net.genotype, net.cfg)))
    entries = [ProfileEntry(k, TimingStats(0.01, 0.01, 0.01, 0.01, 0.0, 5), 0, "none", 0, 0) for k in keys]
    from edgenas.export import Timing

    def eager(model: str, ms: float) -> Timing:
        return Timing("pytorch-eager", model, None, "cpu", 1, TimingStats(ms, ms, ms, ms, 0.0, 3), 1)

    fp32_only = [eager("fp32", 2.0)]
    for dtype, timings, flagged, measured in (("fp16", fp32_only, True, 2.0), ("fp32", fp32_only, False, 2.0),
                                              ("fp16", [*fp32_only, eager("fp16", 1.0)], False, 1.0)):
        prof = Profile("cpu-x", 1, dtype, "forward", {}, entries)
        pred, notes = _prediction(net, prof, "p.json", timings, None)
        assert any("across precisions" in n for n in notes) is flagged
        assert pred["measured_ms"] == measured  # a profile's own precision is preferred when timed


def test_eager_is_timed_in_the_asked_dtype_on_a_copy(tiny_train_run: Path):
    from edgenas.export import load_trained, time_torch

    net = load_trained(tiny_train_run)
    model = net.model.eval()
    t = time_torch(model, CPU, 1, net.cfg.input_shape, ExportSettings(**FAST), torch.bfloat16)
    assert t.model == "bf16" and t.options["dtype"] == "bfloat16" and t.stats.median > 0
    assert next(model.parameters()).dtype == torch.float32  # the exported model itself is untouched
