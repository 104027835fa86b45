"""The network to export (a train run's checkpoint) and the test data to check it on."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from edgenas.errors import EdgenasError
from edgenas.export.settings import ExportSettings
from edgenas.genotypes import Genotype
from edgenas.nets import NetConfig, build_network

if TYPE_CHECKING:
    from edgenas.data.load import DataBundle


@dataclass
class TrainedNet:
    """A network ready to export, with everything the ONNX file must say about itself."""

    model: nn.Module
    genotype: Genotype
    cfg: NetConfig
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    data: str | None = None                  # the data spec it was trained on
    source: dict[str, Any] = field(default_factory=dict)  # checkpoint path, epoch, run config bits
    data_channels: int | None = None        # channels the data was converted to in training (None: its own)
    seed: int = 0

    @property
    def name(self) -> str:
        return str(self.source.get("name") or "model")


def load_trained(path: str | Path, *, map_location: torch.device | str = "cpu") -> TrainedNet:
    """The network of a train run folder or of one checkpoint file.

    A folder gives its ``last.pt``: the final epoch's network, the one the DARTS evaluation protocol
    reports. ``best.pt`` is the epoch of highest *test* accuracy, so its test accuracy is chosen on
    the test set and optimistic; it is exported only when named.
    """
    from edgenas.checkpoints import load_checkpoint
    from edgenas.run_folder import RunDir

    path = Path(path)
    if not path.exists():
        raise EdgenasError(f"{path} does not exist",
                           "pass a train run folder (edgenas train --out) or its best.pt/last.pt")
    if path.is_dir():
        run = RunDir(path)
        ckpt_path = run.last
        if not ckpt_path.exists() and run.best.exists():
            raise EdgenasError(f"{path} has a best.pt but no last.pt (a kill during the first epoch's save?)",
                               f"resume the training (edgenas train --resume --out {path}), or export {run.best} "
                               "by name")
        if not ckpt_path.exists():
            raise EdgenasError(f"{path} holds no checkpoint (last.pt)",
                               "pass a train run folder (edgenas train --out) or a .pt file")
        name = path.name
    else:
        ckpt_path = path
        name = path.parent.name if path.suffix == ".pt" and path.stem in ("best", "last") else path.stem
    doc = load_checkpoint(ckpt_path, what="checkpoint", map_location=map_location)
    if doc.get("kind") != "train":
        raise EdgenasError(f"checkpoint {ckpt_path} is a {doc.get('kind', 'unknown')!r} checkpoint, not a train run's",
                           "export the checkpoint of an edgenas train run (train the derived genotype first)")
    config = doc.get("config")
    if not isinstance(config, dict):
        raise EdgenasError(f"checkpoint {ckpt_path} has no run config", "re-train with this edgenas version")
    for key in ("genotype", "net"):
        if not isinstance(config.get(key), dict):
            raise EdgenasError(f"checkpoint {ckpt_path} has no {'genotype' if key == 'genotype' else 'network config'}"
                               f" (config field {key!r})", "export a checkpoint written by edgenas train")
    state = doc.get("state", {}).get("model") if isinstance(doc.get("state"), dict) else None
    if not isinstance(state, dict):
        raise EdgenasError(f"checkpoint {ckpt_path} holds no model weights (state.model)",
                           "export a checkpoint written by edgenas train")
    genotype = Genotype.from_dict(config["genotype"], source=str(ckpt_path))
    try:
        cfg = NetConfig(**config["net"])
    except TypeError as e:
        raise EdgenasError(f"checkpoint {ckpt_path}: network config is malformed ({e})",
                           "export a checkpoint written by this edgenas version") from None
    model = build_network(genotype, cfg)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[0][:160]
        raise EdgenasError(f"checkpoint {ckpt_path}: weights do not fit its genotype/config ({first})",
                           "the checkpoint is damaged or was edited; export another one") from None
    model.eval()
    dataset = config.get("dataset") if isinstance(config.get("dataset"), dict) else {}
    mean, std = dataset.get("mean"), dataset.get("std")
    if not (isinstance(mean, list) and isinstance(std, list) and len(mean) == len(std) == cfg.in_channels):
        raise EdgenasError(f"checkpoint {ckpt_path} lacks the normalisation statistics (config.dataset.mean/std)",
                           "export a checkpoint written by edgenas train")
    names = dataset.get("class_names")
    classes = tuple(str(c) for c in names) if isinstance(names, list) else ()
    return TrainedNet(
        model=model, genotype=genotype, cfg=cfg, classes=classes,
        mean=tuple(float(m) for m in mean), std=tuple(float(s) for s in std),
        data=config.get("data"),
        source={"name": name, "checkpoint": str(ckpt_path), "epoch": doc.get("epoch"),
                "genotype_name": config.get("genotype_name") or None,
                "test_top1_at_training": _last_test_top1(doc.get("history"))},
        data_channels=config.get("in_channels"), seed=int(config.get("seed") or 0),
    )


def _last_test_top1(history: Any) -> float | None:
    """The test top-1 the training loop measured at the checkpoint's epoch (on its test subset)."""
    last = history[-1] if isinstance(history, list) and history and isinstance(history[-1], dict) else {}
    return last.get("test_top1")


def _check_data(net: TrainedNet, bundle: DataBundle) -> None:
    """The dataset must fit the network: class count, channels, image size, then class names."""
    cfg, spec = net.cfg, str(bundle.spec)
    fix = "pass the dataset the network was trained on with --data"
    if bundle.num_classes != cfg.num_classes:
        raise EdgenasError(f"dataset {spec} has {bundle.num_classes} classes but the network was trained "
                           f"for {cfg.num_classes}", fix)
    if bundle.in_channels != cfg.in_channels:
        raise EdgenasError(f"dataset {spec} has {bundle.in_channels}-channel images but the network takes "
                           f"{cfg.in_channels} channels", fix)
    if tuple(bundle.image_hw) != tuple(cfg.input_hw):
        raise EdgenasError(f"dataset {spec} has {'x'.join(map(str, bundle.image_hw))} images but the network "
                           f"was trained on {'x'.join(map(str, cfg.input_hw))}", fix)
    if net.classes and tuple(net.classes) != tuple(bundle.classes):
        differ = next(i for i, (a, b) in enumerate(zip(net.classes, bundle.classes)) if a != b)
        raise EdgenasError(f"dataset {spec} has classes other than the network's: class {differ} is "
                           f"{bundle.classes[differ]!r} there, {net.classes[differ]!r} in training", fix)


def load_export_data(net: TrainedNet, data: str | None, settings: ExportSettings) -> DataBundle:
    """The test split (and calibration images) with the network's own normalisation."""
    from edgenas.data.load import load_data
    from edgenas.data.tensors import ImageTensors

    spec = data or net.data
    if not spec:
        raise EdgenasError("no dataset to verify the export on", "pass --data SPEC (e.g. cifar10:DIR)")
    subset = settings.calibration if settings.quantize else 1
    # augment=False: calibration images are seen as at test time; channels converted only as in training
    bundle = load_data(spec, subset=max(subset, net.cfg.num_classes), test_subset=settings.test_subset,
                       augment=False, channels=net.data_channels, seed=net.seed)
    _check_data(net, bundle)
    if len(bundle.test) == 0:
        raise EdgenasError(f"dataset {spec} has no test images", "pass a dataset with a test split")
    # The network was trained on its checkpoint's statistics: use those, whatever this copy gives.
    bundle.test = ImageTensors(bundle.test.images, bundle.test.labels, net.mean, net.std)
    bundle.train = ImageTensors(bundle.train.images, bundle.train.labels, net.mean, net.std)
    return bundle
