"""Does ONNX Runtime compute what PyTorch computes: logit parity and top-1 over the test set.

The PyTorch reference runs in full fp32 (TF32 off on GPUs that have it, :func:`edgenas.device.full_fp32`):
the ONNX model is fp32 and so is the CPU runtime it is checked on. Every timed session (each
provider, each precision) is then checked against that fp32 CPU reference with a bound suited to
the precision it computes in (:data:`edgenas.export.settings.TOLERANCES`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from edgenas.device import full_fp32
from edgenas.errors import VerificationError
from edgenas.export.runtime import OrtModel
from edgenas.export.settings import ExportSettings, Tolerance, tolerance_for
from edgenas.export.trained import TrainedNet

if TYPE_CHECKING:
    from edgenas.data.tensors import ImageTensors


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
    from edgenas.metrics import accuracy

    return accuracy(logits, labels, (1,))[0]


Logits = tuple[torch.Tensor | None, list[torch.Tensor], torch.Tensor]


def collect_logits(model: nn.Module | None, runners: Sequence[OrtModel], test: ImageTensors,
                   device: torch.device, eval_batch: int) -> Logits:
    """Logits of every test image from PyTorch (when ``model`` is given) and from each ORT runner,
    and the labels; one pass over the data feeds every runtime the same normalised batch."""
    from edgenas.data.loaders import make_loader

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
    """Random-input and test-set parity plus test accuracy through both runtimes, PyTorch in full
    fp32 (TF32 off for the check, restored after)."""
    with full_fp32():
        return _check_parity(model, runner, net, settings, device, test)


def _check_parity(model: nn.Module, runner: OrtModel, net: TrainedNet, settings: ExportSettings,
                  device: torch.device, test: ImageTensors) -> tuple[list[Parity], AccuracyCheck]:
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


@dataclass(frozen=True)
class SessionParity:
    """One timed session's logits against the fp32 CPU reference on the same inputs."""

    provider: str
    model: str          # fp32 | fp16 | int8: what the session computes in
    n: int
    max_abs_diff: float
    limit: float | None  # None: not bounded value by value (int8: judged by accuracy)
    tolerance: dict[str, float] | None
    agree: int           # inputs whose top-1 class matches the reference's

    @property
    def passed(self) -> bool:
        return self.limit is None or self.max_abs_diff <= self.limit

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "top1_agreement": 100.0 * self.agree / max(self.n, 1), "passed": self.passed}


def parity_inputs(n: int, shape: tuple[int, ...]) -> np.ndarray:
    """Seeded N(0, 1) inputs (the scale of normalised images) for the per-session checks."""
    return np.random.default_rng(1).standard_normal((n, *shape), dtype=np.float32)


def session_parity(runner: OrtModel, model_kind: str, x: np.ndarray, want: np.ndarray,
                   fp32_atol: float) -> SessionParity:
    """Run ``runner`` on ``x`` and compare with the reference logits ``want`` within the bound of
    its precision and provider (:func:`edgenas.export.settings.tolerance_for`)."""
    got = np.asarray(runner.run(x), dtype=np.float32)
    tol: Tolerance | None = tolerance_for(model_kind, runner.status.key, fp32_atol)
    diff = float(np.abs(got - want).max()) if len(x) else 0.0
    limit = tol.limit(float(np.abs(want).max())) if tol is not None and len(x) else None
    agree = int((got.argmax(1) == want.argmax(1)).sum())
    return SessionParity(runner.status.name, model_kind, len(x), diff, limit,
                         asdict(tol) if tol is not None else None, agree)


def raise_if_sessions_failed(checks: Sequence[SessionParity]) -> None:
    for c in checks:
        if not c.passed:
            raise VerificationError(
                f"{c.provider} running the {c.model} model disagrees with the fp32 CPU reference: max |logit "
                f"difference| {c.max_abs_diff:.3g} exceeds its {c.model} bound {c.limit:.3g}",
                "the exported models are not kept; time without this provider (--providers) and report this")


@dataclass(frozen=True)
class ReducedAccuracy:
    """A reduced-precision session's top-1 over the test set, and its agreement with the fp32 model."""

    provider: str
    n: int
    top1: float
    fp32_top1: float
    agree: int

    @property
    def agreement(self) -> float:
        return 100.0 * self.agree / max(self.n, 1)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "top1_agreement": self.agreement, "drop_points": self.fp32_top1 - self.top1}


def reduced_accuracy(reference: OrtModel, runners: Sequence[OrtModel], test: ImageTensors,
                     device: torch.device, eval_batch: int) -> list[ReducedAccuracy]:
    """Top-1 of each runner over the test set, and how often it predicts the fp32 reference's class."""
    _, (ref, *outs), labels = collect_logits(None, [reference, *runners], test, device, eval_batch)
    ref_top1 = _top1(ref, labels) if len(labels) else 0.0
    return [ReducedAccuracy(r.status.name, len(labels), _top1(o, labels) if len(labels) else 0.0, ref_top1,
                            int((o.argmax(1) == ref.argmax(1)).sum())) for r, o in zip(runners, outs)]
