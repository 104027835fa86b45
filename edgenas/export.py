"""Export a trained evaluation network to ONNX, prove it computes what PyTorch computes, time it.

The last link of the chain: ``model.onnx`` (opset 17 by default) holding the evaluation network in
inference form (eval mode: no auxiliary head, no drop path, BatchNorm with running statistics),
self-described by its metadata properties (genotype, network config, classes, normalisation,
edgenas version), and a report saying

* the ONNX checker's verdict (``full_check``: strict shape inference included);
* parity: max |logit difference| PyTorch vs ONNX Runtime (CPU execution provider, the reference
  runtime) on random inputs and on every test image, against an absolute fp32 threshold of
  ``1e-4``; top-1 agreement over the whole test set and the top-1 accuracy each runtime reaches;
* inference time per execution provider that can really run here (TensorRT, CUDA, CPU) and for
  PyTorch eager, at batch 1 and the chosen batch: warm-up, then median / p10 / p90 / n;
* MACs and parameters (:mod:`edgenas.costs` convention), the mobile-setting verdict
  (< 600 M MACs at 224x224, DARTS Sec. 3.2) for ImageNet-mobile networks, and with a profile the
  latency its look-up table predicts (:func:`edgenas.costs.predict_latency`) beside the measured one;
* with ``quantize="int8"``: ONNX Runtime static quantisation in QDQ form (int8 weights per output
  channel, int8 activations, MinMax ranges from N training images; the affine scheme of Jacob et
  al., CVPR 2018), written beside the fp32 file with its own accuracy, time and size.

Exporter: the TorchScript-based ``torch.onnx.export(..., dynamo=False)`` by default. torch 2.14
marks it deprecated (the torch.export-based exporter is the default since 2.9) but it is still
there, exports these networks at exactly the opset asked for (the dynamo exporter implements
opset >= 18 only and its down-conversion to 17 fails on ``ReduceMean``), gives the plain
``GlobalAveragePool``/``Flatten`` head, and takes ~0.2 s where the dynamo exporter takes ~5 s. Its
only untidiness, ``Identity`` nodes for de-duplicated initialisers, is removed here. The dynamo
exporter is available as ``exporter="dynamo"`` (opset >= 18).

Nothing half-written: every file is produced in a staging folder inside the output folder and moved
into place only after every check passed; a failed check leaves the output folder as it was.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from edgenas import __version__
from edgenas.device import TimingStats, benchmark, device_slug, environment
from edgenas.errors import EdgenasError, VerificationError
from edgenas.files import write_json, write_text_atomic
from edgenas.genotypes import Genotype
from edgenas.nets import AUX_PREFIX, NetConfig, build_network

if TYPE_CHECKING:  # heavy or optional imports stay lazy at run time
    import onnxruntime as ort

    from edgenas.data import DataBundle, ImageTensors
    from edgenas.profiling import Profile

FORMAT = "edgenas.export"
VERSION = 1
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
FP32_ATOL = 1e-4
MOBILE_MACS = 600_000_000
MOBILE_HW = (224, 224)
INT8_DROP_WARN = 1.0  # accuracy points
MODEL_FILE = "model.onnx"
INT8_FILE = "model_int8.onnx"
REPORT_JSON = "report.json"
REPORT_MD = "report.md"
EXPORTERS = ("torchscript", "dynamo")
# Preference order for "auto": the fastest runtime first; CPU is always there.
PROVIDERS: dict[str, str] = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
QUANTIZE_MODES = ("int8",)
# ORT's QDQ quantiser handles these; BatchNormalization is left out on purpose: the one BN no
# folding removes (after FactorizedReduce's concat) has a rank-1 scale its per-channel path rejects.
QDQ_OPS = ["Conv", "Gemm", "MatMul", "Add", "Concat", "MaxPool", "AveragePool", "GlobalAveragePool", "Relu"]


# --- settings and the network to export --------------------------------------------------------

@dataclass(frozen=True)
class ExportSettings:
    """How to export, check and time (the CLI's options, validated once)."""

    opset: int = 17
    batch: int = 1
    dynamic_batch: bool = False
    providers: str = "auto"          # auto | comma list of tensorrt, cuda, cpu
    exporter: str = "torchscript"    # torchscript | dynamo
    quantize: str | None = None      # None | int8
    calibration: int = 256           # training images for int8 calibration
    atol: float = FP32_ATOL
    random_batches: int = 8
    eval_batch: int = 100            # PyTorch batch over the test set
    test_subset: int | None = None   # class-balanced test images (None: the whole test set)
    threads: int = 0                 # ORT intra-op threads; 0 = physical cores
    runs: int = 50                   # timed runs per configuration
    max_warmup: int = 30             # warm-up runs at most (fewer once times settle)
    max_seconds: float = 10.0        # cap on the timed phase per configuration

    def __post_init__(self) -> None:
        if self.exporter not in EXPORTERS:
            raise EdgenasError(f"unknown exporter {self.exporter!r}", f"use one of {', '.join(EXPORTERS)}")
        lo, hi = opset_range(self.exporter)
        if not lo <= self.opset <= hi:
            raise EdgenasError(f"opset {self.opset} is outside what the {self.exporter} exporter writes "
                               f"({lo}..{hi})", f"use --opset between {lo} and {hi}")
        checks = [("batch", self.batch >= 1), ("calibration", self.calibration >= 1), ("runs", self.runs >= 1),
                  ("max warmup", self.max_warmup >= 1), ("threads", self.threads >= 0), ("atol", self.atol > 0),
                  ("eval batch", self.eval_batch >= 1), ("random batches", self.random_batches >= 1)]
        for name, ok in checks:
            if not ok:
                raise EdgenasError(f"{name} {getattr(self, name.replace(' ', '_'))} is out of range",
                                   f"give a positive --{name.replace(' ', '-')}")
        if self.test_subset is not None and self.test_subset < 1:
            raise EdgenasError(f"test subset {self.test_subset} is not positive", "give --test-subset 1 or more")
        if self.quantize is not None and self.quantize not in QUANTIZE_MODES:
            raise EdgenasError(f"unknown quantisation {self.quantize!r}", f"use --quantize {'|'.join(QUANTIZE_MODES)}")
        parse_providers(self.providers)

    @property
    def provider_keys(self) -> tuple[str, ...] | None:
        """The providers asked for by name, or ``None`` for ``auto``."""
        return parse_providers(self.providers)


def opset_range(exporter: str) -> tuple[int, int]:
    """Opsets the chosen exporter writes (and ONNX Runtime runs)."""
    from torch.onnx import _constants

    if exporter == "dynamo":
        return 18, getattr(_constants, "ONNX_MAX_OPSET", 23)
    return 11, getattr(_constants, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", 20)


def parse_providers(text: str) -> tuple[str, ...] | None:
    """``auto`` -> None; ``cuda,cpu`` -> ('cuda', 'cpu'), in the order given."""
    keys = [k.strip().lower() for k in text.split(",") if k.strip()]
    if not keys or keys == ["auto"]:
        return None
    unknown = [k for k in keys if k not in PROVIDERS]
    if unknown:
        raise EdgenasError(f"unknown execution provider {unknown[0]!r}",
                           f"use auto or a comma list of {', '.join(PROVIDERS)}")
    return tuple(dict.fromkeys(keys))


@dataclass
class TrainedNet:
    """A network ready to export, with everything the ONNX file must say about itself."""

    model: nn.Module
    genotype: Genotype
    cfg: NetConfig
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    data: str | None = None                  # the data spec it was trained on
    source: dict[str, Any] = field(default_factory=dict)  # checkpoint path, epoch, run config bits
    data_channels: int | None = None        # channels the data was converted to in training (None: its own)
    seed: int = 0

    @property
    def name(self) -> str:
        return str(self.source.get("name") or "model")


def load_trained(path: str | Path, *, map_location: torch.device | str = "cpu") -> TrainedNet:
    """The network of a train run folder (``best.pt``, else ``last.pt``) or of one checkpoint file."""
    from edgenas.runs import RunDir, load_checkpoint

    path = Path(path)
    if not path.exists():
        raise EdgenasError(f"{path} does not exist",
                           "pass a train run folder (edgenas train --out) or its best.pt/last.pt")
    if path.is_dir():
        run = RunDir(path)
        ckpt_path = run.best if run.best.exists() else run.last
        if not ckpt_path.exists():
            raise EdgenasError(f"{path} holds no checkpoint (best.pt or last.pt)",
                               "pass a train run folder (edgenas train --out) or a .pt file")
        name = path.name
    else:
        ckpt_path = path
        name = path.parent.name if path.suffix == ".pt" and path.stem in ("best", "last") else path.stem
    doc = load_checkpoint(ckpt_path, what="checkpoint", map_location=map_location)
    if doc.get("kind") != "train":
        raise EdgenasError(f"checkpoint {ckpt_path} is a {doc.get('kind', 'unknown')!r} checkpoint, not a train run's",
                           "export the checkpoint of an edgenas train run (train the derived genotype first)")
    config = doc.get("config")
    if not isinstance(config, dict):
        raise EdgenasError(f"checkpoint {ckpt_path} has no run config", "re-train with this edgenas version")
    for key in ("genotype", "net"):
        if not isinstance(config.get(key), dict):
            raise EdgenasError(f"checkpoint {ckpt_path} has no {'genotype' if key == 'genotype' else 'network config'}"
                               f" (config field {key!r})", "export a checkpoint written by edgenas train")
    state = doc.get("state", {}).get("model") if isinstance(doc.get("state"), dict) else None
    if not isinstance(state, dict):
        raise EdgenasError(f"checkpoint {ckpt_path} holds no model weights (state.model)",
                           "export a checkpoint written by edgenas train")
    genotype = Genotype.from_dict(config["genotype"], source=str(ckpt_path))
    try:
        cfg = NetConfig(**config["net"])
    except TypeError as e:
        raise EdgenasError(f"checkpoint {ckpt_path}: network config is malformed ({e})",
                           "export a checkpoint written by this edgenas version") from None
    model = build_network(genotype, cfg)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[0][:160]
        raise EdgenasError(f"checkpoint {ckpt_path}: weights do not fit its genotype/config ({first})",
                           "the checkpoint is damaged or was edited; export another one") from None
    model.eval()
    dataset = config.get("dataset") if isinstance(config.get("dataset"), dict) else {}
    mean, std = dataset.get("mean"), dataset.get("std")
    if not (isinstance(mean, list) and isinstance(std, list) and len(mean) == len(std) == cfg.in_channels):
        raise EdgenasError(f"checkpoint {ckpt_path} lacks the normalisation statistics (config.dataset.mean/std)",
                           "export a checkpoint written by edgenas train")
    names = dataset.get("class_names")
    classes = tuple(str(c) for c in names) if isinstance(names, list) else ()
    return TrainedNet(
        model=model, genotype=genotype, cfg=cfg, classes=classes,
        mean=tuple(float(m) for m in mean), std=tuple(float(s) for s in std),
        data=config.get("data"),
        source={"name": name, "checkpoint": str(ckpt_path), "epoch": doc.get("epoch"),
                "genotype_name": config.get("genotype_name") or None,
                "test_top1_at_training": _last_test_top1(doc.get("history"))},
        data_channels=config.get("in_channels"), seed=int(config.get("seed") or 0),
    )


def _last_test_top1(history: Any) -> float | None:
    """The test top-1 the training loop measured at the checkpoint's epoch (on its test subset)."""
    last = history[-1] if isinstance(history, list) and history and isinstance(history[-1], dict) else {}
    return last.get("test_top1")


# --- ONNX export -------------------------------------------------------------------------------

def metadata(net: TrainedNet, extra: dict[str, Any] | None = None) -> dict[str, str]:
    """The model's ``metadata_props``: enough to use the file without edgenas."""
    C, H, W = net.cfg.input_shape
    props = {
        "edgenas.version": __version__,
        "edgenas.genotype": json.dumps(net.genotype.to_dict()),
        "edgenas.net_config": json.dumps(net.cfg.to_dict()),
        "edgenas.setting": net.cfg.setting,
        "edgenas.classes": json.dumps(list(net.classes)),
        "edgenas.mean": json.dumps(list(net.mean)),
        "edgenas.std": json.dumps(list(net.std)),
        "edgenas.input": (f"float32 NCHW (N, {C}, {H}, {W}); pixels scaled to [0, 1], then "
                          "(x - mean) / std per channel"),
        "edgenas.output": f"logits (N, {net.cfg.num_classes}), unnormalised (apply softmax for probabilities)",
    }
    if net.data:
        props["edgenas.data"] = str(net.data)
    if net.source.get("checkpoint"):
        props["edgenas.source"] = json.dumps({k: net.source.get(k) for k in ("checkpoint", "epoch")})
    props.update({f"edgenas.{k}": v if isinstance(v, str) else json.dumps(v) for k, v in (extra or {}).items()})
    return props


def read_metadata(path: str | Path) -> dict[str, str]:
    """The ``edgenas.*`` metadata of an exported file."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}


def _remove_identities(graph: Any) -> int:
    """Drop ``Identity`` nodes (the TorchScript exporter aliases de-duplicated initialisers with
    them) by pointing their consumers at their input; graph outputs keep theirs. Returns how many."""
    outputs = {o.name for o in graph.output}
    rename: dict[str, str] = {}
    keep = []
    for node in graph.node:
        if node.op_type == "Identity" and node.output[0] not in outputs:
            src = node.input[0]
            rename[node.output[0]] = rename.get(src, src)
        else:
            keep.append(node)
    if not rename:
        return 0
    for node in keep:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
    del graph.node[:]
    graph.node.extend(keep)
    return len(rename)


@dataclass(frozen=True)
class OnnxInfo:
    """What the export produced."""

    opset: int
    exporter: str
    input_name: str
    output_name: str
    input_shape: tuple[int | str, ...]
    output_shape: tuple[int | str, ...]
    dynamic_batch: bool
    nodes: dict[str, int]
    checker: str

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_shape"], d["output_shape"] = list(self.input_shape), list(self.output_shape)
        return d


def _dims(value_info: Any) -> tuple[int | str, ...]:
    return tuple(d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim)


def export_onnx(net: TrainedNet, path: str | Path, settings: ExportSettings,
                extra_metadata: dict[str, Any] | None = None) -> OnnxInfo:
    """Write ``net`` (eval mode, fp32, on the CPU) as ONNX at ``path`` and run the full checker.

    A checker failure is a :class:`VerificationError`: the file we produced is not valid ONNX.
    """
    import onnx

    path = Path(path)
    model = copy.deepcopy(net.model).to(device="cpu", dtype=torch.float32).eval()
    x = torch.zeros((settings.batch, *net.cfg.input_shape))
    kw: dict[str, Any] = {"input_names": [INPUT_NAME], "output_names": [OUTPUT_NAME],
                          "opset_version": settings.opset, "do_constant_folding": True}
    if settings.exporter == "dynamo":
        kw.update(dynamo=True, verbose=False, external_data=False, optimize=True)
        if settings.dynamic_batch:
            kw["dynamic_shapes"] = ({0: torch.export.Dim("batch")},)
    else:
        kw.update(dynamo=False, training=torch.onnx.TrainingMode.EVAL)
        if settings.dynamic_batch:
            kw["dynamic_axes"] = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}
    try:
        # The deprecation notice and the tracer's notes (a shape test in FactorizedReduce that is
        # constant for a fixed input size) say nothing the user can act on.
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (x,), str(path), **kw)
    except Exception as e:
        msg = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise EdgenasError(f"torch.onnx ({settings.exporter} exporter) could not export the network at opset "
                           f"{settings.opset}: {msg}", "try the default --opset 17 or the other --exporter") from None
    proto = onnx.load(str(path))
    got = max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=settings.opset)
    if got != settings.opset:
        raise EdgenasError(f"the {settings.exporter} exporter wrote opset {got}, not the {settings.opset} asked for",
                           f"use --opset {got}, or --exporter torchscript for opsets below 18")
    _remove_identities(proto.graph)
    proto.producer_name, proto.producer_version = "edgenas", __version__
    proto.doc_string = f"edgenas evaluation network ({net.cfg.setting}, C={net.cfg.C}, {net.cfg.layers} cells)"
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, metadata(net, extra_metadata))
    onnx.save(proto, str(path))
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as e:  # onnx.checker.ValidationError, shape-inference errors
        raise VerificationError(f"the exported model fails onnx.checker (full check): {str(e).splitlines()[0][:200]}",
                                "report this: the network uses something the exporter writes wrongly") from None
    counts: dict[str, int] = {}
    for node in proto.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return OnnxInfo(opset=settings.opset, exporter=settings.exporter, input_name=INPUT_NAME, output_name=OUTPUT_NAME,
                    input_shape=_dims(proto.graph.input[0]), output_shape=_dims(proto.graph.output[0]),
                    dynamic_batch=settings.dynamic_batch, nodes=dict(sorted(counts.items())),
                    checker="passed (onnx.checker full_check)")


# --- ONNX Runtime sessions and providers --------------------------------------------------------

def physical_cores() -> int:
    """Physical CPU cores available to this process (ORT's and torch's default thread count)."""
    try:
        seen: set[tuple[str, str]] = set()
        phys = core = ""
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                key, value = key.strip(), value.strip()
                if key == "physical id":
                    phys = value
                elif key == "core id":
                    core = value
                elif not key and core:
                    seen.add((phys, core))
                    phys = core = ""
        if core:
            seen.add((phys, core))
        cores = len(seen)
    except OSError:
        cores = 0
    allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cores or allowed, allowed))


@contextlib.contextmanager
def _captured_output() -> Iterator[Callable[[], str]]:
    """Capture what ORT writes while it tries a provider: native logs on file descriptors 1 and 2,
    and Python ``print``s to ``sys.stdout``, which would otherwise corrupt ``--json`` output."""
    import io
    import sys

    py = io.StringIO()
    with tempfile.TemporaryFile(mode="w+b") as buf:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        saved = []
        try:
            for fd in (1, 2):
                saved.append((fd, os.dup(fd)))
                os.dup2(buf.fileno(), fd)
        except OSError:  # no real descriptors (an embedding host): capture the Python side only
            for fd, old in saved:
                os.dup2(old, fd)
                os.close(old)
            saved = []
        text = ""
        try:
            with contextlib.redirect_stdout(py), contextlib.redirect_stderr(py):
                yield lambda: text  # read after the block: the closure sees the final text
        finally:
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    stream.flush()
            for fd, old in saved:
                os.dup2(old, fd)
                os.close(old)
            buf.seek(0)
            text = buf.read().decode("utf-8", "replace") + py.getvalue()


def _failure_reason(log: str) -> str:
    """The most telling line of ORT's complaint about a provider."""
    clean = re.sub(r"\x1b\[[0-9;]*m", "", log)
    for pattern in (r"with error: (.+)", r"(Please install TensorRT[^\n]*?)(?: when using|\n|$)",
                    r"(Failed to create \w+\. [^\n]*?)(?: Please|\n|$)", r"EP Error (.+)"):
        m = re.search(pattern, clean)
        if m:
            return " ".join(m.group(1).split())[:240]
    return ""


@dataclass(frozen=True)
class ProviderStatus:
    """Whether an execution provider can really run here, and the options it ran with."""

    key: str
    name: str
    usable: bool
    reason: str = ""
    options: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_DLLS_PRELOADED = False


def _preload_gpu_libraries() -> None:
    """Let ORT find the CUDA/cuDNN libraries pip installed for torch (once, quietly)."""
    global _DLLS_PRELOADED
    if _DLLS_PRELOADED:
        return
    _DLLS_PRELOADED = True
    import onnxruntime as ort

    if hasattr(ort, "preload_dlls"):
        with _captured_output(), contextlib.suppress(Exception):
            ort.preload_dlls()


def _provider_options(key: str, device: torch.device) -> dict[str, Any]:
    index = device.index if device.type == "cuda" and device.index is not None else 0
    if key == "cuda":
        return {"device_id": index}
    if key == "tensorrt":
        return {"device_id": index, "trt_fp16_enable": False}
    return {}


def session_options(threads: int, *, spinning: bool = True) -> ort.SessionOptions:
    """ORT's defaults made explicit. ``spinning=False`` stops idle intra-op threads from busy-waiting:
    used while ORT and PyTorch take turns (verification), where a spinning ORT thread would take a
    core from PyTorch; timing keeps ORT's default (spinning on), as a deployment would run it."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.intra_op_num_threads = threads or physical_cores()
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return so


def open_session(model: str | Path | bytes, key: str, *, threads: int = 0, spinning: bool = True,
                 device: torch.device = torch.device("cpu")) -> tuple[ort.InferenceSession | None, ProviderStatus]:
    """An ORT session on provider ``key``, or ``None`` with the reason it cannot run here.

    ``get_available_providers()`` only says a provider was compiled in (onnxruntime-gpu lists CUDA
    and TensorRT on a machine without a GPU); a provider counts as usable only if a session
    actually runs on it.
    """
    import onnxruntime as ort

    name = PROVIDERS[key]
    options = _provider_options(key, device)
    if name not in ort.get_available_providers():
        return None, ProviderStatus(key, name, False, f"not built into onnxruntime {ort.__version__} "
                                    "(install onnxruntime-gpu for CUDA/TensorRT)", options)
    if key != "cpu":
        _preload_gpu_libraries()
    chain: list[Any] = [(name, options)]
    if key == "tensorrt":  # nodes TensorRT cannot take run on CUDA, as ORT recommends
        chain.append(("CUDAExecutionProvider", _provider_options("cuda", device)))
    if key != "cpu":
        chain.append("CPUExecutionProvider")
    so = session_options(threads, spinning=spinning)
    source = model if isinstance(model, bytes) else str(model)
    session, error = None, ""
    with _captured_output() as log:
        try:
            session = ort.InferenceSession(source, so, providers=chain)
        except Exception as e:  # ORT raises plain RuntimeError/Fail subclasses
            error = str(e).splitlines()[0] if str(e) else type(e).__name__
    if session is not None and session.get_providers()[0] == name:
        return session, ProviderStatus(key, name, True, "", options)
    detail = _failure_reason(log()) or error or "onnxruntime fell back to the CPU"
    if key != "cpu" and not torch.cuda.is_available():
        detail = f"no CUDA GPU visible ({detail})"
    return None, ProviderStatus(key, name, False, detail, options)


def _probe_model() -> bytes:
    """A one-node model (Relu) to test providers before the real export's long work."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "probe",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    # IR version 8 (ONNX 1.10): old enough for any onnxruntime that reads opset 17
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()


def probe_providers(keys: Sequence[str] | None, device: torch.device = torch.device("cpu")) -> list[ProviderStatus]:
    """Status of every provider (``keys is None``: all, for ``auto``); a provider asked for by name
    that cannot run is an :class:`EdgenasError` naming the reason."""
    model = _probe_model()
    statuses = [open_session(model, k, threads=1, device=device)[1] for k in (keys or tuple(PROVIDERS))]
    if keys is not None:
        for s in statuses:
            if not s.usable:
                raise EdgenasError(f"execution provider {s.key} ({s.name}) cannot run here: {s.reason}",
                                   "use --providers auto (or cpu), or run on a machine where it works")
    return statuses


class OrtModel:
    """An ORT session with the model's batch contract: a fixed-batch model gets chunks of exactly
    its batch (the last one zero-padded, its padding dropped from the result)."""

    def __init__(self, session: ort.InferenceSession, status: ProviderStatus) -> None:
        self.session, self.status = session, status
        dim = session.get_inputs()[0].shape[0]
        self.fixed_batch: int | None = dim if isinstance(dim, int) else None

    def run(self, x: np.ndarray) -> np.ndarray:
        b = self.fixed_batch
        if b is None or len(x) == b:
            return self.session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]
        outs = []
        for start in range(0, len(x), b):
            chunk = x[start : start + b]
            n = len(chunk)
            if n < b:
                chunk = np.concatenate([chunk, np.zeros((b - n, *chunk.shape[1:]), chunk.dtype)])
            outs.append(self.session.run([OUTPUT_NAME], {INPUT_NAME: chunk})[0][:n])
        return np.concatenate(outs)

    def timed_call(self, x: np.ndarray) -> Callable[[], Any]:
        """A call for the timer: host arrays on the CPU; on a GPU provider the input and output
        stay on the device (IO binding), so the time is the network's, not the PCIe copies'."""
        if self.status.key == "cpu":
            return lambda: self.session.run([OUTPUT_NAME], {INPUT_NAME: x})
        import onnxruntime as ort

        index = int(self.status.options.get("device_id", 0))
        value = ort.OrtValue.ortvalue_from_numpy(x, "cuda", index)
        binding = self.session.io_binding()
        binding.bind_ortvalue_input(INPUT_NAME, value)
        binding.bind_output(OUTPUT_NAME, "cuda", index)
        return lambda: self.session.run_with_iobinding(binding)  # ORT synchronises the stream at the end


# --- verification --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Parity:
    """Max |logit difference| between PyTorch and ORT over ``n`` inputs."""

    inputs: str
    n: int
    max_abs_diff: float
    atol: float

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.atol

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}


