"""Inference time of ONNX Runtime (per execution provider) and of PyTorch eager."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from edgenas.device import DTYPES, TimingStats, benchmark
from edgenas.export.runtime import OrtModel
from edgenas.export.settings import ExportSettings


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
               settings: ExportSettings, dtype: torch.dtype = torch.float32) -> Timing:
    """PyTorch eager time of ``model`` (fp32) or of a copy of it cast to ``dtype``."""
    if dtype != torch.float32:
        import copy

        model = copy.deepcopy(model).to(dtype)
    x = torch.randn((batch, *shape), generator=torch.Generator().manual_seed(0)).to(device, dtype)

    def call() -> None:
        with torch.no_grad():
            model(x)

    stats = benchmark(call, device, runs=settings.runs, max_seconds=settings.max_seconds,
                      min_warmup=min(3, settings.max_warmup), max_warmup=settings.max_warmup)
    kind = next(name for name, d in DTYPES.items() if d == dtype)
    return Timing("pytorch-eager", kind, None, str(device), batch, stats,
                  torch.get_num_threads() if device.type == "cpu" else 0,
                  {"no_grad": True, "memory_format": "contiguous (NCHW)", "dtype": str(dtype).removeprefix("torch.")})
