"""INT8: ONNX Runtime static quantisation (QDQ) and the quantised model's accuracy and time."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from edgenas.errors import EdgenasError
from edgenas.export.onnx_export import metadata, save_checked
from edgenas.export.runtime import OrtModel, ProviderStatus, _captured_output, reference_session, timing_sessions
from edgenas.export.settings import INPUT_NAME, INT8_FILE, MODEL_FILE, PARITY_INPUTS, ExportSettings
from edgenas.export.trained import TrainedNet
from edgenas.export.verify import AccuracyCheck, _top1, collect_logits, parity_inputs, session_parity

if TYPE_CHECKING:
    from edgenas.data.load import DataBundle

INT8_DROP_WARN = 1.0  # accuracy points
# ORT's QDQ quantiser handles these; BatchNormalization is left out on purpose: the one BN no
# folding removes (after FactorizedReduce's concat) has a rank-1 scale its per-channel path rejects.
QDQ_OPS = ["Conv", "Gemm", "MatMul", "Add", "Concat", "MaxPool", "AveragePool", "GlobalAveragePool", "Relu"]


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
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
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
    save_checked(onnx.load(str(out_path)), out_path, {**extra_metadata, "edgenas.quantization": json.dumps(scheme)},
                 "the int8 model", "export without --quantize, and report this")
    return scheme


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
    runners = timing_sessions(staging / INT8_FILE, statuses, settings, device, threads, net.cfg.input_shape)[0]
    reference = reference_session(staging / MODEL_FILE, threads)
    px = parity_inputs(PARITY_INPUTS, net.cfg.input_shape)
    want = reference.run(px)
    del reference
    # int8 logits are not bounded value by value (its accuracy drop is the test); reported per session
    parity = [session_parity(r, "int8", px, want, settings.atol).to_dict() for r in runners]
    time_all("int8", runners)
    warning = int8_warning(fp32_acc.ort_top1, top1)
    return {"file": INT8_FILE, "scheme": scheme, "top1": top1, "fp32_top1": fp32_acc.ort_top1, "drop_points": drop,
            "n": len(labels), "warning": warning, "parity": parity}