@dataclass(frozen=True)
class AccuracyCheck:
    """Top-1 over the test set through both runtimes, and how often their predictions agree."""

    n: int
    torch_top1: float
    ort_top1: float
    agree: int

    @property
    def agreement(self) -> float:
        return 100.0 * self.agree / max(self.n, 1)

    @property
    def passed(self) -> bool:
        return self.agree == self.n and self.torch_top1 == self.ort_top1

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "top1_agreement": self.agreement, "passed": self.passed}


def _top1(logits: torch.Tensor, labels: torch.Tensor) -> float:
    from edgenas.runs import accuracy

    return accuracy(logits, labels, (1,))[0]


Logits = tuple[torch.Tensor | None, list[torch.Tensor], torch.Tensor]


def collect_logits(model: nn.Module | None, runners: Sequence[OrtModel], test: ImageTensors,
                   device: torch.device, eval_batch: int) -> Logits:
    """Logits of every test image from PyTorch (when ``model`` is given) and from each ORT runner,
    and the labels; one pass over the data feeds every runtime the same normalised batch."""
    from edgenas.data import make_loader

    torch_out: list[torch.Tensor] = []
    ort_out: list[list[torch.Tensor]] = [[] for _ in runners]
    labels: list[torch.Tensor] = []
    with torch.no_grad():
        for x, y in make_loader(test, eval_batch, shuffle=False, device=device):
            if model is not None:
                torch_out.append(model(x).float().cpu())
            xn = x.float().cpu().numpy()
            for out, r in zip(ort_out, runners):
                out.append(torch.from_numpy(r.run(xn)))
            labels.append(y.cpu())
    return (torch.cat(torch_out) if model is not None else None,
            [torch.cat(o) for o in ort_out], torch.cat(labels))


