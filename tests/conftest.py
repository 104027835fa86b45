"""Shared test marks and fixtures (append yours; don't rewrite others').

Marks (registered in pyproject.toml):
  @pytest.mark.needs_cuda  skipped, with the reason, where torch sees no CUDA GPU
  @pytest.mark.needs_data  skipped, with the reason, where none of the shared data sets is present;
                           use the fixtures below to get (or skip on) a specific one
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class DataPaths:
    cifar10_tar: Path
    fashion_mnist: Path

    def present(self) -> list[Path]:
        return [p for p in (self.cifar10_tar, self.fashion_mnist) if p.exists()]


DATA = DataPaths(
    cifar10_tar=Path(os.environ.get("EDGENAS_CIFAR10_TAR", REPO.parent / "shared/data/cifar10-jpeg.tar.gz")),
    fashion_mnist=Path(os.environ.get("EDGENAS_FASHION_MNIST", "/usr/share/datasets/fashion-mnist")),
)

CUDA_REASON = "needs a CUDA GPU; torch.cuda.is_available() is False on this machine"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    cuda = torch.cuda.is_available()
    data = bool(DATA.present())
    for item in items:
        if "needs_cuda" in item.keywords and not cuda:
            item.add_marker(pytest.mark.skip(reason=CUDA_REASON))
        if "needs_data" in item.keywords and not data:
            item.add_marker(pytest.mark.skip(
                reason=f"needs a shared data set: none of {DATA.cifar10_tar}, {DATA.fashion_mnist} exists"))


@pytest.fixture(scope="session")
def data_paths() -> DataPaths:
    """Where the shared test data lives (paths may not exist; see the fixtures below)."""
    return DATA


@pytest.fixture(scope="session")
def cifar10_tar() -> Path:
    if not DATA.cifar10_tar.exists():
        pytest.skip(f"CIFAR-10 JPEG tar not found at {DATA.cifar10_tar}")
    return DATA.cifar10_tar


@pytest.fixture(scope="session")
def fashion_mnist_dir() -> Path:
    if not DATA.fashion_mnist.exists():
        pytest.skip(f"Fashion-MNIST idx files not found in {DATA.fashion_mnist}")
    return DATA.fashion_mnist


@pytest.fixture(scope="session")
def tiny_train_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real (tiny) train run folder: DARTS_V2 at C=4, 3 cells, one epoch on 100 synthetic 16x16
    images (25 test images). Shared by the export tests; treat it as read-only."""
    from edgenas.genotypes import get_genotype
    from edgenas.train import TrainConfig, train

    out = tmp_path_factory.mktemp("tiny-run") / "train-tiny"
    cfg = TrainConfig(channels=4, layers=3, epochs=1, batch_size=32, cutout=0)
    train(get_genotype("DARTS_V2"), cfg, "synthetic:100", out=out, device=torch.device("cpu"), quiet=True,
          genotype_name="DARTS_V2")
    return out


# Tests use tiny tensors, where intra-op threads buy nothing; with several pytest processes (or
# other jobs) on few cores, OpenMP's spinning threads slowed the inspect/nets tests 16x here
# (239 s vs 14.5 s on the 2-core dev VM at load ~6). EDGENAS_TEST_THREADS overrides.
torch.set_num_threads(int(os.environ.get("EDGENAS_TEST_THREADS", "1")))
