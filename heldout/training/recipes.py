"""Published training recipes as data, and `config_for`: a `TrainConfig` built from the
values a user gave (overrides) over a recipe (and a preset's values, `presets`).

One owner per default: a field not given takes the preset's value, else the recipe's,
else `TrainConfig`'s own default; a Python caller and ``train.py`` build configs through
`config_for` alike, so both get the same validation. No TensorFlow is imported.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from heldout.errors import ParameterError
from heldout.models import registry
from heldout.training import airbench_recipe
from heldout.training.config import TrainConfig

# The SmallInception recipe follows the published outline (SGD with heavy-ball momentum
# on the mean loss, linear warm-up then linear decay to zero, L2 weight decay on
# weights, pad-4 crop and flip, inputs / 255); the released code does not include the
# training script, so epochs, batch size and peak rate are this toolkit's choice.
SMALL_INCEPTION_RECIPE: dict[str, object] = {
    "epochs": 80, "batch_size": 128, "learning_rate": 0.1, "momentum": 0.9,
    "nesterov": False, "weight_decay": 5e-4, "lr_schedule": "linear", "warmup_epochs": 15.0,
    "label_smoothing": 0.0, "augment": "crop_flip", "models_at_once": 1,
}


# Recipe name -> the TrainConfig values of that published recipe.
RECIPES: dict[str, Callable[[], dict[str, object]]] = {
    "small_inception": lambda: dict(SMALL_INCEPTION_RECIPE),
    "airbench": airbench_recipe.recipe,
}
# What ``recipe`` may be besides a name in RECIPES: the model's own, or none.
AUTO, NONE = "auto", "none"
RECIPE_CHOICES = (AUTO, NONE, *RECIPES)
_FIELDS = frozenset(TrainConfig.__dataclass_fields__)
_DEFAULT_MODEL = TrainConfig.__dataclass_fields__["model"].default


def recipe_values(model: str, recipe: str = AUTO) -> dict[str, object]:
    """The `TrainConfig` values of `recipe` for `model` ({} for ``none`` or a model without
    a published recipe under ``auto``).

    Raises:
        ParameterError: an unknown recipe (``recipe``) or model (``model``).
    """
    if recipe not in RECIPE_CHOICES:
        raise ParameterError("recipe", f"expected one of {', '.join(RECIPE_CHOICES)}",
                             repr(recipe))
    if recipe == AUTO:
        if model not in registry.MODELS:
            raise ParameterError("model", "not a known model: expected one of "
                                 f"{', '.join(sorted(registry.MODELS))}", repr(model))
        recipe = registry.MODELS[model].recipe or NONE
    return {} if recipe == NONE else RECIPES[recipe]()


def config_for(overrides: Mapping[str, Any] | None = None, recipe: str = AUTO,
               base: Mapping[str, Any] | None = None) -> TrainConfig:
    """The `TrainConfig` of the values given, over `base`, over the model's recipe.

    Args:
        overrides: `TrainConfig` fields the caller gave (flags on the command line); they
            win. When ``epochs`` is given and ``warmup_epochs`` is not, a recipe's warm-up
            keeps its fraction of training.
        recipe: ``auto`` (the recipe of the model, `registry.ModelSpec.recipe`), ``none``,
            or a name in `RECIPES`.
        base: values between the recipe and the overrides (a preset's, `presets`).

    Raises:
        ParameterError: an unknown field, recipe or model, or invalid combined settings
            (`TrainConfig` validation), naming the field.
    """
    overrides, base = dict(overrides or {}), dict(base or {})
    for name in (*overrides, *base):
        if name not in _FIELDS:
            raise ParameterError(name, "not a training setting (a TrainConfig field)")
    model = overrides.get("model", base.get("model", _DEFAULT_MODEL))
    values = recipe_values(model, recipe)
    if "epochs" in overrides and "warmup_epochs" not in overrides and values:
        values["warmup_epochs"] = (float(values["warmup_epochs"]) * overrides["epochs"]
                                   / float(values["epochs"]))
    return TrainConfig(**{**values, **base, **overrides})
