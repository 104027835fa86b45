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
  whole-network latency it predicts (:func:`edgenas.latency.predict_latency`) beside the time measured
  on the profile's runtime, provider and batch, and whether a latency budget is met as measured;
* with ``precision="fp16"``: an fp16 model for the CUDA provider (onnxconverter-common) and fp16
  TensorRT engines, each session checked against the fp32 model within an fp16 bound and on the
  test set (top-1 and agreement), and timed (:mod:`~edgenas.export.fp16`);
* every timed session is checked against the fp32 CPU reference with a bound suited to its
  precision and provider, and GPU sessions are probed for nodes ORT placed on the CPU;
* with ``precision="int8"`` (or ``quantize="int8"``): ONNX Runtime static quantisation in QDQ form
  (int8 weights per output channel, int8 activations, MinMax ranges from N training images; the
  affine scheme of Jacob et al., CVPR 2018), written beside the fp32 file with its own accuracy,
  time and size.

Modules: :mod:`~edgenas.export.settings` (options, file and graph names), :mod:`~edgenas.export.trained`
(checkpoint and test data), :mod:`~edgenas.export.onnx_export` (the ONNX file, its metadata and checker),
:mod:`~edgenas.export.runtime` (ORT sessions, provider availability), :mod:`~edgenas.export.verify`
(parity, test top-1), :mod:`~edgenas.export.timing`, :mod:`~edgenas.export.quantize` (int8),
:mod:`~edgenas.export.report` (report.json/.md, console tables) and :mod:`~edgenas.export.run` (the whole
export). The names below are re-exported so ``from edgenas.export import ...`` keeps working.
"""

from __future__ import annotations

import importlib
from typing import Any

# Names load lazily (PEP 562): importing one submodule, e.g. ``edgenas.export.runtime`` for ORT
# sessions in profiling, must not load ``edgenas.export.run``, which sits above the latency model
# and profiling and imports them.
_SOURCES: dict[str, tuple[str, ...]] = {
    "fp16": ("FP16_DROP_WARN", "convert_fp16", "export_fp16", "fp16_warning"),
    "onnx_export": ("OnnxInfo", "export_onnx", "metadata", "read_metadata"),
    "quantize": ("INT8_DROP_WARN", "QDQ_OPS", "calibration_batches", "int8_warning", "quantize_int8"),
    "report": ("ExportReport", "console_tables", "render_markdown"),
    "run": ("default_out", "export_network", "run_export"),
    "runtime": ("OrtModel", "ProviderStatus", "open_session", "physical_cores", "probe_providers",
                "reference_session", "session_options", "timing_sessions", "ShapeProfile", "cpu_fallback",
                "provider_chain", "provider_options", "trt_cache_dir"),
    "settings": ("EXPORTERS", "FORMAT", "FP32_ATOL", "INPUT_NAME", "INT8_FILE", "MODEL_FILE", "OUTPUT_NAME",
                 "PROVIDERS", "QUANTIZE_MODES", "REPORT_JSON", "REPORT_MD", "VERSION", "ExportSettings",
                 "opset_range", "parse_providers", "FP16_FILE", "PARITY_INPUTS", "PRECISIONS", "TOLERANCES",
                 "Tolerance", "tolerance_for"),
    "timing": ("Timing", "time_ort", "time_torch"),
    "trained": ("TrainedNet", "load_export_data", "load_trained"),
    "verify": ("AccuracyCheck", "Logits", "Parity", "check_parity", "collect_logits", "raise_if_failed",
               "ReducedAccuracy", "SessionParity", "raise_if_sessions_failed", "reduced_accuracy", "session_parity"),
}
_WHERE = {name: module for module, names in _SOURCES.items() for name in names}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'edgenas.export' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"edgenas.export.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_WHERE})