def check_parity(model: nn.Module, runner: OrtModel, net: TrainedNet, settings: ExportSettings,
                 device: torch.device, test: ImageTensors) -> tuple[list[Parity], AccuracyCheck]:
    """Random-input and test-set parity plus test accuracy through both runtimes."""
    gen = torch.Generator().manual_seed(0)
    sizes = [settings.batch] * settings.random_batches
    if settings.dynamic_batch:  # a second batch size exercises the dynamic axis
        sizes[-1] = settings.batch + 2
    worst, n = 0.0, 0
    with torch.no_grad():
        for b in sizes:
            x = torch.randn((b, *net.cfg.input_shape), generator=gen)
            want = model(x.to(device)).float().cpu()
            got = torch.from_numpy(runner.run(x.numpy()))
            worst = max(worst, (want - got).abs().max().item())
            n += b
    random_parity = Parity("random N(0,1) inputs", n, worst, settings.atol)
    t_logits, (o_logits,), labels = collect_logits(model, [runner], test, device, settings.eval_batch)
    assert t_logits is not None
    test_parity = Parity("test images", len(labels), (t_logits - o_logits).abs().max().item() if len(labels) else 0.0,
                         settings.atol)
    acc = AccuracyCheck(n=len(labels), torch_top1=_top1(t_logits, labels), ort_top1=_top1(o_logits, labels),
                       agree=int((t_logits.argmax(1) == o_logits.argmax(1)).sum()))
    return [random_parity, test_parity], acc


