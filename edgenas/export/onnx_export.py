"""Write the network as a checked, self-described ONNX file.

Exporter: the TorchScript-based ``torch.onnx.export(..., dynamo=False)`` by default. torch 2.14
marks it deprecated (the torch.export-based exporter is the default since 2.9) but it is still
there, exports these networks at exactly the opset asked for (the dynamo exporter implements
opset >= 18 only and its down-conversion to 17 fails on ``ReduceMean``), gives the plain
``GlobalAveragePool``/``Flatten`` head, and takes ~0.2 s where the dynamo exporter takes ~5 s. Its
only untidiness, ``Identity`` nodes for de-duplicated initialisers, is removed here. The dynamo
exporter is available as ``exporter="dynamo"`` (opset >= 18).
"""

from __future__ import annotations

import copy
import json
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from edgenas import __version__
from edgenas.errors import EdgenasError, VerificationError
from edgenas.export.settings import INPUT_NAME, OUTPUT_NAME, ExportSettings
from edgenas.export.trained import TrainedNet


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


def save_checked(proto: Any, path: str | Path, props: dict[str, str], what: str, fix: str) -> None:
    """Write ``proto`` with ``props`` as its only metadata, then run onnx.checker's full check on
    the file: a model that fails it is never left to be shipped."""
    import onnx

    proto.producer_name = "edgenas"
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, props)
    onnx.save(proto, str(path))
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as e:  # onnx.checker.ValidationError, shape-inference errors
        raise VerificationError(f"{what} fails onnx.checker (full check): {str(e).splitlines()[0][:200]}",
                                fix) from None


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
    proto.producer_version = __version__
    proto.doc_string = f"edgenas evaluation network ({net.cfg.setting}, C={net.cfg.C}, {net.cfg.layers} cells)"
    save_checked(proto, path, metadata(net, extra_metadata), "the exported model",
                 "report this: the network uses something the exporter writes wrongly")
    counts: dict[str, int] = {}
    for node in proto.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return OnnxInfo(opset=settings.opset, exporter=settings.exporter, input_name=INPUT_NAME, output_name=OUTPUT_NAME,
                    input_shape=_dims(proto.graph.input[0]), output_shape=_dims(proto.graph.output[0]),
                    dynamic_batch=settings.dynamic_batch, nodes=dict(sorted(counts.items())),
                    checker="passed (onnx.checker full_check)")
