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
* with ``precision="fp16"``: an fp16 model for the CUDA provider (onnxconverter-common) and fp16
  TensorRT engines, each session checked against the fp32 model within an fp16 bound and on the
  test set (top-1 and agreement), and timed (:mod:`~edgenas.export.fp16`);
* every timed session is checked against the fp32 CPU reference with a bound suited to its
  precision and provider, and GPU sessions are probed for nodes ORT placed on the CPU;
* with ``precision="int8"`` (or ``quantize="int8"``): ONNX Runtime static quantisation in QDQ form (int8 weights per output
  channel, int8 activations, MinMax ranges from N training images; the affine scheme of Jacob et
  al., CVPR 2018), written beside the fp32 file with its own accuracy, time and size.

Modules: :mod:`~edgenas.export.settings` (options, file and graph names), :mod:`~edgenas.export.trained`
(checkpoint and test data), :mod:`~edgenas.export.onnx_export` (the ONNX file, its metadata and checker),
:mod:`~edgenas.export.runtime` (ORT sessions, provider availability), :mod:`~edgenas.export.verify`
(parity, test top-1), :mod:`~edgenas.export.timing`, :mod:`~edgenas.export.quantize` (int8),
:mod:`~edgenas.export.report` (report.json/.md, console tables) and :mod:`~edgenas.export.run` (the whole
export). The names below are re-exported so ``from edgenas.export import ...`` keeps working.
"""

from edgenas.export.fp16 import FP16_DROP_WARN, convert_fp16, export_fp16, fp16_warning
from edgenas.export.onnx_export import OnnxInfo, export_onnx, metadata, read_metadata
from edgenas.export.quantize import INT8_DROP_WARN, QDQ_OPS, calibration_batches, int8_warning, quantize_int8
from edgenas.export.report import ExportReport, console_tables, render_markdown
from edgenas.export.run import MOBILE_HW, MOBILE_MACS, default_out, export_network, run_export
from edgenas.export.runtime import (
    OrtModel,
    ProviderStatus,
    ShapeProfile,
    cpu_fallback,
    open_session,
    provider_chain,
    provider_options,
    physical_cores,
    probe_providers,
    reference_session,
    session_options,
    timing_sessions,
    trt_cache_dir,
)
from edgenas.export.settings import (
    EXPORTERS,
    FORMAT,
    FP16_FILE,
    FP32_ATOL,
    INPUT_NAME,
    INT8_FILE,
    MODEL_FILE,
    OUTPUT_NAME,
    PARITY_INPUTS,
    PRECISIONS,
    PROVIDERS,
    QUANTIZE_MODES,
    REPORT_JSON,
    REPORT_MD,
    TOLERANCES,
    VERSION,
    ExportSettings,
    Tolerance,
    opset_range,
    parse_providers,
    tolerance_for,
)
from edgenas.export.timing import Timing, time_ort, time_torch
from edgenas.export.trained import TrainedNet, load_export_data, load_trained
from edgenas.export.verify import (
    AccuracyCheck,
    Logits,
    Parity,
    ReducedAccuracy,
    SessionParity,
    check_parity,
    collect_logits,
    raise_if_failed,
    raise_if_sessions_failed,
    reduced_accuracy,
    session_parity,
)

__all__ = [
    "FP16_DROP_WARN", "FP16_FILE", "PARITY_INPUTS", "PRECISIONS", "TOLERANCES", "ReducedAccuracy", "SessionParity",
    "ShapeProfile", "Tolerance", "convert_fp16", "cpu_fallback", "export_fp16", "fp16_warning", "provider_chain",
    "provider_options", "raise_if_sessions_failed", "reduced_accuracy", "session_parity", "tolerance_for",
    "trt_cache_dir",
    "EXPORTERS", "FORMAT", "FP32_ATOL", "INPUT_NAME", "INT8_DROP_WARN", "INT8_FILE", "MOBILE_HW", "MOBILE_MACS",
    "MODEL_FILE", "OUTPUT_NAME", "PROVIDERS", "QDQ_OPS", "QUANTIZE_MODES", "REPORT_JSON", "REPORT_MD", "VERSION",
    "AccuracyCheck", "ExportReport", "ExportSettings", "Logits", "OnnxInfo", "OrtModel", "Parity", "ProviderStatus",
    "Timing", "TrainedNet", "calibration_batches", "check_parity", "collect_logits", "console_tables",
    "default_out", "export_network", "export_onnx", "int8_warning", "load_export_data", "load_trained", "metadata",
    "open_session", "opset_range", "parse_providers", "physical_cores", "probe_providers", "quantize_int8",
    "raise_if_failed", "read_metadata", "reference_session", "render_markdown", "run_export", "session_options",
    "time_ort", "time_torch", "timing_sessions",
]
