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


def test_models_at_once_given_for_a_one_at_a_time_model_is_refused(tmp_path):
    """--models_at_once cannot apply to small_inception: refused, not ignored."""
    from heldout.training import api

    request = api.TrainRequest(
        config=TrainConfig(model="small_inception", models_at_once=8),
        chosen=frozenset({"model", "models_at_once"}), experiment_dir=str(tmp_path / "e"),
        num_runs=1)
    with pytest.raises(ValueError, match="models_at_once=8: model=small_inception"):
        api.train(request)