def raise_if_failed(parities: Sequence[Parity], acc: AccuracyCheck) -> None:
    for p in parities:
        if not p.passed:
            raise VerificationError(
                f"ONNX Runtime disagrees with PyTorch on {p.inputs}: max |logit difference| "
                f"{p.max_abs_diff:.3g} exceeds the fp32 threshold {p.atol:g}",
                "the exported model is not kept; report this with the checkpoint")
    if not acc.passed:
        raise VerificationError(
            f"ONNX Runtime and PyTorch predict different classes for {acc.n - acc.agree} of {acc.n} test images "
            f"(top-1 {acc.ort_top1:.2f}% vs {acc.torch_top1:.2f}%)",
            "the exported model is not kept; report this with the checkpoint")


# --- timing --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Timing:
    """One timed configuration: a runtime (and provider) at one batch size."""

    runtime: str                # onnxruntime | pytorch-eager
    model: str                  # fp32 | int8
    provider: str | None
    device: str
    batch: int
    stats: TimingStats
    threads: int
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        where = self.provider.removesuffix("ExecutionProvider") if self.provider else self.device
        return f"{self.runtime} {self.model} [{where}]"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["stats"] = self.stats.to_dict()
        d["per_image_ms"] = self.stats.median / self.batch
        return d


def time_ort(runner: OrtModel, model_kind: str, batch: int, shape: tuple[int, ...], settings: ExportSettings,
             threads: int) -> Timing:
    x = np.random.default_rng(0).standard_normal((batch, *shape), dtype=np.float32)
    # ORT calls block until the outputs are ready; perf_counter around them is the right clock.
    stats = benchmark(runner.timed_call(x), torch.device("cpu"), runs=settings.runs, max_seconds=settings.max_seconds,
                      min_warmup=min(3, settings.max_warmup), max_warmup=settings.max_warmup)
    opts = {"graph_optimization_level": "ORT_ENABLE_ALL", "execution_mode": "ORT_SEQUENTIAL",
            "intra_op_num_threads": threads, "inter_op_num_threads": 1, "provider_options": runner.status.options,
            "io_binding": runner.status.key != "cpu", "allow_spinning": True}
    return Timing("onnxruntime", model_kind, runner.status.name, runner.status.key, batch, stats,
                  threads if runner.status.key == "cpu" else 0, opts)


