"""K small models (mlp, cnn) trained at once in one program, with stacked weights.

One `EnsembleTrainer` holds one compiled TensorFlow program for a fixed number of
models K, reused for every group of K runs: variables and optimizer state are
re-assigned, not re-created, so the program is traced and compiled once per process.
The whole epoch loop is one XLA program (dense models gain from it on a CPU), and it
trains the K models M at a time (`core.Trainer._train_epoch_in_chunks`): ``chunk_models``,
or when 0 as many as keep their weights and velocities in one core's L2 cache
(`auto_chunk_models`). All else is the skeleton's (`heldout.training.core.Trainer`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from heldout.models import ensemble as ensemble_lib
from heldout.models import registry
from heldout.training import core
from heldout.training.config import MIN_CHUNK_MODELS

# Programs hold at least this many models (a smaller K is padded). XLA:CPU vectorizes the
# reductions over a batch (bias gradients) differently below 4 models, so a run trained
# in a group of 1-3 differed in its last bits from the same run in a larger group. With
# the floor, and the cross-entropy summed over classes in one fixed order
# (`heldout.training.losses`: TensorFlow's op changed order at 52 digits MLPs), a run's
# arrays are bit-identical whatever K and whatever chunk size (tested in
# tests/training/test_ensemble.py: mlp at K = 4, 5, 64, 250 and in chunks; cnn at K = 4, 8).
_MIN_PROGRAM_MODELS = 4

# L2 cache of one core when the system does not say (/sys/devices/system/cpu).
_FALLBACK_L2_BYTES = 1 << 20


def l2_cache_bytes(folder: str = "/sys/devices/system/cpu/cpu0/cache") -> int:
    """Bytes of one core's L2 cache, from Linux's sysfs (`_FALLBACK_L2_BYTES` if unread):
    the ``index*`` entry of `folder` whose ``level`` is 2 and ``type`` Data or Unified,
    its ``size`` such as ``1024K``."""
    try:
        for index in sorted(os.listdir(folder)):
            fields = {}
            for name in ("level", "type", "size"):
                with open(os.path.join(folder, index, name)) as f:
                    fields[name] = f.read().strip()
            if fields["level"] == "2" and fields["type"] in ("Data", "Unified"):
                size = fields["size"]
                scale = {"K": 1 << 10, "M": 1 << 20}.get(size[-1:], 1)
                return int(size.rstrip("KM")) * scale
    except (OSError, ValueError):
        pass
    return _FALLBACK_L2_BYTES


def auto_chunk_models(num_models: int, parameters_per_model: int,
                      cache_bytes: int | None = None) -> int:
    """Models per optimizer step when ``chunk_models`` is 0: as many as keep their float32
    weights and velocities within one core's L2 cache (two programs run side by side, one
    per core), as a divisor of K where one is at least half that many.

    K (`num_models`) itself, i.e. no chunks, when fewer than `MIN_CHUNK_MODELS` fit (one
    model's state already spills, so chunks cannot keep it in the cache) or all K fit.
    For the digits MLP (9,610 parameters) and a 1 MiB L2: 13 fit, so K = 250 trains in
    chunks of 10, the fastest of 8 ... 50 measured (benchmarks/vectorized_training.py);
    cnn on digits (71,754 parameters): no chunks. Runs do not depend on this choice.
    """
    cache = l2_cache_bytes() if cache_bytes is None else cache_bytes
    fit = cache // (8 * parameters_per_model)
    if fit < MIN_CHUNK_MODELS or fit >= num_models:
        return num_models
    divisors = [d for d in range(MIN_CHUNK_MODELS, fit + 1) if num_models % d == 0]
    return divisors[-1] if divisors and 2 * divisors[-1] >= fit else fit


class EnsembleTrainer(core.Trainer):
    """Trains groups of `config.models_at_once` runs of an ensemble model in one program."""

    kind = "ensemble"

    def _group_size(self) -> int:
        """K, at least `_MIN_PROGRAM_MODELS`, and with chunks a multiple of their size.

        Decides the chunk size too (`_chunk_size` returns it): ``config.chunk_models``,
        or when 0 `auto_chunk_models` from the size of one model (under XLA; without it,
        whose speed in chunks was not measured, all K)."""
        models = max(self.config.models_at_once, _MIN_PROGRAM_MODELS)
        chunk = self.config.chunk_models or (0 if self.config.xla else models)
        if not chunk:
            one = self._build_model(1)
            parameters = sum(v.shape.num_elements() for v in one.trainable_variables)
            chunk = auto_chunk_models(models, parameters)
        self._chunk = min(chunk, models)
        return -(-models // self._chunk) * self._chunk

    def _chunk_size(self) -> int:
        """Models per optimizer step, as `_group_size` decided (K: no chunks)."""
        return self._chunk

    def _build_model(self, num_models: int | None = None) -> tf.Module:
        config = self.config
        model = registry.build_ensemble(config.model, self.dataset.num_classes,
                                        num_models or self.num_models, config.model_width)
        model(tf.zeros([1, 1, *self.dataset.input_shape]))  # creates the variables
        return model

    def _initialize(self, subsets: Sequence[np.ndarray],
                    init_seeds: Sequence[np.random.SeedSequence]) -> None:
        """Model k's weights drawn from its own init seed (`ensemble.initial_values`)."""
        del subsets
        rngs = [np.random.default_rng(s) for s in init_seeds]
        for variable in self._variables:
            variable.assign(ensemble_lib.initial_values(variable, rngs))
