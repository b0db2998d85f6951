"""The one table of models: a model is added here and nowhere else.

Each `ModelSpec` says how to build the model's two forms (the single model a checkpoint
holds, and the K-at-once form a trainer runs, if any), which trainer kind trains it,
and the name of its published recipe (`heldout.training.recipes.RECIPES`), if any. The
training layer chooses its trainer from ``trainer`` and its recipe from ``recipe``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the table itself imports no TensorFlow: settings check without it
    import sonnet as snt

# Trainer kinds: "ensemble" (K at once, stacked weights), "single" (one run per program,
# batch normalization), "airbench" (K at once with grouped convolutions, its own recipe).
TRAINER_KINDS = ("ensemble", "single", "airbench")

MLP_HIDDEN = (128,)  # hidden layer sizes of the mlp at width 1
CNN_CHANNELS = (16, 32)  # channels of the cnn's two convolutions at width 1
CNN_HIDDEN = 128  # the cnn's hidden linear layer at width 1


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """How a registered model is built, trained and configured.

    Attributes:
        name: the model's name (``--model``).
        build_single: ``(num_classes, width) -> module``, the single model, called as
            ``model(images [batch, ...], is_training) -> [batch, num_classes]``.
        build_ensemble: ``(num_classes, num_models, width) -> module``, K models at once,
            called as ``model(images [K|1, batch, ...], is_training) -> [K, batch, classes]``
            with ``export(k, input_shape)``; None for models trained one at a time.
        trainer: one of `TRAINER_KINDS`.
        recipe: name of the model's published recipe, or None.
        needs_images: whether inputs must be images ``[H, W, C]``.
        has_widths: whether ``width`` scales the model (else only width 1 exists).
    """

    name: str
    build_single: Callable[[int, float], snt.Module]
    build_ensemble: Callable[[int, int, float], snt.Module] | None
    trainer: str
    recipe: str | None = None
    needs_images: bool = True
    has_widths: bool = True


def _scaled(sizes: tuple[int, ...], width: float) -> tuple[int, ...]:
    """Layer sizes multiplied by `width`, rounded, at least 1."""
    return tuple(max(1, round(size * width)) for size in sizes)


def _mlp(num_classes: int, width: float) -> snt.Module:
    from heldout.models import ensemble

    return ensemble.MLP(_scaled(MLP_HIDDEN, width), num_classes)


def _mlps(num_classes: int, num_models: int, width: float) -> snt.Module:
    from heldout.models import ensemble

    return ensemble.EnsembleMLP(_scaled(MLP_HIDDEN, width), num_classes, num_models)


def _cnn(num_classes: int, width: float) -> snt.Module:
    from heldout.models import ensemble

    return ensemble.CNN(_scaled(CNN_CHANNELS, width), _scaled((CNN_HIDDEN,), width)[0],
                        num_classes)


def _cnns(num_classes: int, num_models: int, width: float) -> snt.Module:
    from heldout.models import ensemble

    return ensemble.EnsembleCNN(_scaled(CNN_CHANNELS, width),
                                _scaled((CNN_HIDDEN,), width)[0], num_classes, num_models)


def _small_inception(num_classes: int, width: float) -> snt.Module:
    from heldout.models.small_inception import SmallInception

    return SmallInception(num_classes, width_multiplier=width)


def _resnet50(num_classes: int, width: float) -> snt.Module:
    import sonnet as snt

    if width != 1.0:
        raise ValueError(f"width={width}: resnet50 has only the published width 1")
    return snt.nets.ResNet50(num_classes=num_classes)


def _airbench(num_classes: int, num_models: int, width: float) -> snt.Module:
    import tensorflow as tf

    from heldout.models.airbench import Airbench

    on_gpu = bool(tf.config.list_physical_devices("GPU"))
    return Airbench(num_classes, num_models, width,
                    grouped="native" if on_gpu or num_models == 1 else "split")


MODELS: dict[str, ModelSpec] = {spec.name: spec for spec in (
    ModelSpec("mlp", build_single=_mlp, build_ensemble=_mlps, trainer="ensemble",
              needs_images=False),
    ModelSpec("cnn", build_single=_cnn, build_ensemble=_cnns, trainer="ensemble"),
    ModelSpec("small_inception", build_single=_small_inception, build_ensemble=None,
              trainer="single", recipe="small_inception"),
    ModelSpec("resnet50", build_single=_resnet50, build_ensemble=None, trainer="single",
              has_widths=False),
    ModelSpec("airbench", build_single=lambda c, w: _airbench(c, 1, w),
              build_ensemble=_airbench, trainer="airbench", recipe="airbench"),
)}


def get(name: str) -> ModelSpec:
    """The spec of the model registered as `name`.

    Raises:
        ValueError: `name` is not registered (names the known models).
    """
    if name not in MODELS:
        raise ValueError(f"model={name!r} is not a known model: expected one of "
                         f"{', '.join(sorted(MODELS))}")
    return MODELS[name]


def build_single(name: str, num_classes: int, width: float = 1.0) -> snt.Module:
    """The single model `name` (what its checkpoints hold); variables created on first call."""
    return get(name).build_single(num_classes, width)


def build_ensemble(name: str, num_classes: int, num_models: int,
                   width: float = 1.0) -> snt.Module:
    """K = `num_models` models `name` at once.

    Raises:
        ValueError: unknown name, or the model is trained one at a time.
    """
    spec = get(name)
    if spec.build_ensemble is None:
        raise ValueError(f"model={name!r} has no K-at-once form: it trains one at a time")
    return spec.build_ensemble(num_classes, num_models, width)