def time_torch(model: nn.Module, device: torch.device, batch: int, shape: tuple[int, ...],
               settings: ExportSettings) -> Timing:
    x = torch.randn((batch, *shape), generator=torch.Generator().manual_seed(0)).to(device)

    def call() -> None:
        with torch.no_grad():
            model(x)

    stats = benchmark(call, device, runs=settings.runs, max_seconds=settings.max_seconds,
                      min_warmup=min(3, settings.max_warmup), max_warmup=settings.max_warmup)
    return Timing("pytorch-eager", "fp32", None, str(device), batch, stats,
                  torch.get_num_threads() if device.type == "cpu" else 0,
                  {"no_grad": True, "memory_format": "contiguous (NCHW)", "dtype": "float32"})


# --- quantisation --------------------------------------------------------------------------------

def calibration_batches(images: np.ndarray, batch: int | None) -> list[np.ndarray]:
    """Chunks of the model's batch (a fixed-batch model cannot take a ragged last chunk: it is
    dropped rather than zero-padded, which would distort the activation ranges)."""
    size = batch or 32
    chunks = [images[i : i + size] for i in range(0, len(images), size)]
    return [c for c in chunks if batch is None or len(c) == batch]


def quantize_int8(fp32_path: Path, out_path: Path, calibration: np.ndarray, batch: int | None,
                  extra_metadata: dict[str, str], *, for_tensorrt: bool = False) -> dict[str, Any]:
    """Static QDQ quantisation of ``fp32_path`` calibrated on ``calibration`` (N, C, H, W).

    Weights are int8, symmetric, per output channel. Activations are asymmetric uint8 (ORT's fast
    x86 path, U8S8: 1.2 ms vs 3.2 ms for int8 activations on the dev VM's EPYC, DARTS_V2 C=16,
    8 cells, batch 1, one thread), or symmetric int8 when TensorRT will run the model (TensorRT
    takes only signed, zero-point-free QDQ).
    """
    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    chunks = calibration_batches(calibration, batch)
    if not chunks:
        raise EdgenasError(f"{len(calibration)} calibration images do not fill one batch of {batch}",
                           f"use --calibration {batch} or more")

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(chunks)

        def get_next(self) -> dict[str, np.ndarray] | None:
            x = next(self._it, None)
            return None if x is None else {INPUT_NAME: x}

    pre = out_path.with_name(out_path.stem + ".pre.onnx")
    with _captured_output():  # the quantiser logs through the root logger and prints
        quant_pre_process(str(fp32_path), str(pre))  # ORT's recommended shape inference + folding
        quantize_static(str(pre), str(out_path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QInt8 if for_tensorrt else QuantType.QUInt8,
                        weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                        op_types_to_quantize=QDQ_OPS,
                        extra_options={"ActivationSymmetric": for_tensorrt, "WeightSymmetric": True})
    pre.unlink(missing_ok=True)
    images = sum(len(c) for c in chunks)
    activations = "int8, per tensor, symmetric" if for_tensorrt else "uint8, per tensor, asymmetric"
    scheme = {"format": "QDQ", "weights": "int8, per output channel, symmetric", "activations": activations,
              "calibration": "MinMax", "calibration_images": images, "ops": QDQ_OPS}
    proto = onnx.load(str(out_path))
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, {**extra_metadata, "edgenas.quantization": json.dumps(scheme)})
    proto.producer_name = "edgenas"
    onnx.save(proto, str(out_path))
    try:
        onnx.checker.check_model(str(out_path), full_check=True)
    except Exception as e:
        raise VerificationError(f"the int8 model fails onnx.checker: {str(e).splitlines()[0][:200]}",
                                "export without --quantize, and report this") from None
    return scheme


# --- the report ----------------------------------------------------------------------------------

@dataclass
class ExportReport:
    """Everything an export measured; ``to_dict`` is report.json's payload."""

    name: str
    out: Path
    source: dict[str, Any]
    network: dict[str, Any]
    onnx: OnnxInfo
    files: dict[str, int]
    costs: dict[str, Any]
    parity: list[Parity]
    accuracy: AccuracyCheck
    providers: list[ProviderStatus]
    timings: list[Timing]
    timing_notes: list[str]
    prediction: dict[str, Any] | None
    int8: dict[str, Any] | None
    environment: dict[str, Any]
    settings: ExportSettings
    warnings: list[str] = field(default_factory=list)

    def speedups(self) -> list[dict[str, Any]]:
        """ORT time over PyTorch eager time at the same batch (below 1: ORT is faster)."""
        eager = {t.batch: t for t in self.timings if t.runtime == "pytorch-eager"}
        return [{"runtime": t.label, "batch": t.batch, "ratio_to_eager": t.stats.median / eager[t.batch].stats.median}
                for t in self.timings if t.runtime == "onnxruntime" and t.batch in eager]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "out": str(self.out),
            "edgenas": __version__,
            "source": self.source,
            "network": self.network,
            "onnx": self.onnx.to_dict(),
            "files": self.files,
            "costs": self.costs,
            "verification": {
                "reference": "onnxruntime CPUExecutionProvider vs PyTorch eager (fp32, eval mode)",
                "atol": self.settings.atol,
                "parity": [p.to_dict() for p in self.parity],
                "test": self.accuracy.to_dict(),
                "passed": all(p.passed for p in self.parity) and self.accuracy.passed,
            },
            "providers": [p.to_dict() for p in self.providers],
            "timing": [t.to_dict() for t in self.timings],
            "timing_notes": self.timing_notes,
            "speedup": self.speedups(),
            "prediction": self.prediction,
            "int8": self.int8,
            "settings": asdict(self.settings),
            "environment": self.environment,
            "warnings": self.warnings,
        }


