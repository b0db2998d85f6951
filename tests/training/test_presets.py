"""Presets as data: the digits_nsi preset's training settings, and the user's flags winning."""

import pytest

from heldout.training import presets
from heldout.training.config import TrainConfig


def test_digits_nsi_trains_with_label_smoothing_unless_the_user_chose_it():
    assert presets.preset_config("digits_nsi").label_smoothing == 0.2
    mine = TrainConfig(label_smoothing=0.05, epochs=7)
    kept = presets.preset_config("digits_nsi", mine, chosen={"label_smoothing"})
    assert (kept.label_smoothing, kept.epochs) == (0.05, 7)
    replaced = presets.preset_config("digits_nsi", mine, chosen={"epochs"})
    assert (replaced.label_smoothing, replaced.epochs) == (0.2, 7)


def test_every_preset_setting_is_a_train_config_field():
    fields = set(TrainConfig.__dataclass_fields__)
    for preset in presets.PRESETS.values():
        assert {k for k, _ in preset.train} <= fields, preset.name


def test_unknown_preset_is_refused_naming_the_parameter():
    with pytest.raises(ValueError, match="preset='nope'"):
        presets.preset_config("nope")
