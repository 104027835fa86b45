"""Export settings (the CLI's options, validated once) and the names the export's files and graph use."""

from __future__ import annotations

from dataclasses import dataclass

from edgenas.errors import EdgenasError
from edgenas.values import FieldRule, check_fields

FORMAT = "edgenas.export"
VERSION = 1
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
FP32_ATOL = 1e-4
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
FP16_FILE = "model_fp16.onnx"
PARITY_INPUTS = 16  # random inputs every timed session is checked on
# what is written beside the fp32 model (always written: it is the reference every other is checked against)
PRECISIONS = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class Tolerance:
    """How far a session's logits may stray from the fp32 CPU reference: ``atol + rtol * scale``,
    ``scale`` being the largest |reference logit| (a relative bound suits reduced precisions, whose
    error grows with the values)."""

    atol: float
    rtol: float = 0.0

    def limit(self, scale: float) -> float:
        return self.atol + self.rtol * scale


# Bounds per (precision the session computes in, provider). fp32 on the CPU is the exact check,
# at the export's --atol (tolerance_for).
# fp32 on CUDA runs with TF32 off (provider option use_tf32=0) but other convolution algorithms
# than the CPU's: summation order changes the last bits. TensorRT may pick TF32 kernels for fp32
# layers (10-bit mantissa, ~1e-3 relative). fp16 keeps 11 significant bits per value and rounds
# every layer's output: errors of about 1 % of the largest logit after a few dozen layers.
TOLERANCES: dict[tuple[str, str], Tolerance] = {
    ("fp32", "cuda"): Tolerance(1e-3),
    ("fp32", "tensorrt"): Tolerance(1e-3, 1e-2),
    ("fp16", "cpu"): Tolerance(1e-3, 2e-2),
    ("fp16", "cuda"): Tolerance(1e-3, 2e-2),
    ("fp16", "tensorrt"): Tolerance(1e-3, 2e-2),
}


def tolerance_for(precision: str, provider_key: str, fp32_atol: float = FP32_ATOL) -> Tolerance | None:
    """The parity bound of a session, or ``None`` where logits are not compared value by value
    (int8: judged by its accuracy drop instead)."""
    if precision == "fp32" and provider_key == "cpu":
        return Tolerance(fp32_atol)
    return TOLERANCES.get((precision, provider_key))


@dataclass(frozen=True)
class ExportSettings:
    """How to export, check and time (the CLI's options, validated once)."""

    opset: int = 17
    batch: int = 1
    dynamic_batch: bool = False
    providers: str = "auto"          # auto | comma list of tensorrt, cuda, cpu
    exporter: str = "torchscript"    # torchscript | dynamo
    quantize: str | None = None      # None | int8 (the older spelling of precision="int8")
    precision: str = "fp32"          # fp32 | fp16 | int8: the deployment model written beside the fp32 one
    trt_cache: str = ""              # TensorRT engine and timing cache folder ("" = the user cache)
    calibration: int = 256           # training images for int8 calibration
    atol: float = FP32_ATOL
    random_batches: int = 8
    eval_batch: int = 100            # PyTorch batch over the test set
    test_subset: int | None = None   # class-balanced test images (None: the whole test set)
    threads: int = 0                 # ORT intra-op threads; 0 = a CPU --profile's, else physical cores
    runs: int = 50                   # timed runs per configuration
    max_warmup: int = 30             # warm-up runs at most (fewer once times settle)
    max_seconds: float = 10.0        # cap on the timed phase per configuration
    profile_missing: bool = False    # measure the shapes a --profile lacks (on its device) to predict
    latency_budget_ms: float | None = None  # checked against the time measured on the --profile's target

    def __post_init__(self) -> None:
        if self.exporter not in EXPORTERS:
            raise EdgenasError(f"unknown exporter {self.exporter!r}", f"use one of {', '.join(EXPORTERS)}")
        lo, hi = opset_range(self.exporter)
        if not lo <= self.opset <= hi:
            raise EdgenasError(f"opset {self.opset} is outside what the {self.exporter} exporter writes "
                               f"({lo}..{hi})", f"use --opset between {lo} and {hi}")
        check_fields(self, (
            FieldRule("batch", minimum=1), FieldRule("calibration", minimum=1), FieldRule("runs", minimum=1),
            FieldRule("max_warmup", minimum=1), FieldRule("threads", minimum=0), FieldRule("atol", above=0),
            FieldRule("eval_batch", minimum=1), FieldRule("random_batches", minimum=1),
            FieldRule("test_subset", minimum=1, required=False)), flags=False)
        if self.latency_budget_ms is not None and not 0 < self.latency_budget_ms < float("inf"):
            raise EdgenasError(f"latency budget {self.latency_budget_ms} ms is not a positive number",
                               "give e.g. --latency-budget 12ms")
        if self.quantize is not None and self.quantize not in QUANTIZE_MODES:
            raise EdgenasError(f"unknown quantisation {self.quantize!r}", f"use --quantize {'|'.join(QUANTIZE_MODES)}")
        if self.precision not in PRECISIONS:
            raise EdgenasError(f"unknown precision {self.precision!r}", f"use --precision {'|'.join(PRECISIONS)}")
        if self.quantize is not None and self.precision not in ("fp32", self.quantize):
            raise EdgenasError(f"--quantize {self.quantize} contradicts --precision {self.precision}",
                               f"give only --precision {self.quantize}")
        # one spelling inside: --quantize int8 is --precision int8
        if self.quantize is not None:
            object.__setattr__(self, "precision", self.quantize)
        elif self.precision in QUANTIZE_MODES:
            object.__setattr__(self, "quantize", self.precision)
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