def _count(n: int | None) -> str:
    return "-" if n is None else f"{n:,}"


def _ms(t: float | None) -> str:
    return "-" if t is None else f"{t:.3f}"


def render_markdown(report: dict[str, Any]) -> str:
    """report.md: the same facts as report.json, for a person."""
    net, v, costs, env = report["network"], report["verification"], report["costs"], report["environment"]
    lines = [f"# Export report: {report['name']}", "",
             f"edgenas {report['edgenas']}, {report['environment'].get('date', '')}, on "
             f"{env.get('device_name', '')} ({env.get('cpu_count')} logical CPUs)", "",
             "## Network", "",
             f"- genotype: {net.get('genotype_name') or 'see below'}; setting {net['config']['setting']}, "
             f"C={net['config']['C']}, {net['config']['layers']} cells, input "
             f"{net['config']['in_channels']}x{'x'.join(map(str, net['config']['input_hw']))}, "
             f"{net['config']['num_classes']} classes",
             f"- source: {report['source'].get('checkpoint', '-')} (epoch {report['source'].get('epoch', '-')})",
             f"- MACs {costs['macs']:,} (thop: {_count(costs['thop_macs'])}), "
             f"params {costs['params']:,} ({costs['convention']}; params exclude the auxiliary head)"]
    if costs.get("mobile"):
        m = costs["mobile"]
        lines.append(f"- mobile setting: {m['macs_224']:,} MACs at 224x224 -> "
                     f"{'within' if m['passes'] else 'OVER'} the 600 M budget")
    lines += ["", "## Files", "", "| file | bytes |", "|---|---:|"]
    lines += [f"| {k} | {b:,} |" for k, b in report["files"].items()]
    o = report["onnx"]
    lines += ["", f"opset {o['opset']} ({o['exporter']} exporter), input `{o['input_name']}` "
              f"{o['input_shape']}, output `{o['output_name']}` {o['output_shape']}; {o['checker']}.", "",
              "## Verification", "", f"Reference: {v['reference']}; fp32 threshold {v['atol']:g}.", "",
              "| check | n | max abs logit diff | passed |", "|---|---:|---:|---|"]
    lines += [f"| {p['inputs']} | {p['n']} | {p['max_abs_diff']:.3g} | {'yes' if p['passed'] else 'NO'} |"
              for p in v["parity"]]
    t = v["test"]
    lines += ["", f"Test set ({t['n']} images): top-1 PyTorch {t['torch_top1']:.2f}%, ONNX Runtime "
              f"{t['ort_top1']:.2f}%, top-1 agreement {t['top1_agreement']:.2f}%.", ""]
    if report["int8"]:
        q = report["int8"]
        lines += [f"INT8 ({q['scheme']['format']}, {q['scheme']['calibration_images']} calibration images): top-1 "
                  f"{q['top1']:.2f}% through ONNX Runtime ({-q['drop_points']:+.2f} points vs fp32), "
                  f"{q['bytes']:,} bytes ({q['size_ratio']:.2f}x fp32).", ""]
    load = report["environment"].get("load_average_before_timing")
    lines += ["## Inference time", "", "Warm-up until stable, then timed runs; ms per batch"
              + (f" (1-minute load average before timing: {load[0]:.2f})." if load else "."), "",
              "| runtime | batch | median | p10 | p90 | n | threads |", "|---|---:|---:|---:|---:|---:|---:|"]
    for tm in report["timing"]:
        s = tm["stats"]
        where = (tm["provider"] or tm["device"]).removesuffix("ExecutionProvider")
        lines.append(f"| {tm['runtime']} {tm['model']} [{where}] | {tm['batch']} | {_ms(s['median'])} | "
                     f"{_ms(s['p10'])} | {_ms(s['p90'])} | {s['n']} | {tm['threads'] or '-'} |")
    for sp in report["speedup"]:
        lines.append(f"\n{sp['runtime']} at batch {sp['batch']}: {sp['ratio_to_eager']:.3g}x PyTorch eager's time")
    lines += ["", "Execution providers:", ""]
    lines += [f"- {p['name']}: {'used' if p['usable'] else 'unavailable: ' + p['reason']}"
              for p in report["providers"]]
    lines += [f"- note: {n}" for n in report["timing_notes"]]
    if report["prediction"]:
        p = report["prediction"]
        lines += ["", "## Latency predicted by the profile", "",
                  f"Profile {p['profile']} ({p['device']}, batch {p['batch']}, {p['mode']}): predicted "
                  f"{_ms(p['predicted_ms'])} ms vs measured {_ms(p['measured_ms'])} ms ({p['measured_by']}); "
                  f"relative error {'-' if p['relative_error'] is None else format(p['relative_error'], '+.1%')}. "
                  f"{p['covers']}"]
        if p["missing"]:
            lines.append(f"Missing from the profile: {p['missing']} operator shape(s).")
    if report["warnings"]:
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in report["warnings"]]
    lines += ["", "## Genotype", "", "```json", json.dumps(net["genotype"]), "```", ""]
    return "\n".join(lines)


# --- the whole export ----------------------------------------------------------------------------

def _check_data(net: TrainedNet, bundle: DataBundle) -> None:
    """The dataset must fit the network: class count, channels, image size, then class names."""
    cfg, spec = net.cfg, str(bundle.spec)
    fix = "pass the dataset the network was trained on with --data"
    if bundle.num_classes != cfg.num_classes:
        raise EdgenasError(f"dataset {spec} has {bundle.num_classes} classes but the network was trained "
                           f"for {cfg.num_classes}", fix)
    if bundle.in_channels != cfg.in_channels:
        raise EdgenasError(f"dataset {spec} has {bundle.in_channels}-channel images but the network takes "
                           f"{cfg.in_channels} channels", fix)
    if tuple(bundle.image_hw) != tuple(cfg.input_hw):
        raise EdgenasError(f"dataset {spec} has {'x'.join(map(str, bundle.image_hw))} images but the network "
                           f"was trained on {'x'.join(map(str, cfg.input_hw))}", fix)
    if net.classes and tuple(net.classes) != tuple(bundle.classes):
        differ = next(i for i, (a, b) in enumerate(zip(net.classes, bundle.classes)) if a != b)
        raise EdgenasError(f"dataset {spec} has classes other than the network's: class {differ} is "
                           f"{bundle.classes[differ]!r} there, {net.classes[differ]!r} in training", fix)


