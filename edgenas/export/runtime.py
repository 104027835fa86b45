"""ONNX Runtime sessions: which execution providers really run here (and why not), and the model's
batch contract."""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from edgenas.errors import EdgenasError, VerificationError
from edgenas.export.settings import INPUT_NAME, OUTPUT_NAME, PARITY_INPUTS, PROVIDERS, ExportSettings
from edgenas.threads import usable_cpus

if TYPE_CHECKING:  # onnxruntime stays a lazy import at run time
    import onnxruntime as ort


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
    allowed = usable_cpus()
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
    # GPU sessions: whether ORT placed some nodes on the CPU (None: not checked, or a CPU session)
    cpu_fallback: bool | None = None
    fallback_detail: str = ""

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


def trt_cache_dir(setting: str = "") -> Path:
    """Where TensorRT engines and timing caches are kept between runs: building an engine takes
    seconds to minutes per model, precision and shape profile, so every probe and export would
    otherwise rebuild it. ``setting`` (the --trt-cache option) wins over EDGENAS_TRT_CACHE, then the
    user cache folder."""
    if setting:
        return Path(setting)
    if os.environ.get("EDGENAS_TRT_CACHE"):
        return Path(os.environ["EDGENAS_TRT_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "edgenas" / "tensorrt"


@dataclass(frozen=True)
class ShapeProfile:
    """TensorRT's optimisation profile for a dynamic batch axis: the batch sizes an engine accepts
    (min, max) and the one its kernels are tuned for (opt)."""

    min_batch: int
    opt_batch: int
    max_batch: int
    sample_shape: tuple[int, ...]

    def option(self, batch: int) -> str:
        return f"{INPUT_NAME}:" + "x".join(str(d) for d in (batch, *self.sample_shape))


def provider_options(key: str, device: torch.device, *, fp16: bool = False, cache_dir: Path | None = None,
                     profile: ShapeProfile | None = None) -> dict[str, Any]:
    """Options of an execution provider, as ONNX Runtime's documentation names them.

    CUDA: the device, and TF32 off so an fp32 model computes in fp32 (what it is checked against).
    TensorRT: the device, fp16 kernels allowed for ``fp16``, engine and timing caches in
    ``cache_dir``, and for a dynamic batch axis an explicit shape profile (without one TensorRT
    builds a new engine whenever a batch exceeds the shapes it saw).
    """
    index = device.index if device.type == "cuda" and device.index is not None else 0
    if key == "cuda":
        return {"device_id": index, "use_tf32": 0}
    if key != "tensorrt":
        return {}
    opts: dict[str, Any] = {"device_id": index, "trt_fp16_enable": fp16}
    if cache_dir is not None:
        opts.update({"trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache_dir),
                     "trt_timing_cache_enable": True, "trt_timing_cache_path": str(cache_dir)})
    if profile is not None:
        opts.update({"trt_profile_min_shapes": profile.option(profile.min_batch),
                     "trt_profile_opt_shapes": profile.option(profile.opt_batch),
                     "trt_profile_max_shapes": profile.option(profile.max_batch)})
    return opts


def provider_chain(key: str, options: dict[str, Any], device: torch.device, *,
                   cpu: bool = True) -> list[Any]:
    """The providers a session on ``key`` is given, in ORT's priority order: nodes TensorRT cannot
    take run on CUDA, as ORT recommends; the CPU last (``cpu=False``: left out, for the fallback probe)."""
    chain: list[Any] = [(PROVIDERS[key], options)]
    if key == "tensorrt":
        chain.append(("CUDAExecutionProvider", provider_options("cuda", device)))
    if key != "cpu" and cpu:
        chain.append("CPUExecutionProvider")
    return chain


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
                 device: torch.device = torch.device("cpu"), options: dict[str, Any] | None = None,
                 check_fallback: bool = False) -> tuple[ort.InferenceSession | None, ProviderStatus]:
    """An ORT session on provider ``key``, or ``None`` with the reason it cannot run here.

    ``get_available_providers()`` only says a provider was compiled in (onnxruntime-gpu lists CUDA
    and TensorRT on a machine without a GPU); a provider counts as usable only if a session
    actually runs on it. ``check_fallback``: also find out whether ORT put some of the model's
    nodes on the CPU (:func:`cpu_fallback`), which the first provider of ``get_providers()`` hides.
    """
    import onnxruntime as ort

    name = PROVIDERS[key]
    options = provider_options(key, device) if options is None else options
    if name not in ort.get_available_providers():
        return None, ProviderStatus(key, name, False, f"not built into onnxruntime {ort.__version__} "
                                    "(install onnxruntime-gpu for CUDA/TensorRT)", options)
    if key != "cpu":
        _preload_gpu_libraries()
    so = session_options(threads, spinning=spinning)
    source = model if isinstance(model, bytes) else str(model)
    session, logged, error = _create(ort, source, so, provider_chain(key, options, device))
    error = logged or error  # why a provider did not load says more than a later follow-on error
    if session is not None and session.get_providers()[0] == name:
        status = ProviderStatus(key, name, True, "", options)
        if check_fallback and key != "cpu":
            detail = cpu_fallback(source, key, options, device, threads)
            status = replace(status, cpu_fallback=bool(detail),
                             fallback_detail=detail or f"every node runs on {name}"
                             + (" or CUDAExecutionProvider" if key == "tensorrt" else ""))
        return session, status
    detail = error or "onnxruntime fell back to the CPU"
    if key != "cpu" and not torch.cuda.is_available():
        detail = f"no CUDA GPU visible ({detail})"
    return None, ProviderStatus(key, name, False, detail, options)


def _create(ort: Any, source: str | bytes, so: ort.SessionOptions,
            chain: list[Any]) -> tuple[ort.InferenceSession | None, str, str]:
    """A session (or ``None``), the most telling line of ORT's log about a provider, and the first
    line of the exception creating the session raised ("" for none)."""
    session, error = None, ""
    with _captured_output() as log:
        try:
            session = ort.InferenceSession(source, so, providers=chain)
        except Exception as e:  # ORT raises plain RuntimeError/Fail subclasses
            error = str(e).splitlines()[0] if str(e) else type(e).__name__
    return session, _failure_reason(log()), error


FALLBACK_KEY = "session.disable_cpu_ep_fallback"


def no_fallback_options(threads: int) -> ort.SessionOptions:
    """Session options under which ORT refuses to create a session that would run any node on the CPU."""
    so = session_options(threads, spinning=False)
    so.add_session_config_entry(FALLBACK_KEY, "1")
    return so


def cpu_fallback(source: str | bytes, key: str, options: dict[str, Any], device: torch.device,
                 threads: int) -> str:
    """Why some nodes of the model would run on the CPU in a ``key`` session ("" when none would).

    ORT silently assigns nodes no GPU provider takes to its CPU provider; ``get_providers()`` still
    lists the GPU first. A second session without the CPU provider and with
    ``session.disable_cpu_ep_fallback`` set fails exactly when such nodes exist.
    """
    import onnxruntime as ort

    session, logged, error = _create(ort, source, no_fallback_options(threads),
                                     provider_chain(key, options, device, cpu=False))
    if session is not None:
        return ""
    return error or logged or "ORT assigned some nodes to the CPU execution provider"


def _probe_model() -> bytes:
    """A one-node model (Relu) to test providers before the real export's long work."""
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


def reference_session(path: Path, threads: int) -> OrtModel:
    """The CPU session results are checked with (ORT's reference provider, no spinning)."""
    session, status = open_session(path, "cpu", threads=threads, spinning=False)
    if session is None:
        raise VerificationError(f"onnxruntime cannot open {path.name} on the CPU: {status.reason}",
                                "check the onnxruntime installation")
    return OrtModel(session, status)


def export_provider_options(key: str, settings: ExportSettings, device: torch.device,
                            sample_shape: tuple[int, ...], *, fp16: bool = False) -> dict[str, Any]:
    """Provider options of the export's sessions on the real model: TensorRT with its caches, fp16
    when asked, and a shape profile covering every batch the export runs (1, --batch, the random
    parity batch and the test-set batch) when the batch axis is dynamic."""
    profile = None
    if settings.dynamic_batch:
        profile = ShapeProfile(1, settings.batch, max(settings.batch + 2, settings.eval_batch, PARITY_INPUTS),
                               sample_shape)
    cache = trt_cache_dir(settings.trt_cache) if key == "tensorrt" else None
    return provider_options(key, device, fp16=fp16, cache_dir=cache, profile=profile)


def timing_sessions(path: Path, statuses: Sequence[ProviderStatus], settings: ExportSettings,
                    device: torch.device, threads: int, sample_shape: tuple[int, ...] = (), *, fp16: bool = False,
                    keys: Sequence[str] | None = None) -> tuple[list[OrtModel], list[ProviderStatus]]:
    """A session per usable provider on the real model (the probe used a one-node model, and a
    provider may still refuse this one: an error if it was asked for by name, a note otherwise).

    ``fp16``: TensorRT may build fp16 kernels. ``keys``: only these providers. Each GPU session is
    checked for nodes placed on the CPU (``ProviderStatus.cpu_fallback``).
    """
    runners: list[OrtModel] = []
    final: list[ProviderStatus] = []
    for s in statuses:
        if keys is not None and s.key not in keys:
            continue
        if not s.usable:
            final.append(s)
            continue
        options = export_provider_options(s.key, settings, device, sample_shape, fp16=fp16)
        if s.key == "tensorrt":
            cache = Path(options["trt_engine_cache_path"])
            try:
                cache.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise EdgenasError(f"cannot create the TensorRT cache folder {cache}: {e.strerror or e}",
                                   "give --trt-cache a writable folder") from None
        session, status = open_session(path, s.key, threads=threads, device=device, options=options,
                                       check_fallback=True)
        final.append(status)
        if session is not None:
            runners.append(OrtModel(session, status))
        elif settings.provider_keys is not None:
            raise EdgenasError(f"execution provider {s.key} cannot run {path.name}: {status.reason}",
                               "use --providers auto or cpu")
    return runners, final
