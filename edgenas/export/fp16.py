"""FP16 deployment: an fp16 ONNX model for the CUDA provider, TensorRT building fp16 engines from
the fp32 model, and both checked against the fp32 model on the test set.

The conversion is onnxconverter-common's ``convert_float_to_float16`` (weights and activations in
fp16, inputs and outputs kept fp32 so callers feed the same arrays as to the fp32 model). TensorRT
is given the fp32 model with ``trt_fp16_enable``: its builder chooses per layer, which is how
NVIDIA recommends deploying fp16. The CPU provider has fp16 kernels for few operators; ORT computes
the rest in fp32 behind inserted casts, so an fp16 model "running" on the CPU checks the rounding
of its weights, not fp16 arithmetic.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from edgenas.errors import EdgenasError
from edgenas.export.onnx_export import metadata, save_checked
from edgenas.export.runtime import OrtModel, ProviderStatus, _captured_output, reference_session, timing_sessions
from edgenas.export.settings import FP16_FILE, MODEL_FILE, PARITY_INPUTS, ExportSettings
from edgenas.export.trained import TrainedNet
from edgenas.export.verify import (
    AccuracyCheck,
    SessionParity,
    parity_inputs,
    raise_if_sessions_failed,
    reduced_accuracy,
    session_parity,
)

if TYPE_CHECKING:
    from edgenas.data.load import DataBundle

FP16_DROP_WARN = 0.5  # top-1 points below fp32 worth a warning (fp16 should cost almost nothing)


def convert_fp16(fp32_path: Path, out_path: Path, extra_metadata: dict[str, str]) -> dict[str, Any]:
    """Write the fp16 version of ``fp32_path`` to ``out_path``; returns the scheme for the report."""
    import onnx
    from onnxconverter_common import float16

    proto = onnx.load(str(fp32_path))
    with _captured_output():  # the converter warns through print about values it clamps
        half = float16.convert_float_to_float16(proto, keep_io_types=True)
    scheme = {"converter": "onnxconverter-common float16.convert_float_to_float16", "keep_io_types": True,
              "inputs_outputs": "float32 (cast at the graph's edges)", "weights": "float16"}
    save_checked(half, out_path, {**extra_metadata, "edgenas.precision": json.dumps(scheme)}, "the fp16 model",
                 "export with --precision fp32, and report this")
    return scheme


def fp16_warning(fp32_top1: float, top1: float, provider: str) -> str:
    drop = fp32_top1 - top1
    if drop <= FP16_DROP_WARN:
        return ""
    return (f"fp16 top-1 on {provider} {top1:.2f}% is {drop:.2f} points below fp32 ({fp32_top1:.2f}%), more "
            f"than {FP16_DROP_WARN:g}: activations may overflow fp16; ship the fp32 model")


def fp16_sessions(staging: Path, statuses: Sequence[ProviderStatus], settings: ExportSettings,
                  device: torch.device, threads: int, shape: tuple[int, ...]) -> tuple[list[OrtModel], list[str]]:
    """Sessions computing in fp16: the fp16 model on CUDA and the CPU, TensorRT with fp16 engines
    built from the fp32 model; notes for providers that refused."""
    notes: list[str] = []
    half, half_status = timing_sessions(staging / FP16_FILE, statuses, settings, device, threads, shape,
                                        keys=("cuda", "cpu"))
    trt, trt_status = timing_sessions(staging / MODEL_FILE, statuses, settings, device, threads, shape,
                                      fp16=True, keys=("tensorrt",))
    for s in [*half_status, *trt_status]:
        if not s.usable:
            notes.append(f"fp16 on {s.name}: not run ({s.reason})")
    runners = trt + half
    if not runners:
        raise EdgenasError("no execution provider here can run the fp16 model: "
                           + "; ".join(notes or ["none usable"]),
                           "export fp16 on a machine with an NVIDIA GPU (CUDA or TensorRT provider)")
    return runners, notes


def export_fp16(net: TrainedNet, bundle: DataBundle, staging: Path, statuses: list[ProviderStatus],
                settings: ExportSettings, device: torch.device, threads: int, fp32_acc: AccuracyCheck,
                time_all: Callable[[str, Sequence[OrtModel]], None]) -> dict[str, Any]:
    """Convert, check each fp16 session against the fp32 model (random inputs within the fp16
    bound, then test-set top-1 and agreement), and time them like the fp32 sessions."""
    shape = net.cfg.input_shape
    scheme = convert_fp16(staging / MODEL_FILE, staging / FP16_FILE, metadata(net))
    runners, notes = fp16_sessions(staging, statuses, settings, device, threads, shape)
    reference = reference_session(staging / MODEL_FILE, threads)
    x = parity_inputs(PARITY_INPUTS, shape)
    want = reference.run(x)
    parity: list[SessionParity] = [session_parity(r, "fp16", x, want, settings.atol) for r in runners]
    raise_if_sessions_failed(parity)
    accuracy = reduced_accuracy(reference, runners, bundle.test, device, settings.eval_batch)
    del reference
    time_all("fp16", runners)
    warnings = [w for a in accuracy if (w := fp16_warning(a.fp32_top1, a.top1, a.provider))]
    return {"file": FP16_FILE, "scheme": scheme, "parity": [p.to_dict() for p in parity],
            "accuracy": [a.to_dict() for a in accuracy], "fp32_top1": fp32_acc.ort_top1,
            "providers": [r.status.to_dict() for r in runners], "notes": notes, "warnings": warnings}
