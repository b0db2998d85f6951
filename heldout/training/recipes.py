"""Published training recipes as data: name -> the `TrainConfig` values of that recipe."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

from heldout.training import airbench
from heldout.training.core import TrainConfig

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
    "airbench": airbench.recipe,
}


def apply_recipe(config: TrainConfig, recipe: str, keep: Sequence[str] = ()) -> TrainConfig:
    """`config` with the values of a published recipe, except the fields named in `keep`.

    Args:
        config: the settings so far (e.g. from flags).
        recipe: a name in `RECIPES`.
        keep: fields the user chose (flags given on the command line); they win. When
            ``epochs`` is kept and ``warmup_epochs`` is not, the warm-up keeps its
            fraction of training.

    Raises:
        ValueError: unknown recipe, or the combined settings are invalid.
    """
    if recipe not in RECIPES:
        raise ValueError(f"--recipe={recipe}: expected one of {', '.join(RECIPES)}")
    values = RECIPES[recipe]()
    if "epochs" in keep and "warmup_epochs" not in keep:
        values["warmup_epochs"] = (float(values["warmup_epochs"]) * config.epochs
                                   / float(values["epochs"]))
    return dataclasses.replace(config, **{k: v for k, v in values.items() if k not in keep})
