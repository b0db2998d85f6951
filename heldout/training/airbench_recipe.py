"""airbench94's published training recipe as data (no TensorFlow: settings are checked
before it loads); the network is `heldout.models.airbench`, the trainer
`heldout.training.airbench`."""

from __future__ import annotations

from heldout.training.config import TRIANGLE_END, TRIANGLE_START

# Optimizer: Nesterov SGD on the cross-entropy summed (not averaged) over the batch.
BATCH_SIZE = 1024  # examples per optimizer step
EPOCHS = 10  # passes over the run's subset (published: 9.9)
LEARNING_RATE = 11.5  # per 1024 examples, decoupled from momentum (airbench's unit)
MOMENTUM = 0.85  # Nesterov
WEIGHT_DECAY = 0.0153  # per 1024 examples, decoupled from the learning rate
LABEL_SMOOTHING = 0.2  # weight of the uniform distribution in the targets
# Learning-rate schedule ("triangle"): from LR_START x the peak at step 0 up to the peak
# at LR_WARMUP_FRACTION of all steps, then linearly down to LR_END x the peak.
LR_START = TRIANGLE_START  # 0.2
LR_END = TRIANGLE_END  # 0.07
LR_WARMUP_FRACTION = 0.23  # of all optimizer steps
# Augmentation: reflect-pad 2 pixels and translate at random, flips alternating by epoch.
AUGMENT = "airbench"


def sgd_learning_rate(learning_rate: float = LEARNING_RATE, momentum: float = MOMENTUM) -> float:
    """`learning_rate` (per 1024 examples, decoupled) as a rate per optimizer step.

    With Nesterov momentum and constant gradients a step moves ``1 + 1 / (1 - momentum)``
    gradients' worth, so airbench divides by that (and by 1024, as its loss is a sum).
    """
    return learning_rate / (1024 * (1 + 1 / (1 - momentum)))


def recipe() -> dict[str, object]:
    """The airbench94 recipe as `training.TrainConfig` values.

    ``learning_rate`` is per optimizer step on the summed loss and ``weight_decay`` the
    L2 coefficient added to the gradient (``WEIGHT_DECAY * BATCH_SIZE / LEARNING_RATE``),
    so that ``learning_rate * weight_decay`` is airbench's decoupled decay per step.
    """
    return {
        "epochs": EPOCHS, "batch_size": BATCH_SIZE, "learning_rate": sgd_learning_rate(),
        "momentum": MOMENTUM, "nesterov": True,
        "weight_decay": WEIGHT_DECAY * BATCH_SIZE / LEARNING_RATE,
        "lr_schedule": "triangle", "warmup_epochs": LR_WARMUP_FRACTION * EPOCHS,
        "label_smoothing": LABEL_SMOOTHING, "augment": AUGMENT, "models_at_once": 1,
    }
