"""The config dataclasses' range checks: one helper (values.check_fields), one line naming the field
and the bound it broke."""

from __future__ import annotations

import pytest

from edgenas.errors import EdgenasError
from edgenas.export.settings import ExportSettings
from edgenas.search.loop import SearchConfig
from edgenas.search.supernet import SupernetConfig
from edgenas.train import TrainConfig
from edgenas.values import FieldRule, check_fields

OPS = ("skip_connect", "sep_conv_3x3")


@pytest.mark.parametrize("make, message, hint", [
    (lambda: SearchConfig(epochs=0), "--epochs 0 is out of range: it must be >= 1", "give --epochs a value >= 1"),
    (lambda: SearchConfig(warmup_epochs=-1), "--warmup-epochs -1 is out of range: it must be >= 0", "--warmup-epochs"),
    (lambda: SearchConfig(epochs=3, warmup_epochs=3), "--warmup-epochs 3 is not below --epochs 3", "before the last"),
    (lambda: SearchConfig(batch_size=8, accumulate=9), "--accumulate 9 is out of range: it must be <= 8",
     "--accumulate"),
    (lambda: SearchConfig(lr=0.0), "--lr 0 is out of range: it must be > 0", "--lr"),
    (lambda: TrainConfig(label_smoothing=1.0), "--label-smoothing 1 is out of range: it must be < 1",
     "--label-smoothing"),
    (lambda: TrainConfig(drop_path=-0.1), "--drop-path -0.1 is out of range: it must be >= 0", "--drop-path"),
    (lambda: TrainConfig(auxiliary_weight=0.0, batch_size=0), "--batch-size 0 is out of range", "--batch-size"),
    (lambda: SupernetConfig(OPS, C=1), "C 1 is out of range: it must be >= 2", "give C a value >= 2"),
    (lambda: SupernetConfig(OPS, num_classes=1), "num_classes 1 is out of range", "num_classes"),
    (lambda: ExportSettings(batch=0), "batch 0 is out of range: it must be >= 1", "give batch a value >= 1"),
    (lambda: ExportSettings(test_subset=0), "test_subset 0 is out of range", "test_subset"),
    (lambda: ExportSettings(threads=-1), "threads -1 is out of range: it must be >= 0", "threads"),
])
def test_a_config_out_of_range_names_the_field_and_its_bound(make, message, hint) -> None:
    with pytest.raises(EdgenasError) as e:
        make()
    assert message in e.value.message and hint in e.value.hint
    assert "\n" not in e.value.message


def test_optional_fields_left_unset_pass() -> None:
    config = SearchConfig(layers=None, lr=None, subset=None, warmup_epochs=None)
    assert (config.layers, config.lr, config.subset) == (None, None, None)
    assert ExportSettings(test_subset=None).test_subset is None


def test_check_fields_applies_rules_in_order() -> None:
    class Config:
        a = 0
        b = -1

    with pytest.raises(EdgenasError, match="^--a 0 is out of range"):
        check_fields(Config(), (FieldRule("a", minimum=1), FieldRule("b", minimum=0)))
    with pytest.raises(EdgenasError, match="^b -1 is out of range: it must be >= 0"):
        check_fields(Config(), (FieldRule("a", minimum=0), FieldRule("b", minimum=0)), flags=False)