def load_export_data(net: TrainedNet, data: str | None, settings: ExportSettings) -> DataBundle:
    """The test split (and calibration images) with the network's own normalisation."""
    from edgenas.data import ImageTensors, load_data

    spec = data or net.data
    if not spec:
        raise EdgenasError("no dataset to verify the export on", "pass --data SPEC (e.g. cifar10:DIR)")
    subset = settings.calibration if settings.quantize else 1
    # augment=False: calibration images are seen as at test time; channels converted only as in training
    bundle = load_data(spec, subset=max(subset, net.cfg.num_classes), test_subset=settings.test_subset,
                       augment=False, channels=net.data_channels, seed=net.seed)
    _check_data(net, bundle)
    if len(bundle.test) == 0:
        raise EdgenasError(f"dataset {spec} has no test images", "pass a dataset with a test split")
    # The network was trained on its checkpoint's statistics: use those, whatever this copy gives.
    bundle.test = ImageTensors(bundle.test.images, bundle.test.labels, net.mean, net.std)
    bundle.train = ImageTensors(bundle.train.images, bundle.train.labels, net.mean, net.std)
    return bundle


def _costs(net: TrainedNet) -> dict[str, Any]:
    from edgenas.costs import count_macs, measure_costs

    report = measure_costs(net.model, net.cfg.input_shape, exclude_params=(AUX_PREFIX,)).to_dict()
    report["mobile"] = None
    if net.cfg.imagenet:
        macs = report["macs"] if tuple(net.cfg.input_hw) == MOBILE_HW else count_macs(
            net.model, (net.cfg.in_channels, *MOBILE_HW))
        report["mobile"] = {"macs_224": macs, "limit": MOBILE_MACS, "passes": macs < MOBILE_MACS}
    return report


def _prediction(net: TrainedNet, profile: Profile, profile_path: str, timings: list[Timing],
                device: torch.device) -> tuple[dict[str, Any], list[str]]:
    from edgenas.costs import predict_latency

    pred = predict_latency(net.genotype, net.cfg, profile)
    eager = next((t for t in timings if t.runtime == "pytorch-eager" and t.batch == profile.batch), None)
    measured = eager.stats.median if eager else None
    notes = []
    if profile.device != device_slug(device):
        notes.append(f"profile {profile_path} was measured on {profile.device}, this export ran on "
                     f"{device_slug(device)}: the comparison is across devices")
    if profile.mode != "forward":
        notes.append(f"profile {profile_path} timed {profile.mode} passes; inference is a forward pass")
    rel = (pred.total_ms - measured) / measured if pred.total_ms is not None and measured else None
    return {"profile": profile_path, "device": profile.device, "batch": profile.batch, "mode": profile.mode,
            "dtype": profile.dtype, "predicted_ms": pred.total_ms, "found_ms": pred.found_ms,
            "measured_ms": measured, "measured_by": f"pytorch-eager on {device}, batch {profile.batch}",
            "relative_error": rel, "missing": len(pred.missing), "covers": pred.covers}, notes


def _staging(out: Path) -> Path:
    try:
        out.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=".export-", dir=out))
    except OSError as e:
        raise EdgenasError(f"cannot write the output folder {out}: {e.strerror or e}",
                           "choose a writable --out folder") from None


def _publish(staging: Path, out: Path, names: Sequence[str]) -> None:
    """Move the checked artefacts into ``out``; the reports go last, so a report always describes
    the models beside it, and a stale int8 model of an earlier export does not linger."""
    umask = os.umask(0)
    os.umask(umask)
    for stale in (REPORT_JSON, REPORT_MD, INT8_FILE):
        (out / stale).unlink(missing_ok=True)
    for name in names:
        os.chmod(staging / name, 0o666 & ~umask)  # temp files are created private; artefacts are not
        os.replace(staging / name, out / name)


def export_network(net: TrainedNet, bundle: DataBundle, out: str | Path, settings: ExportSettings, *,
                   device: torch.device = torch.device("cpu"), profile: Profile | None = None,
                   profile_path: str = "", log: Callable[[str], None] = lambda _msg: None) -> ExportReport:
    """Export, verify, time (and optionally quantise) ``net``; write the report into ``out``.

    Raises :class:`VerificationError` (nothing written to ``out``) when a check fails.
    """
    out = Path(out)
    statuses = probe_providers(settings.provider_keys, device)  # fail fast on an explicit provider
    staging = _staging(out)
    threads = settings.threads or physical_cores()
    warns: list[str] = []
    try:
        model = copy.deepcopy(net.model).to(device=device, dtype=torch.float32).eval()
        fp32 = staging / MODEL_FILE
        log(f"exporting to ONNX (opset {settings.opset}, {settings.exporter} exporter)")
        info = export_onnx(net, fp32, settings)
        reference = reference_session(fp32, threads)
        log(f"verifying on random inputs and {len(bundle.test)} test images")
        parity, acc = check_parity(model, reference, net, settings, device, bundle.test)
        raise_if_failed(parity, acc)
        del reference
        runners, final_status = timing_sessions(fp32, statuses, settings, device, threads)

        batches = sorted({1, settings.batch})
        load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
        notes = [f"onnxruntime CPU: intra_op_num_threads={threads} (physical cores: {physical_cores()}), "
                 f"inter_op_num_threads=1, sequential execution, graph optimisation ORT_ENABLE_ALL; "
                 f"PyTorch: {torch.get_num_threads()} intra-op threads"]
        timings: list[Timing] = []
        shape = net.cfg.input_shape

        def time_all(kind: str, rs: Sequence[OrtModel]) -> None:
            for r in rs:
                for b in batches:
                    if r.fixed_batch is not None and r.fixed_batch != b:
                        notes.append(f"{kind} model has a fixed batch of {r.fixed_batch}: batch {b} not timed "
                                     "(export with --dynamic-batch to time every batch size)")
                        continue
                    log(f"timing onnxruntime {kind} on {r.status.key} at batch {b}")
                    timings.append(time_ort(r, kind, b, shape, settings, threads))

        time_all("fp32", runners)
        for b in batches:
            log(f"timing PyTorch eager on {device} at batch {b}")
            timings.append(time_torch(model, device, b, shape, settings))

        prediction = None
        if profile is not None:
            if profile.batch not in batches:
                timings.append(time_torch(model, device, profile.batch, shape, settings))
            prediction, pnotes = _prediction(net, profile, profile_path, timings, device)
            warns += pnotes

        names = [MODEL_FILE]
        int8 = None
        if settings.quantize == "int8":
            log(f"quantising to int8 (static QDQ, {settings.calibration} calibration images)")
            int8 = _quantize(net, bundle, staging, statuses, settings, device, threads, acc, time_all)
            names.append(INT8_FILE)
            if int8["warning"]:
                warns.append(int8["warning"])
        files = {n: (staging / n).stat().st_size for n in names}
        if int8 is not None:
            int8["bytes"] = files[INT8_FILE]
            int8["size_ratio"] = files[INT8_FILE] / files[MODEL_FILE]
        report = ExportReport(
            name=net.name, out=out, source=net.source,
            network={"genotype": net.genotype.to_dict(), "genotype_name": net.source.get("genotype_name"),
                     "config": net.cfg.to_dict(), "classes": list(net.classes or ()), "mean": list(net.mean),
                     "std": list(net.std), "data": str(bundle.spec)},
            onnx=info, files=files, costs=_costs(net), parity=parity, accuracy=acc, providers=final_status,
            timings=timings, timing_notes=notes, prediction=prediction, int8=int8,
            environment={**environment(device), "load_average_before_timing": load_before},
            settings=settings, warnings=warns)
        doc = report.to_dict()
        write_json(staging / REPORT_JSON, FORMAT, VERSION, doc)
        write_text_atomic(staging / REPORT_MD, render_markdown(doc))
        _publish(staging, out, [*names, REPORT_JSON, REPORT_MD])
        return report
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def reference_session(path: Path, threads: int) -> OrtModel:
    """The CPU session results are checked with (ORT's reference provider, no spinning)."""
    session, status = open_session(path, "cpu", threads=threads, spinning=False)
    if session is None:
        raise VerificationError(f"onnxruntime cannot open {path.name} on the CPU: {status.reason}",
                                "check the onnxruntime installation")
    return OrtModel(session, status)


