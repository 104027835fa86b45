"""edgenas.export: ONNX export of a trained network, its checks, timing, int8 and report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from edgenas.errors import EdgenasError, VerificationError
from edgenas.export import (
    FORMAT,
    INPUT_NAME,
    OUTPUT_NAME,
    REPORT_MD,
    VERSION,
    ExportSettings,
    OrtModel,
    calibration_batches,
    load_export_data,
    load_trained,
    open_session,
    physical_cores,
    probe_providers,
    read_metadata,
    run_export,
)
from edgenas.export.onnx_export import _remove_identities
from edgenas.files import read_json
from edgenas.genotypes import get_genotype

FAST = dict(runs=3, max_seconds=0.5, random_batches=2, max_warmup=1)


@pytest.fixture(scope="module")
def exported(tiny_train_run: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """One full export (dynamic batch, batch 2, int8) of the tiny trained run."""
    out = tmp_path_factory.mktemp("export") / "tiny"
    settings = ExportSettings(batch=2, dynamic_batch=True, quantize="int8", calibration=20, **FAST)
    report = run_export(tiny_train_run, data=None, out=out, settings=settings, device=torch.device("cpu"))
    return out, report.to_dict()


def test_files_are_checked_onnx_with_names_and_metadata(exported: tuple[Path, dict], tiny_train_run: Path) -> None:
    out, doc = exported
    assert sorted(p.name for p in out.iterdir()) == ["model.onnx", "model_int8.onnx", "report.json", "report.md"]
    onnx.checker.check_model(str(out / "model.onnx"), full_check=True)
    model = onnx.load(str(out / "model.onnx"))
    assert [i.name for i in model.graph.input] == [INPUT_NAME]
    assert [o.name for o in model.graph.output] == [OUTPUT_NAME]
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) == 17
    assert not [n for n in model.graph.node if n.op_type == "Identity"]
    net = load_trained(tiny_train_run)
    meta = read_metadata(out / "model.onnx")
    assert json.loads(meta["edgenas.genotype"]) == get_genotype("DARTS_V2").to_dict()
    assert json.loads(meta["edgenas.net_config"]) == net.cfg.to_dict()
    assert json.loads(meta["edgenas.classes"]) == list(net.classes) and len(net.classes) == 10
    assert json.loads(meta["edgenas.mean"]) == list(net.mean)
    assert json.loads(meta["edgenas.std"]) == list(net.std)
    assert meta["edgenas.version"] and meta["edgenas.setting"] == "cifar10"
    # ORT sees the same metadata, as a deployment would read it
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert sess.get_modelmeta().custom_metadata_map["edgenas.genotype"] == meta["edgenas.genotype"]


def test_onnx_computes_what_the_checkpoint_computes(exported: tuple[Path, dict], tiny_train_run: Path) -> None:
    """Independent of the export's own verification: reload both and compare at a new batch size."""
    out, _ = exported
    net = load_trained(tiny_train_run)
    x = torch.randn(5, *net.cfg.input_shape, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = net.model(x).numpy()
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]
    assert got.shape == (5, 10)
    assert np.abs(got - want).max() <= 1e-4


def test_report_verification_matches_pytorch_evaluation(exported: tuple[Path, dict], tiny_train_run: Path) -> None:
    out, doc = exported
    saved = read_json(out / "report.json", FORMAT, VERSION, "export report")
    assert saved["verification"] == json.loads(json.dumps(doc["verification"]))
    v = doc["verification"]
    assert v["passed"] and v["atol"] == 1e-4
    assert [p["inputs"] for p in v["parity"]] == ["random N(0,1) inputs", "test images"]
    assert v["parity"][1]["n"] == 25 and all(p["max_abs_diff"] <= 1e-4 for p in v["parity"])
    assert v["parity"][0]["n"] == 2 + 4  # batch 2, then batch 4 for the dynamic axis
    t = v["test"]
    assert t["n"] == 25 and t["agree"] == 25 and t["ort_top1"] == t["torch_top1"]
    # the same accuracy through the project's one evaluation loop
    from edgenas.data.loaders import make_loader
    from edgenas.metrics import evaluate

    net = load_trained(tiny_train_run)
    bundle = load_export_data(net, None, ExportSettings())
    ref = evaluate(net.model, make_loader(bundle.test, 7, shuffle=False), torch.device("cpu"))
    assert t["torch_top1"] == pytest.approx(ref["top1"])
    hist = [json.loads(line) for line in (tiny_train_run / "history.jsonl").read_text().splitlines()]
    assert t["torch_top1"] == pytest.approx(hist[-1]["test_top1"])


