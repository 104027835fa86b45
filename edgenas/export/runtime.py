"""ONNX Runtime sessions: which execution providers really run here (and why not), and the model's
batch contract."""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from edgenas.errors import EdgenasError, VerificationError
from edgenas.export.settings import INPUT_NAME, OUTPUT_NAME, PROVIDERS, ExportSettings

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
