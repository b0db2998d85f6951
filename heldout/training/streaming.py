"""Training runs whose data set does not fit in memory, streamed from indexed TFRecords.

`StreamingTrainer` is the one-model-at-a-time trainer (`heldout.training.single`) fed by
`tf.data` instead of in-memory arrays; the skeleton (`heldout.training.core.Trainer.train`)
does everything else as for any run: re-initialization from the run's seed, warm-up and
learning-rate schedule, the optimizer step (`Trainer._train_step_on_batch`), snapshots
and export. Per run:

* Subset: the records whose ``index`` is in the run's subset (`heldout.store.designs`,
  the same indices as in memory), kept by a membership lookup in `tf.data` before the
  JPEG is decoded.
* Order and augmentation: files and records shuffled, and every example cropped at
  random (8%-100% of the area, aspect 3/4-4/3) and flipped, all seeded by the run's
  augmentation seed and the epoch (`heldout.data.imagenet.imagenet_dataset` with
  ``training=True``: the published training preprocessing). An epoch has the
  skeleton's ``ceil(subset / batch_size)`` full batches: the stream starts over
  (reshuffled) to fill the last one, as the in-memory order wraps around.
* Predictions: every train and test record streamed once with the evaluation
  preprocessing (center crop), placed by its ``index``, so the aux arrays are exactly
  those of an in-memory run (`heldout.store.runs.aux_arrays`).

Settings that cannot apply when streaming are refused: ``augment`` (the streamed
pipeline has its own, published, augmentation) and models trained K at once.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from heldout.data.dataset import Dataset
from heldout.data.imagenet import StreamingData
from heldout.models.predict import Predictions, prediction_arrays
from heldout.training import single
from heldout.training.config import TrainConfig, check_streamable


class StreamingTrainer(single.SingleModelTrainer):
    """Trains one run at a time on records streamed from `StreamingData`."""

    takes_example_weights = False  # records are streamed, not gathered by index

    def __init__(self, data: StreamingData, config: TrainConfig,
                 eval_batch_size: int | None = None):
        check_streamable(config)
        self.data = data
        # The skeleton reads shapes and classes from a Dataset: one with no examples.
        empty = np.zeros((0, *data.input_shape), np.float32)
        labels = np.zeros(0, np.int64)
        super().__init__(Dataset(data.name, empty, labels, empty, labels, data.num_classes),
                         config, eval_batch_size)
        self._members = np.zeros(data.num_train, bool)
        self._batch_step = tf.function(self._train_step_on_batch, jit_compile=config.xla,
                                       reduce_retracing=True, autograph=False)
        self._train_epoch = self._stream_epoch

    def _initialize(self, subsets: Sequence[np.ndarray],
                    init_seeds: Sequence[np.random.SeedSequence]) -> None:
        (subset,) = subsets
        self._members = np.zeros(self.data.num_train, bool)
        self._members[subset] = True
        super()._initialize(subsets, init_seeds)

    def _stream_epoch(self, batches: tf.Tensor, epoch: tf.Tensor, steps_per_epoch: tf.Tensor,
                      warmup_steps: tf.Tensor, augment_seeds: tf.Tensor,
                      phases: tf.Tensor | None, all_active: bool = False) -> None:
        """One epoch of streamed batches; of the skeleton's index `batches` only their
        number is used (records cannot be read by index), `phases` is None (no
        ``augment``)."""
        del phases
        seed = int(np.random.SeedSequence(
            [*augment_seeds.numpy()[0].tolist(), int(epoch)]).generate_state(1)[0])
        stream = self.data.dataset(
            "train", self.config.batch_size, training=True, seed=seed,
            member_mask=self._members, repeat=True, drop_remainder=True)
        for i, (images, labels, _) in enumerate(stream.take(int(batches.shape[0]))):
            self._batch_step(images[None], tf.cast(labels, tf.int32)[None],
                             tf.constant(i, tf.int32), epoch, steps_per_epoch, warmup_steps,
                             all_active)

    def _predict_splits(self, save_logits: bool
                        ) -> tuple[list[Predictions], list[Predictions], None]:
        return ([self._predict_stream("train", save_logits)],
                [self._predict_stream("test", save_logits)], None)

    def _predict_stream(self, split: str, save_logits: bool) -> Predictions:
        """The model's predictions on every record of `split`, in index order.

        Raises:
            ValueError: a split's indices are not ``0..num - 1`` once each.
        """
        size = self.data.num_train if split == "train" else self.data.num_test
        correctness = np.zeros(size, bool)
        margin = np.zeros(size, np.float32)
        logodds = np.zeros(size, np.float32)
        logits_all = np.zeros((size, self.data.num_classes), np.float32) if save_logits else None
        seen = np.zeros(size, np.int64)
        chunk = self.eval_batch_size
        for images, labels, indices in self.data.dataset(split, chunk).as_numpy_iterator():
            count = len(indices)
            if indices.min() < 0 or indices.max() >= size:
                raise ValueError(f"{self.data.pattern(split)}: record index "
                                 f"{indices[(indices < 0) | (indices >= size)][0]} is not "
                                 f"below num_{split}={size}")
            padded = np.zeros((chunk, *images.shape[1:]), np.float32)
            padded[:count] = images  # one shape: the compiled predictor is traced once
            logits = np.asarray(self._logits(tf.constant(padded)), np.float32)[:, :count]
            right, margins, odds = prediction_arrays(logits, labels)
            correctness[indices], margin[indices], logodds[indices] = right[0], margins[0], odds[0]
            if logits_all is not None:
                logits_all[indices] = logits[0]
            np.add.at(seen, indices, 1)
        if not (seen == 1).all():
            first = int(np.flatnonzero(seen != 1)[0])
            raise ValueError(f"{self.data.pattern(split)}: index {first} occurs "
                             f"{seen[first]} times; expected each of 0..{size - 1} once")
        return Predictions(correctness, margin, logodds, logits_all)