def test_report_timing_costs_and_int8(exported: tuple[Path, dict]) -> None:
    out, doc = exported
    rows = {(t["runtime"], t["model"], t["batch"]) for t in doc["timing"]}
    kinds = (("onnxruntime", "fp32"), ("onnxruntime", "int8"), ("pytorch-eager", "fp32"))
    assert rows == {(rt, m, b) for rt, m in kinds for b in (1, 2)}
    for t in doc["timing"]:
        s = t["stats"]
        assert s["n"] >= 3 and 0 < s["p10"] <= s["median"] <= s["p90"]
    cpu = next(t for t in doc["timing"] if t["runtime"] == "onnxruntime")
    assert cpu["options"]["intra_op_num_threads"] == physical_cores() and cpu["options"]["allow_spinning"]
    assert {s["batch"] for s in doc["speedup"]} == {1, 2}
    providers = {p["key"]: p for p in doc["providers"]}
    assert providers["cpu"]["usable"]
    if not torch.cuda.is_available():
        assert not providers["cuda"]["usable"] and providers["cuda"]["reason"]
    assert doc["costs"]["macs"] > 0 and doc["costs"]["params"] > 0 and doc["costs"]["mobile"] is None
    q = doc["int8"]
    assert q["file"] == "model_int8.onnx" and q["scheme"]["calibration_images"] == 20
    assert q["bytes"] == (out / "model_int8.onnx").stat().st_size
    assert q["drop_points"] == pytest.approx(doc["verification"]["test"]["ort_top1"] - q["top1"])
    int8 = onnx.load(str(out / "model_int8.onnx"))
    assert any(n.op_type == "QuantizeLinear" for n in int8.graph.node)
    assert "edgenas.quantization" in read_metadata(out / "model_int8.onnx")
    md = (out / "report.md").read_text()
    assert "## Verification" in md and "model_int8.onnx" in md and "CPUExecutionProvider" in md


def test_fixed_batch_export_pads_the_last_chunk(tiny_train_run: Path, tmp_path: Path) -> None:
    """Batch 2, static: 25 test images go through in chunks of 2 (the last one padded), and the
    batch-1 ORT timing is skipped with a note instead of being faked."""
    settings = ExportSettings(batch=2, providers="cpu", **FAST)
    doc = run_export(tiny_train_run, data=None, out=tmp_path / "x", settings=settings,
                     device=torch.device("cpu")).to_dict()
    assert doc["onnx"]["input_shape"] == [2, 3, 16, 16]
    assert doc["verification"]["test"]["agree"] == 25
    assert {(t["runtime"], t["batch"]) for t in doc["timing"]} == {("onnxruntime", 2), ("pytorch-eager", 1),
                                                                   ("pytorch-eager", 2)}
    assert any("fixed batch of 2" in n for n in doc["timing_notes"])
    assert [p["key"] for p in doc["providers"]] == ["cpu"]
    assert doc["int8"] is None and not (tmp_path / "x" / "model_int8.onnx").exists()


