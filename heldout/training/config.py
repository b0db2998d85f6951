"""`TrainConfig`: how every run of an experiment is trained, validated on construction.

Every field is honoured by the trainer of its model or refused here with a one-line
`heldout.errors.ParameterError` naming the field (the fields are ``train.py``'s flags;
the front door maps a field to its flag). Validation imports no TensorFlow, so a bad
setting is reported before it loads; floats must be finite. What each field does
for each trainer kind (`heldout.models.registry.TRAINER_KINDS`):

* ``model_width``: scales the layer widths of every model (mlp, cnn: hidden sizes and
  channels, rounded); models without widths (resnet50) refuse any width but 1.
* ``epochs`` ... ``label_smoothing``, ``augment``, ``checkpoint_every``: the one
  training skeleton (`heldout.training.core.Trainer`) applies them to every kind.
  ``augment`` needs image inputs ``[H, W, C]`` (refused by the trainer otherwise).
* ``models_at_once``: speed only; a run's arrays are bit-identical whatever runs share
  its group and whatever K (every group runs the one program of K models, padded; the
  cross-entropy sums classes in a fixed order, `heldout.training.losses`; tested with
  K = 4, 5, 64, 250). None (the default): `DEFAULT_MODELS_AT_ONCE` for the K-at-once
  kinds, 1 for kinds trained one run per program (small_inception, resnet50), which
  refuse any other K.
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
import math
from typing import Any

from heldout.data.augment_kinds import AUGMENTATIONS
from heldout.errors import ParameterError
from heldout.models import registry

LR_SCHEDULES = ("cosine", "linear", "constant")  # decays after a warm-up from zero
# All schedules: those, and airbench94's "triangle": linear from TRIANGLE_START * peak at
# step 0 to the peak at the end of warm-up, then linear to TRIANGLE_END * peak at the end.
ALL_LR_SCHEDULES = (*LR_SCHEDULES, "triangle")
TRIANGLE_START = 0.2
TRIANGLE_END = 0.07

PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
_COMPUTE_DTYPE_NAMES = {"float32": "float32", "mixed_bfloat16": "bfloat16",
                        "mixed_float16": "float16"}


def __getattr__(name: str) -> Any:
    """``COMPUTE_DTYPES`` (precision -> TensorFlow dtype), made on first use so that
    importing this module (and checking settings) loads no TensorFlow."""
    if name == "COMPUTE_DTYPES":
        import tensorflow as tf

        return {p: tf.as_dtype(d) for p, d in _COMPUTE_DTYPE_NAMES.items()}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# Chunks hold at least as many models as a program (`heldout.training.ensemble`).
MIN_CHUNK_MODELS = 4

# Programs of the K-at-once small models trained side by side by default. Their steps are
# chains of small matrix products and memory-bound elementwise passes, each too short to
# keep both cores busy; two programs interleave (2-core AVX2 machine: 1.11x faster over
# 1000 digits runs, 1.17x after compilation; benchmarks/vectorized_training.py, arm (c)).
# Every program holds K runs, so a run's numbers do not depend on this number.
AUTO_CONCURRENT_PROGRAMS = 2

# K of the kinds trained K at once when `models_at_once` is not given.
DEFAULT_MODELS_AT_ONCE = 250


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How every run of an experiment is trained (see the module docstring per field).

    Raises:
        ParameterError: a field this model's trainer cannot honour, or an invalid value
            (naming the field).
    """

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
    augment: str = "none"  # batch augmentation of image inputs: one of AUGMENTATIONS
    checkpoint_every: int = 0  # with checkpoints: also save every this many epochs (TracIn)
    # K: runs trained together in one program (speed only); None: the model's kind's
    # (DEFAULT_MODELS_AT_ONCE, or 1 for models trained one run per program).
    models_at_once: int | None = None
    concurrent_programs: int = 0  # programs of K runs trained side by side (0: auto; speed only)
    chunk_models: int = 0  # M: an optimizer step trains M of the K models (0: auto; speed)
    xla: bool = True  # compile the training program with XLA (speed only)
    precision: str = "float32"  # compute type of training steps: one of PRECISIONS
    test_time_flip: bool = False  # record predictions averaged with the mirrored image's

    def __post_init__(self):
        if self.model not in registry.MODELS:
            raise ParameterError("model", "not a known model: expected one of "
                                 f"{', '.join(sorted(registry.MODELS))}", repr(self.model))
        spec = self.spec
        if self.models_at_once is None:  # resolved here: the one owner of this default
            object.__setattr__(self, "models_at_once",
                               1 if spec.trainer == "single" else DEFAULT_MODELS_AT_ONCE)
        for name in ("model_width", "learning_rate", "momentum", "weight_decay",
                     "warmup_epochs", "label_smoothing"):
            value = getattr(self, name)
            if not math.isfinite(value):
                raise ParameterError(name, "expected a finite number", value)
        for name in ("epochs", "batch_size", "learning_rate", "models_at_once"):
            value = getattr(self, name)
            if not value > 0:
                raise ParameterError(name, "expected a positive number", value)
        if self.models_at_once != 1 and spec.trainer == "single":
            raise ParameterError("models_at_once", f"model={self.model} trains one run per "
                                 "program; leave models_at_once out or give 1",
                                 self.models_at_once)
        if self.concurrent_programs < 0:
            raise ParameterError("concurrent_programs", "expected 0 (auto) or a positive "
                                 "number", self.concurrent_programs)
        if self.concurrent_programs > 1 and spec.trainer != "ensemble":
            raise ParameterError("concurrent_programs", "only the K-at-once small models "
                                 "(mlp, cnn) train programs side by side; "
                                 f"model={self.model} takes 0 or 1", self.concurrent_programs)
        if self.chunk_models < 0 or 0 < self.chunk_models < MIN_CHUNK_MODELS:
            raise ParameterError("chunk_models", "expected 0 (automatic) or at least "
                                 f"{MIN_CHUNK_MODELS}", self.chunk_models)
        if self.chunk_models and spec.trainer != "ensemble":
            raise ParameterError("chunk_models", "only the K-at-once small models (mlp, cnn) "
                                 f"train in chunks; model={self.model} takes 0",
                                 self.chunk_models)
        if not 0.0 <= self.momentum < 1.0:
            raise ParameterError("momentum", "expected a number in [0, 1)", self.momentum)
        if self.weight_decay < 0:
            raise ParameterError("weight_decay", "expected >= 0", self.weight_decay)
        if self.warmup_epochs < 0 or self.warmup_epochs > self.epochs:
            raise ParameterError("warmup_epochs", f"expected a number in [0, epochs="
                                 f"{self.epochs}]", self.warmup_epochs)
        if self.lr_schedule not in ALL_LR_SCHEDULES:
            raise ParameterError("lr_schedule", "expected one of "
                                 f"{', '.join(ALL_LR_SCHEDULES)}", repr(self.lr_schedule))
        if self.checkpoint_every < 0:
            raise ParameterError("checkpoint_every", "expected >= 0", self.checkpoint_every)
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ParameterError("label_smoothing", "expected a number in [0, 1)",
                                 self.label_smoothing)
        if self.augment not in AUGMENTATIONS:
            raise ParameterError("augment", f"expected one of {', '.join(AUGMENTATIONS)}",
                                 self.augment)
        if not self.model_width > 0:
            raise ParameterError("model_width", "expected a positive number",
                                 self.model_width)
        if not spec.has_widths and self.model_width != 1.0:
            raise ParameterError("model_width", f"{self.model} has only the published "
                                 "width 1", self.model_width)
        if self.precision not in PRECISIONS:
            raise ParameterError("precision", f"expected one of {', '.join(PRECISIONS)}",
                                 self.precision)
        ensemble_models = sorted(n for n, s in registry.MODELS.items() if s.trainer == "ensemble")
        if spec.trainer == "ensemble" and self.precision != "float32":
            raise ParameterError("precision", f"the K-at-once models "
                                 f"({', '.join(ensemble_models)}) train in float32; mixed "
                                 "precision is for small_inception, resnet50 and airbench",
                                 self.precision)
        if spec.trainer == "ensemble" and self.test_time_flip:
            raise ParameterError("test_time_flip", "only for image models (small_inception, "
                                 f"resnet50, airbench), not model={self.model}")

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


def check_streamable(config: TrainConfig) -> None:
    """Refuses settings that cannot apply to runs trained on streamed records
    (`heldout.training.streaming`): models trained K at once, and ``augment`` (the
    streamed pipeline has its own, published, augmentation).

    Raises:
        ParameterError: naming ``model`` or ``augment``.
    """
    if config.spec.trainer != "single":
        raise ParameterError("model", "streamed training is for the models trained one at "
                             "a time (small_inception, resnet50)", config.model)
    if config.augment != "none":
        raise ParameterError("augment", "streamed training applies the published "
                             "random-resized crop and flip; use augment=none", config.augment)