def timing_sessions(path: Path, statuses: Sequence[ProviderStatus], settings: ExportSettings,
                    device: torch.device, threads: int) -> tuple[list[OrtModel], list[ProviderStatus]]:
    """A session per usable provider on the real model (the probe used a one-node model, and a
    provider may still refuse this one: an error if it was asked for by name, a note otherwise)."""
    runners: list[OrtModel] = []
    final: list[ProviderStatus] = []
    for s in statuses:
        if not s.usable:
            final.append(s)
            continue
        session, status = open_session(path, s.key, threads=threads, device=device)
        final.append(status)
        if session is not None:
            runners.append(OrtModel(session, status))
        elif settings.provider_keys is not None:
            raise EdgenasError(f"execution provider {s.key} cannot run {path.name}: {status.reason}",
                               "use --providers auto or cpu")
    return runners, final


def int8_warning(fp32_top1: float, int8_top1: float) -> str:
    drop = fp32_top1 - int8_top1
    if drop <= INT8_DROP_WARN:
        return ""
    return (f"int8 top-1 {int8_top1:.2f}% is {drop:.2f} points below fp32 ({fp32_top1:.2f}%), more than "
            f"{INT8_DROP_WARN:g}: try more --calibration images, or ship the fp32 model")


def _quantize(net: TrainedNet, bundle: DataBundle, staging: Path, statuses: list[ProviderStatus],
              settings: ExportSettings, device: torch.device, threads: int, fp32_acc: AccuracyCheck,
              time_all: Callable[[str, Sequence[OrtModel]], None]) -> dict[str, Any]:
    """Quantise, then measure the int8 model's accuracy and time like the fp32 one's."""
    train = bundle.train
    n = min(settings.calibration, len(train))
    x, _ = train.batch(torch.arange(n), torch.device("cpu"))  # no generator: no augmentation
    fixed = None if settings.dynamic_batch else settings.batch
    tensorrt = any(s.key == "tensorrt" and s.usable for s in statuses)
    scheme = quantize_int8(staging / MODEL_FILE, staging / INT8_FILE, x.numpy(), fixed, metadata(net),
                           for_tensorrt=tensorrt)
    cpu_int8 = reference_session(staging / INT8_FILE, threads)
    _, (logits,), labels = collect_logits(None, [cpu_int8], bundle.test, device, settings.eval_batch)
    del cpu_int8
    top1 = _top1(logits, labels)
    drop = fp32_acc.ort_top1 - top1
    time_all("int8", timing_sessions(staging / INT8_FILE, statuses, settings, device, threads)[0])
    warning = int8_warning(fp32_acc.ort_top1, top1)
    return {"file": INT8_FILE, "scheme": scheme, "top1": top1, "fp32_top1": fp32_acc.ort_top1, "drop_points": drop,
            "n": len(labels), "warning": warning}


def console_tables(doc: dict[str, Any]) -> list[Any]:
    """The report as rich tables for the terminal (what report.md says, condensed)."""
    from rich.table import Table

    from edgenas.costs import format_count

    v, o, costs = doc["verification"], doc["onnx"], doc["costs"]
    summary = Table("export", "value", title=f"edgenas export: {doc['name']}", title_justify="left")
    summary.add_row("output", doc["out"])
    for name, size in doc["files"].items():
        summary.add_row(name, f"{size / 1e6:.3f} MB")
    summary.add_row("ONNX", f"opset {o['opset']} ({o['exporter']}), input {o['input_shape']}, {o['checker']}")
    summary.add_row("MACs / params", f"{format_count(costs['macs'])} / {format_count(costs['params'])}")
    if costs.get("mobile"):
        m = costs["mobile"]
        summary.add_row("mobile setting", f"{format_count(m['macs_224'])} MACs at 224x224: "
                        f"{'within' if m['passes'] else 'OVER'} 600 M")
    for p in v["parity"]:
        summary.add_row(f"parity, {p['inputs']}", f"max |diff| {p['max_abs_diff']:.2e} (<= {p['atol']:g}: "
                        f"{'ok' if p['passed'] else 'FAILED'}, n={p['n']})")
    t = v["test"]
    summary.add_row("test top-1", f"PyTorch {t['torch_top1']:.2f}%  ONNX Runtime {t['ort_top1']:.2f}%  "
                    f"agreement {t['top1_agreement']:.2f}% of {t['n']}")
    if doc["int8"]:
        q = doc["int8"]
        summary.add_row("int8 top-1", f"{q['top1']:.2f}% ({-q['drop_points']:+.2f} points vs fp32 ORT), "
                        f"{q['size_ratio']:.2f}x fp32 size")
    if doc["prediction"]:
        p = doc["prediction"]
        err = "-" if p["relative_error"] is None else f"{p['relative_error']:+.1%}"
        summary.add_row("profile prediction", f"{_ms(p['predicted_ms'])} ms vs measured {_ms(p['measured_ms'])} ms "
                        f"(batch {p['batch']}): error {err}")
    for p in doc["providers"]:
        if not p["usable"]:
            summary.add_row(f"{p['key']} provider", f"unavailable: {p['reason']}")
    timing = Table("runtime", "batch", "median ms", "p10", "p90", "n", "vs eager", title="inference time",
                   title_justify="left")
    ratio = {(s["runtime"], s["batch"]): s["ratio_to_eager"] for s in doc["speedup"]}
    for tm in doc["timing"]:
        where = (tm["provider"] or tm["device"]).removesuffix("ExecutionProvider")
        label = f"{tm['runtime']} {tm['model']} [{where}]"
        r = ratio.get((label, tm["batch"]))
        st = tm["stats"]
        timing.add_row(label, str(tm["batch"]), _ms(st["median"]), _ms(st["p10"]), _ms(st["p90"]), str(st["n"]),
                       "-" if r is None else f"{r:.3g}x")
    return [summary, timing]


def default_out(net: TrainedNet) -> Path:
    return Path("exports") / net.name


def run_export(source: str | Path, *, data: str | None, out: str | Path | None, settings: ExportSettings,
               device: torch.device, profile: str | Path | None = None,
               log: Callable[[str], None] = lambda _msg: None) -> ExportReport:
    """The ``edgenas export`` command: load the checkpoint, the data and the profile, then export."""
    from edgenas.profiling import Profile

    prof = Profile.load(profile) if profile is not None else None
    net = load_trained(source)
    bundle = load_export_data(net, data, settings)
    if not net.classes:
        net = replace(net, classes=tuple(bundle.classes))
    return export_network(net, bundle, Path(out) if out is not None else default_out(net), settings,
                          device=device, profile=prof, profile_path=str(profile or ""), log=log)