def test_failed_verification_leaves_nothing(tiny_train_run: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "bad"
    real_run = OrtModel.run
    monkeypatch.setattr(OrtModel, "run", lambda self, x: real_run(self, x) + 1e-3)
    with pytest.raises(VerificationError, match="exceeds the fp32 threshold"):
        run_export(tiny_train_run, data=None, out=out, settings=ExportSettings(**FAST), device=torch.device("cpu"))
    assert list(out.iterdir()) == []  # no model, no report, no staging folder


def test_disagreeing_predictions_fail_even_within_tolerance(tiny_train_run: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A swapped prediction is caught by top-1 agreement when logits are checked loosely."""
    def swap(self: OrtModel, x: np.ndarray) -> np.ndarray:
        y = real_run(self, x)
        return y[:, ::-1].copy() if len(x) > 10 else y  # only the test batches

    real_run = OrtModel.run
    monkeypatch.setattr(OrtModel, "run", swap)
    with pytest.raises(VerificationError, match="predict different classes"):
        run_export(tiny_train_run, data=None, out=tmp_path / "o",
                   settings=ExportSettings(atol=1e6, eval_batch=25, **FAST), device=torch.device("cpu"))


def test_settings_refuse_bad_values() -> None:
    with pytest.raises(EdgenasError, match="opset 5"):
        ExportSettings(opset=5)
    with pytest.raises(EdgenasError, match="dynamo exporter"):
        ExportSettings(opset=17, exporter="dynamo")
    with pytest.raises(EdgenasError, match="unknown execution provider 'gpu'"):
        ExportSettings(providers="gpu")
    with pytest.raises(EdgenasError, match="quantisation"):
        ExportSettings(quantize="int4")
    assert ExportSettings(providers="CUDA, cpu").provider_keys == ("cuda", "cpu")
    assert ExportSettings().provider_keys is None


def test_providers_are_probed_by_running_a_session() -> None:
    statuses = {s.key: s for s in probe_providers(None)}
    assert list(statuses) == ["tensorrt", "cuda", "cpu"]
    assert statuses["cpu"].usable
    if not torch.cuda.is_available():
        # onnxruntime-gpu lists CUDA as available here; only a session shows it cannot run
        assert not statuses["cuda"].usable and statuses["cuda"].reason
        with pytest.raises(EdgenasError, match="cuda .*cannot run here"):
            probe_providers(["cuda"])


@pytest.mark.needs_cuda
def test_cuda_provider_runs_and_times_on_the_gpu(tiny_train_run: Path, tmp_path: Path) -> None:
    doc = run_export(tiny_train_run, data=None, out=tmp_path / "g", device=torch.device("cuda"),
                     settings=ExportSettings(providers="cuda,cpu", **FAST)).to_dict()
    assert any(t["provider"] == "CUDAExecutionProvider" for t in doc["timing"])


def test_identity_nodes_are_bypassed() -> None:
    from onnx import TensorProto, helper

    g = helper.make_graph(
        [helper.make_node("Identity", ["w"], ["w1"]), helper.make_node("Add", ["x", "w1"], ["y"]),
         helper.make_node("Identity", ["y"], ["z"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1])],
        [helper.make_tensor("w", TensorProto.FLOAT, [1], [2.0])])
    assert _remove_identities(g) == 1  # the one feeding the graph output stays
    assert [n.op_type for n in g.node] == ["Add", "Identity"] and list(g.node[0].input) == ["x", "w"]
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert sess.run(None, {"x": np.array([1.0], np.float32)})[0].tolist() == [3.0]


def test_calibration_batches_fit_the_model_batch() -> None:
    x = np.zeros((10, 1, 2, 2), np.float32)
    assert [len(c) for c in calibration_batches(x, 4)] == [4, 4]
    assert [len(c) for c in calibration_batches(x, None)] == [10]


def test_dynamo_exporter_at_opset_18(tiny_train_run: Path, tmp_path: Path) -> None:
    from edgenas.export import export_onnx

    net = load_trained(tiny_train_run)
    info = export_onnx(net, tmp_path / "m.onnx", ExportSettings(opset=18, exporter="dynamo", dynamic_batch=True))
    assert info.opset == 18 and info.input_shape[0] == "batch" and not list(tmp_path.glob("*.data"))
    session, status = open_session(tmp_path / "m.onnx", "cpu")
    assert session is not None and status.usable
    x = torch.randn(3, *net.cfg.input_shape)
    with torch.no_grad():
        want = net.model(x).numpy()
    assert np.abs(OrtModel(session, status).run(x.numpy()) - want).max() <= 1e-4


def test_mobile_verdict_for_imagenet_networks() -> None:
    from edgenas.export import TrainedNet
    from edgenas.export.run import _costs
    from edgenas.nets import MOBILE_MAC_LIMIT, build_network, default_config

    cfg = default_config("imagenet-mobile", C=4, layers=3, input_hw=(32, 32), num_classes=5)
    net = TrainedNet(build_network(get_genotype("DARTS_V2"), cfg).eval(), get_genotype("DARTS_V2"), cfg,
                     tuple("abcde"), (0.5,) * 3, (0.25,) * 3)
    costs = _costs(net)
    from edgenas.costs import count_macs

    assert costs["mobile"] == {"macs_224": count_macs(net.model, (3, 224, 224)), "limit": MOBILE_MAC_LIMIT,
                               "passes": True}
    assert costs["mobile"]["macs_224"] > costs["macs"]


def _hand_profile(tmp_path: Path, net, *, skip: int = 0, fixed: float | None = 0.2, **over) -> Path:
    """An onnxruntime CPU profile of this machine at batch 1 with the export's threads: every operator
    shape of ``net`` but the first ``skip`` at 0.01 ms, and its fixed part at ``fixed`` ms."""
    from edgenas.device import TimingStats, device_slug
    from edgenas.nets import cell_shapes
    from edgenas.profiling import FixedPart, NetKey, Profile, ProfileEntry, ProfileSettings, ShapeKey

    keys = list(dict.fromkeys(ShapeKey(s.op, s.C, s.H, s.W, s.stride) for s in cell_shapes(net.genotype, net.cfg)))
    entries = [ProfileEntry(k, TimingStats(0.01, 0.01, 0.01, 0.01, 0.0, 5), 0, "none", 0, 0) for k in keys[skip:]]
    parts = [] if fixed is None else [
        FixedPart(NetKey.of(net.cfg), TimingStats(fixed, fixed, fixed, fixed, 0.0, 5), fixed, 0.0)]
    quick = ProfileSettings(runs=3, min_warmup=1, max_warmup=2, max_seconds=0.1, min_seconds=0.02)
    fields = dict(device=device_slug(torch.device("cpu")), batch=1, dtype="fp32", mode="forward", environment={},
                  entries=entries, settings=quick, runtime="ort", provider="cpu", threads=physical_cores(),
                  parts=parts)
    fields.update(over)
    return Profile(**fields).save(tmp_path / "p.json")


def test_profile_prediction_beside_measurement(tiny_train_run: Path, tmp_path: Path) -> None:
    """Whole network (fixed part + every operator instance), compared with onnxruntime's CPU
    provider at batch 1, the profile's target; the units are named wherever it is printed."""
    from edgenas.nets import cell_shapes

    net = load_trained(tiny_train_run)
    n_ops = len(cell_shapes(net.genotype, net.cfg))
    path = _hand_profile(tmp_path, net)
    doc = run_export(tiny_train_run, data=None, out=tmp_path / "o", profile=path, device=torch.device("cpu"),
                     settings=ExportSettings(providers="cpu", **FAST)).to_dict()
    p = doc["prediction"]
    assert p["predicted_ms"] == pytest.approx(0.2 + 0.01 * n_ops) and p["missing"] == 0 and p["fixed_ms"] == 0.2
    ort_cpu = next(t for t in doc["timing"] if t["runtime"] == "onnxruntime" and t["batch"] == 1)
    assert p["measured_ms"] == ort_cpu["stats"]["median"] and p["units"] == "onnxruntime CPU provider, batch 1"
    assert p["relative_error"] == pytest.approx((p["predicted_ms"] - p["measured_ms"]) / p["measured_ms"])
    assert p["budget"] is None
    # report.md and the terminal say it in the same words (the run report too: test_pipeline)
    from rich.console import Console

    from edgenas.export.report import console_tables, describe_prediction

    sentence = describe_prediction(p)
    assert "whole network, onnxruntime CPU provider, batch 1" in sentence
    assert sentence in (tmp_path / "o" / REPORT_MD).read_text()
    con = Console(record=True, width=1000)
    con.print(*console_tables(doc))
    assert sentence in con.export_text()


@pytest.mark.parametrize("budget_ms, verdict", [(1e6, "meets"), (1e-6, "does NOT meet")])
def test_budget_line_says_whether_the_exported_model_meets_it(tiny_train_run: Path, tmp_path: Path,
                                                              budget_ms: float, verdict: str) -> None:
    net = load_trained(tiny_train_run)
    path = _hand_profile(tmp_path, net)
    doc = run_export(tiny_train_run, data=None, out=tmp_path / "o", profile=path, device=torch.device("cpu"),
                     settings=ExportSettings(providers="cpu", latency_budget_ms=budget_ms, **FAST)).to_dict()
    b = doc["prediction"]["budget"]
    assert b["met"] is (verdict == "meets") and b["measured_ms"] == doc["prediction"]["measured_ms"]
    line = f"Latency budget: the exported model {verdict} "
    text = (tmp_path / "o" / REPORT_MD).read_text()
    assert line in text and "as measured" in text and "onnxruntime CPU provider, batch 1" in text


@pytest.mark.parametrize("over, settings, needles", [
    (dict(device="cpu-elsewhere"), {}, ["device cpu-elsewhere"]),
    (dict(batch=4), {}, ["batch 4"]),
    (dict(provider="cuda"), dict(providers="cpu"), ["cuda", "--providers"]),
    (dict(threads=999), dict(threads=1), ["999 onnxruntime threads", "--threads 999"]),
    (dict(runtime="eager", provider=None, mode="train"), {}, ["train passes"]),
])
def test_a_profile_of_another_target_is_refused_before_any_work(tiny_train_run: Path, tmp_path: Path, over, settings,
                                                                 needles) -> None:
    net = load_trained(tiny_train_run)
    path = _hand_profile(tmp_path, net, **over)
    with pytest.raises(EdgenasError) as e:
        run_export(tiny_train_run, data=None, out=tmp_path / "o", profile=path, device=torch.device("cpu"),
                   settings=ExportSettings(**{"providers": "cpu", **FAST, **settings}))
    for n in needles:
        assert n in str(e.value)
    assert not (tmp_path / "o").exists()


def test_a_latency_budget_needs_a_profile(tiny_train_run: Path, tmp_path: Path) -> None:
    with pytest.raises(EdgenasError, match="no --profile"):
        run_export(tiny_train_run, data=None, out=tmp_path / "o", device=torch.device("cpu"),
                   settings=ExportSettings(providers="cpu", latency_budget_ms=5.0, **FAST))


def test_an_eager_profile_is_labelled_informative(tiny_train_run: Path, tmp_path: Path) -> None:
    net = load_trained(tiny_train_run)
    path = _hand_profile(tmp_path, net, runtime="eager", provider=None)
    doc = run_export(tiny_train_run, data=None, out=tmp_path / "o", profile=path, device=torch.device("cpu"),
                     settings=ExportSettings(providers="cpu", **FAST)).to_dict()
    p = doc["prediction"]
    eager = next(t for t in doc["timing"] if t["runtime"] == "pytorch-eager" and t["batch"] == 1)
    assert p["measured_ms"] == eager["stats"]["median"] and "PyTorch eager" in p["units"]
    assert any("not with the onnxruntime model this export ships" in w for w in doc["warnings"])


def test_a_profile_missing_shapes_gives_no_prediction_and_says_why(tiny_train_run: Path, tmp_path: Path) -> None:
    net = load_trained(tiny_train_run)
    path = _hand_profile(tmp_path, net, skip=1, fixed=None)
    run_export(tiny_train_run, data=None, out=tmp_path / "o", profile=path, device=torch.device("cpu"),
               settings=ExportSettings(providers="cpu", **FAST))
    text = (tmp_path / "o" / REPORT_MD).read_text()
    assert "No latency prediction from the profile" in text
    assert "it lacks 1 of this network's operator shape(s) and the fixed part of cifar10 C=4, 3 cells" in text
    assert "predicted -" not in text


def test_profile_missing_measures_the_shapes_the_profile_lacks(tiny_train_run: Path, tmp_path: Path) -> None:
    from edgenas.profiling import load_profile

    net = load_trained(tiny_train_run)
    path = _hand_profile(tmp_path, net, skip=1, fixed=None)
    n = len(load_profile(path).entries)
    doc = run_export(tiny_train_run, data=None, out=tmp_path / "o", profile=path, device=torch.device("cpu"),
                     settings=ExportSettings(providers="cpu", profile_missing=True, **FAST)).to_dict()
    p = doc["prediction"]
    # the shape and the fixed part were measured (the hand-made entries make the fixed part small)
    assert p["missing"] == 0 and p["missing_part"] is None and p["fixed_ms"] >= 0
    assert p["predicted_ms"] == pytest.approx(p["fixed_ms"] + p["found_ms"])
    assert len(load_profile(path).entries) == n  # the file given is left as it was


@pytest.mark.parametrize("for_tensorrt,zero_point_type",
                         [(False, onnx.TensorProto.UINT8), (True, onnx.TensorProto.INT8)])
def test_int8_activation_type_follows_the_target(exported: tuple[Path, dict], tmp_path: Path, for_tensorrt: bool,
                                                 zero_point_type: int) -> None:
    from edgenas.export import quantize_int8

    out, _ = exported
    calib = np.random.default_rng(0).standard_normal((4, 3, 16, 16), dtype=np.float32)
    scheme = quantize_int8(out / "model.onnx", tmp_path / "q.onnx", calib, None, {"edgenas.version": "x"},
                           for_tensorrt=for_tensorrt)
    model = onnx.load(str(tmp_path / "q.onnx"))
    inits = {i.name: i for i in model.graph.initializer}
    q_input = next(n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == INPUT_NAME)
    assert inits[q_input.input[2]].data_type == zero_point_type
    assert scheme["activations"].startswith("int8" if for_tensorrt else "uint8")
    assert not list(tmp_path.glob("*.pre.onnx"))


def test_int8_warning_only_beyond_one_point() -> None:
    from edgenas.export import int8_warning

    assert int8_warning(90.0, 89.0) == ""
    assert "1.50 points below fp32" in int8_warning(90.0, 88.5)


def test_a_run_folder_exports_its_last_epoch_not_the_test_selected_best(tiny_train_run: Path, tmp_path: Path) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_train_run, run)
    best = torch.load(run / "best.pt", weights_only=False)
    best["epoch"] = 99  # a best.pt that is not the last epoch
    torch.save(best, run / "best.pt")
    net = load_trained(run)
    assert net.source["checkpoint"].endswith("last.pt") and net.source["epoch"] != 99
    assert load_trained(run / "best.pt").source["epoch"] == 99  # named, it is what is exported
    (run / "last.pt").unlink()
    with pytest.raises(EdgenasError, match="has a best.pt but no last.pt") as e:
        load_trained(run)
    assert "best.pt" in e.value.hint and "--resume" in e.value.hint
    (run / "best.pt").unlink()
    with pytest.raises(EdgenasError, match="holds no checkpoint"):
        load_trained(run)


def test_an_export_without_threads_times_at_the_cpu_profiles(tiny_train_run: Path, tmp_path: Path) -> None:
    net = load_trained(tiny_train_run)
    path = _hand_profile(tmp_path, net, threads=1)
    said: list[str] = []
    doc = run_export(tiny_train_run, data=None, out=tmp_path / "o", profile=path, device=torch.device("cpu"),
                     settings=ExportSettings(providers="cpu", **FAST), log=said.append).to_dict()
    cpu = [t for t in doc["timing"] if t["runtime"] == "onnxruntime"]
    assert cpu and all(t["options"]["intra_op_num_threads"] == 1 for t in cpu)
    assert doc["prediction"]["threads"] == 1 and "the profile's 1 thread(s)" in " ".join(said)
