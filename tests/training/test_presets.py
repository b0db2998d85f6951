"""Presets and recipes as data: the digits_nsi preset's training settings, and the values
a caller gives winning over them (the same from Python as from train.py)."""

import pytest

from heldout.errors import ParameterError
from heldout.training import presets, recipes
from heldout.training.config import TrainConfig


def test_digits_nsi_trains_with_label_smoothing_unless_the_caller_gives_it():
    assert presets.preset_config("digits_nsi").label_smoothing == 0.2
    kept = presets.preset_config("digits_nsi", {"label_smoothing": 0.05, "epochs": 7})
    assert (kept.label_smoothing, kept.epochs) == (0.05, 7)
    replaced = presets.preset_config("digits_nsi", {"epochs": 7})
    assert (replaced.label_smoothing, replaced.epochs) == (0.2, 7)
    assert replaced == TrainConfig(label_smoothing=0.2, epochs=7)


def test_every_preset_setting_is_a_train_config_field():
    fields = set(TrainConfig.__dataclass_fields__)
    for preset in presets.PRESETS.values():
        assert {k for k, _ in preset.train} <= fields, preset.name


def test_unknown_preset_recipe_and_field_are_refused_naming_the_parameter():
    for call, parameter in [(lambda: presets.preset_config("nope"), "preset"),
                            (lambda: recipes.config_for({}, "nope"), "recipe"),
                            (lambda: recipes.config_for({"epoch": 3}), "epoch"),
                            (lambda: recipes.config_for({"model": "nope"}), "model")]:
        with pytest.raises(ParameterError) as raised:
            call()
        assert raised.value.parameter == parameter


def test_models_at_once_given_for_a_one_at_a_time_model_is_refused_from_python_too():
    """models_at_once cannot apply to small_inception: refused, not ignored, whether the
    config is built directly, through its recipe, or with the recipe switched off."""
    for build in (lambda: TrainConfig(model="small_inception", models_at_once=250),
                  lambda: recipes.config_for({"model": "small_inception",
                                              "models_at_once": 8}),
                  lambda: recipes.config_for({"model": "small_inception",
                                              "models_at_once": 8}, "none")):
        with pytest.raises(ParameterError, match="model=small_inception trains one run per "
                                                 "program") as raised:
            build()
        assert raised.value.parameter == "models_at_once"
    # Not given: the model's own K (1), with and without its recipe.
    assert TrainConfig(model="small_inception").models_at_once == 1
    assert recipes.config_for({"model": "small_inception"}, "none").models_at_once == 1
    assert TrainConfig().models_at_once == 250


def test_recipe_warmup_keeps_its_fraction_when_epochs_are_given():
    resolved = recipes.config_for({"model": "small_inception", "epochs": 8})
    expected = recipes.SMALL_INCEPTION_RECIPE
    assert resolved.epochs == 8
    assert resolved.warmup_epochs == pytest.approx(
        expected["warmup_epochs"] * 8 / expected["epochs"])
    for field in ("batch_size", "learning_rate", "lr_schedule", "augment", "models_at_once"):
        assert getattr(resolved, field) == expected[field], field
    assert recipes.config_for({}) == TrainConfig()  # the MLP has no published recipe
