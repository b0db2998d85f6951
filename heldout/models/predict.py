"""Predictions of trained models: logits -> correctness, max-margin and log-odds margin."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class Predictions:
    """What one trained model predicts on one split, for every example of the split."""

    correctness: np.ndarray  # bool [num_examples]
    margin: np.ndarray  # float32 [num_examples]: correct logit minus largest other
    logodds: np.ndarray  # float32 [num_examples]: correct logit minus logsumexp of others
    logits: np.ndarray | None = None  # float32 [num_examples, num_classes], if asked



def predict_in_chunks(logits_fn: Callable[[tf.Tensor], tf.Tensor], x: np.ndarray,
                      y: np.ndarray, chunk_size: int, save_logits: bool = False
                      ) -> list[Predictions]:
    """Predictions of K models from ``logits_fn(images[chunk]) -> [K, chunk, classes]``.

    Chunks are padded to `chunk_size` so a compiled `logits_fn` is traced once.
    """
    parts = []
    for start in range(0, len(y), chunk_size):
        chunk = x[start:start + chunk_size]
        padded = np.zeros((chunk_size, *chunk.shape[1:]), np.float32)
        padded[:len(chunk)] = chunk
        logits = np.asarray(logits_fn(tf.constant(padded)), np.float32)[:, :len(chunk)]
        parts.append((*prediction_arrays(logits, y[start:start + chunk_size]),
                      logits if save_logits else None))
    columns = list(zip(*parts, strict=True))
    correctness, margin, logodds = (np.concatenate(c, axis=1) for c in columns[:3])
    logits = np.concatenate(columns[3], axis=1) if save_logits else None
    return [Predictions(correctness=correctness[k], margin=margin[k], logodds=logodds[k],
                        logits=None if logits is None else logits[k])
            for k in range(correctness.shape[0])]


def prediction_arrays(logits: np.ndarray, labels: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Correctness, max-margin and log-odds margin of logits ``[K, n, classes]``, each ``[K, n]``.

    The max-margin is the correct logit minus the largest other logit (> 0 exactly when
    the prediction is right, ties aside); the log-odds margin is the correct logit minus
    the logsumexp of the other logits, the log of p(correct) / (1 - p(correct)).
    """
    logits = logits.astype(np.float64)
    index = np.broadcast_to(labels[None, :, None], (*logits.shape[:2], 1))
    correct_logit = np.take_along_axis(logits, index, axis=2)[..., 0]
    others = logits.copy()
    np.put_along_axis(others, index, -np.inf, axis=2)
    largest_other = others.max(axis=2)
    logsumexp_others = largest_other + np.log(
        np.exp(others - largest_other[..., None]).sum(axis=2))
    correctness = logits.argmax(axis=2) == labels[None, :]
    return (correctness, (correct_logit - largest_other).astype(np.float32),
            (correct_logit - logsumexp_others).astype(np.float32))
