"""The names of the batch augmentations of `heldout.data.augment`, without TensorFlow.

Settings (`heldout.training.config.TrainConfig`) are checked against these names before
TensorFlow loads, so a bad ``--augment`` is reported within a second.
"""

AUGMENTATIONS = ("none", "flip", "crop_flip", "altflip", "crop_altflip", "crop_flip_cutout",
                 "airbench")
# Kinds whose flips alternate by epoch: they need the `flips` of `alternating_flips`.
ALTERNATING = ("altflip", "crop_altflip", "airbench")
