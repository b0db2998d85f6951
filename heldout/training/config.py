"""`TrainConfig`: how every run of an experiment is trained, validated on construction.

Every field is honoured by the trainer of its model or refused here with a one-line
`ValueError` naming the flag (the fields are ``train.py``'s flags). What each field does
for each trainer kind (`heldout.models.registry.TRAINER_KINDS`):

* ``model_width``: scales the layer widths of every model (mlp, cnn: hidden sizes and
  channels, rounded); resnet50 has only width 1.
* ``epochs`` ... ``label_smoothing``, ``augment``, ``checkpoint_every``: the one
  training skeleton (`heldout.training.core.Trainer`) applies them to every kind.
  ``augment`` needs image inputs ``[H, W, C]`` (refused by the trainer otherwise).
* ``models_at_once``: speed only; a run's arrays are bit-identical whatever runs share
  its group and whatever K (every group runs the one program of K models, padded; the
  cross-entropy sums classes in a fixed order, `heldout.training.losses`; tested with
  K = 4, 5, 64, 250). Kinds trained one run per program (small_inception, resnet50)
  refuse any K but 1.
* ``concurrent_programs``: speed only; that many programs of K runs train side by side
  in threads (`heldout.training.concurrent`), each run still in a program of K, so its
  arrays are bit-identical whatever this number. 0: 2 for mlp and cnn, 1 for the
  others, which refuse more (their mixed precision patches Sonnet classes globally).
* ``chunk_models``: speed only: M >= 4 trains the K models of a program M at a time,
  each chunk through the whole epoch while its weights and activations stay in the
  processor's cache (K is rounded up to a multiple of M; M >= K: all K in every step);
  0 (default): automatic, as many as keep their weights and velocities in one core's L2
  cache (`heldout.training.ensemble.auto_chunk_models`: 10 of the 250 digits MLPs, no
  chunks for cnn). A run's arrays are bit-identical whatever M (tested). mlp and cnn
  only; the other kinds refuse any M but 0.
* ``xla``: speed mostly: XLA's kernels and TensorFlow's own differ in float32 round-off
  (measured 2.7e-7 to 4.8e-7 on margins of the digits MLP and CNN), so a run trained with
  and without XLA agrees to about 1e-6, not bit for bit. Keep one value per experiment.
* ``precision``: mixed precision for the image models with batch normalization
  (small_inception, resnet50, airbench); refused for mlp and cnn.
* ``test_time_flip``: for small_inception, resnet50 and airbench; refused for mlp, cnn.
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf

from heldout.data import augment as augment_lib
from heldout.models import registry

LR_SCHEDULES = ("cosine", "linear", "constant")  # decays after a warm-up from zero
# All schedules: those, and airbench94's "triangle": linear from TRIANGLE_START * peak at
# step 0 to the peak at the end of warm-up, then linear to TRIANGLE_END * peak at the end.
ALL_LR_SCHEDULES = (*LR_SCHEDULES, "triangle")
TRIANGLE_START = 0.2
TRIANGLE_END = 0.07

PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
COMPUTE_DTYPES = {"float32": tf.float32, "mixed_bfloat16": tf.bfloat16,
                  "mixed_float16": tf.float16}


# Chunks hold at least as many models as a program (`heldout.training.ensemble`).
MIN_CHUNK_MODELS = 4

# Programs of the K-at-once small models trained side by side by default. Their steps are
# chains of small matrix products and memory-bound elementwise passes, each too short to
# keep both cores busy; two programs interleave (2-core AVX2 machine: 1.11x faster over
# 1000 digits runs, 1.17x after compilation; benchmarks/vectorized_training.py, arm (c)).
# Every program holds K runs, so a run's numbers do not depend on this number.
AUTO_CONCURRENT_PROGRAMS = 2


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How every run of an experiment is trained (see the module docstring per field)."""

    model: str = "mlp"  # a name in models.registry.MODELS
    model_width: float = 1.0  # multiplier of layer widths (1: the registered widths)
    epochs: int = 20  # passes over each run's own subset
    batch_size: int = 64  # examples per model per optimizer step
    learning_rate: float = 0.1  # peak learning rate, per optimizer step
    momentum: float = 0.9
    nesterov: bool = False  # Nesterov momentum instead of heavy-ball
    weight_decay: float = 5e-4  # L2 coefficient added to the gradient of decayed variables
    lr_schedule: str = "cosine"  # decay after warm-up: one of ALL_LR_SCHEDULES
    warmup_epochs: float = 1.0  # linear warm-up from 0 to learning_rate
    label_smoothing: float = 0.0  # weight of the uniform distribution in the targets
    augment: str = "none"  # batch augmentation of image inputs: one of augment.AUGMENTATIONS
    checkpoint_every: int = 0  # with checkpoints: also save every this many epochs (TracIn)
    models_at_once: int = 250  # K: runs trained together in one program (speed only)
    concurrent_programs: int = 0  # programs of K runs trained side by side (0: auto; speed only)
    chunk_models: int = 0  # M: an optimizer step trains M of the K models (0: auto; speed)
    xla: bool = True  # compile the training program with XLA (speed only)
    precision: str = "float32"  # compute type of training steps: one of PRECISIONS
    test_time_flip: bool = False  # record predictions averaged with the mirrored image's

    def __post_init__(self):
        positive = {"epochs": self.epochs, "batch_size": self.batch_size,
                    "learning_rate": self.learning_rate,
                    "models_at_once": self.models_at_once}
        for name, value in positive.items():
            if not value > 0:
                raise ValueError(f"--{name}={value}: expected a positive number")
        if self.concurrent_programs < 0:
            raise ValueError(f"--concurrent_programs={self.concurrent_programs}: expected 0 "
                             "(auto) or a positive number")
        if self.concurrent_programs > 1 and self.spec.trainer != "ensemble":
            raise ValueError(f"--concurrent_programs={self.concurrent_programs}: only the "
                             "K-at-once small models (mlp, cnn) train programs side by side; "
                             f"--model={self.model} takes 0 or 1")
        if self.chunk_models < 0 or 0 < self.chunk_models < MIN_CHUNK_MODELS:
            raise ValueError(f"--chunk_models={self.chunk_models}: expected 0 (automatic) or at "
                             f"least {MIN_CHUNK_MODELS}")
        if self.chunk_models and self.spec.trainer != "ensemble":
            raise ValueError(f"--chunk_models={self.chunk_models}: only the K-at-once small "
                             f"models (mlp, cnn) train in chunks; --model={self.model} takes 0")
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"--momentum={self.momentum}: expected a number in [0, 1)")
        if self.weight_decay < 0:
            raise ValueError(f"--weight_decay={self.weight_decay}: expected >= 0")
        if self.warmup_epochs < 0 or self.warmup_epochs > self.epochs:
            raise ValueError(f"--warmup_epochs={self.warmup_epochs}: expected a number "
                             f"in [0, epochs={self.epochs}]")
        if self.lr_schedule not in ALL_LR_SCHEDULES:
            raise ValueError(f"--lr_schedule={self.lr_schedule!r}: expected one of "
                             f"{', '.join(ALL_LR_SCHEDULES)}")
        if self.checkpoint_every < 0:
            raise ValueError(f"--checkpoint_every={self.checkpoint_every}: expected >= 0")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"--label_smoothing={self.label_smoothing}: expected a number "
                             "in [0, 1)")
        if self.augment not in augment_lib.AUGMENTATIONS:
            raise ValueError(f"--augment={self.augment}: expected one of "
                             f"{', '.join(augment_lib.AUGMENTATIONS)}")
        if self.model not in registry.MODELS:
            raise ValueError(f"--model={self.model!r} is not a known model: expected one of "
                             f"{', '.join(sorted(registry.MODELS))}")
        if not self.model_width > 0:
            raise ValueError(f"--model_width={self.model_width}: expected a positive number")
        if self.model == "resnet50" and self.model_width != 1.0:
            raise ValueError(f"--model_width={self.model_width}: resnet50 has only the "
                             "published width 1")
        if self.precision not in PRECISIONS:
            raise ValueError(f"--precision={self.precision}: expected one of "
                             f"{', '.join(PRECISIONS)}")
        ensemble_models = sorted(n for n, s in registry.MODELS.items() if s.trainer == "ensemble")
        if self.spec.trainer == "ensemble" and self.precision != "float32":
            raise ValueError(f"--precision={self.precision}: the K-at-once models "
                             f"({', '.join(ensemble_models)}) train in float32; "
                             "mixed precision is for small_inception, resnet50 and airbench")
        if self.spec.trainer == "ensemble" and self.test_time_flip:
            raise ValueError(f"--test_time_flip: only for image models (small_inception, "
                             f"resnet50, airbench), not --model={self.model}")

    @property
    def spec(self) -> registry.ModelSpec:
        """The registry entry of `model`."""
        return registry.get(self.model)

    @property
    def programs(self) -> int:
        """Programs trained side by side: `concurrent_programs`, or when 0 (auto)
        `AUTO_CONCURRENT_PROGRAMS` for the K-at-once small models and 1 for the others."""
        if self.concurrent_programs:
            return self.concurrent_programs
        return AUTO_CONCURRENT_PROGRAMS if self.spec.trainer == "ensemble" else 1

    @property
    def one_model_at_a_time(self) -> bool:
        """Whether the model trains one run per program."""
        return self.spec.trainer == "single"
