"""Several programs of K runs trained side by side, one thread each.

A K-at-once step of the small models is a chain of short operations: batched products
of 64 x 64 x 128 matrices, products with a 10-wide head, and elementwise passes over
tensors larger than the cache. Each is too short to keep both cores of a small machine
busy, and the thread pool waits between them. A second program, training the next
group of runs at the same time, fills some of those gaps: on a 2-core AVX2 machine,
1000 digits runs took 1.11x less time with two programs than with one (1.17x after the
first call, which compiles; `benchmarks/vectorized_training.py`, arm (c)).

Every program is a whole trainer of its own for K runs (its own variables, its own
compiled program), so each run is trained exactly as it would be in one program of K:
its arrays are bit-identical whatever the number of programs. The trainer kinds that
train one large model at a time do not take part (`TrainConfig.concurrent_programs`).
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Callable, Sequence

import numpy as np

from heldout.training import core


class ConcurrentTrainer:
    """Trains up to ``P * K`` runs at once as P groups of K in side-by-side programs.

    It has the interface `heldout.training.experiment` uses of a `core.Trainer`:
    `num_models` (runs per call), `steps_per_epoch` and `train`.
    """

    def __init__(self, trainers: Sequence[core.Trainer]):
        if not trainers:
            raise ValueError("a concurrent trainer needs at least one trainer")
        self.trainers = list(trainers)
        self.num_models = sum(t.num_models for t in self.trainers)

    def steps_per_epoch(self, subset_size: int) -> int:
        """Optimizer steps per epoch of a run that trains on `subset_size` examples."""
        return self.trainers[0].steps_per_epoch(subset_size)

    def train(self, subsets: Sequence[np.ndarray], init_seeds: Sequence[np.random.SeedSequence],
              order_seeds: Sequence[np.random.SeedSequence], save_logits: bool = False,
              export_models: bool = False, steps_per_epoch: Sequence[int] | None = None,
              on_epoch: Callable[[int], None] | None = None,
              example_weights: Sequence[np.ndarray] | None = None) -> list[core.TrainedRun]:
        """`core.Trainer.train` over up to `num_models` runs: the first K go to the first
        program, the next K to the second, and so on; only as many programs run as
        there are groups. `on_epoch` is called once per epoch, when every program has
        finished it.

        Raises:
            ValueError: no runs, or more than `num_models`.
        """
        num_runs = len(subsets)
        if not 0 < num_runs <= self.num_models:
            raise ValueError(f"a group holds 1 to {self.num_models} runs, got {num_runs}")
        parts, start = [], 0
        for trainer in self.trainers:
            if start >= num_runs:
                break
            parts.append((trainer, slice(start, start + trainer.num_models)))
            start += trainer.num_models
        report = _EpochBarrier(len(parts), on_epoch)

        def run(trainer: core.Trainer, part: slice) -> list[core.TrainedRun]:
            return trainer.train(
                subsets[part], init_seeds[part], order_seeds[part], save_logits=save_logits,
                export_models=export_models,
                steps_per_epoch=None if steps_per_epoch is None else steps_per_epoch[part],
                on_epoch=report,
                example_weights=None if example_weights is None else example_weights[part])

        if len(parts) == 1:
            return run(*parts[0])
        with concurrent.futures.ThreadPoolExecutor(len(parts)) as pool:
            futures = [pool.submit(run, trainer, part) for trainer, part in parts]
            return [result for future in futures for result in future.result()]


class _EpochBarrier:
    """Calls `on_epoch` once per epoch: when the last of `parts` programs reports it."""

    def __init__(self, parts: int, on_epoch: Callable[[int], None] | None):
        self.parts = parts
        self.on_epoch = on_epoch
        self.reports = 0
        self.lock = threading.Lock()

    def __call__(self, steps: int) -> None:
        if self.on_epoch is None:
            return
        with self.lock:
            self.reports += 1
            if self.reports % self.parts:
                return
        self.on_epoch(steps)
