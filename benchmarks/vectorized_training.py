"""K-at-once training against one model at a time, side by side.

Both arms train the same model (the digits MLP), on the same subsets, from the same
initial weights, through the same sequence of batches, for the same number of steps:

  (a) one at a time: a single Sonnet `MLP` per run, a compiled (tf.function + XLA)
      training step called from a Python loop over batches, the pattern of the
      published MNIST example;
  (b) K at once: `heldout.EnsembleTrainer` with K models in one compiled program (in
      chunks of M, automatic, as every default program);
  (c) the digits default as ``python train.py`` trains it: `--num_runs` runs (1000)
      through `make_trainer`, i.e. `--concurrent_programs` programs of K side by side
      (default 2), every program compiled once per process; and the same with one
      program, for the gain of programs side by side;
  (d) as (c) with ``--chunk_models=K``: all K models in every optimizer step (the
      default before chunks), for the gain of training in cache-sized chunks, which the
      default does (automatic M: `heldout.training.ensemble.auto_chunk_models`); the
      arrays are the same, so the accuracies must be equal.

Prints seconds per model for each and their ratio, and mean test accuracy of both
over the same runs. The target is (b) at least 10x faster per model at equal accuracy;
and (c) at most 7 ms per model on a 2-core machine whose batched products
run at about 230 GFLOP/s, i.e. about 70% of the floor printed here.

Roofline: the machine's rate for the batched matrix products of K-at-once training
(``[K, 64, 64] x [K, 64, 128]`` float32 under XLA) is measured in the same process; the
arithmetic of one model's training (forward, weight gradients, and input gradients of
every layer but the first) divided by that rate is the floor printed beside (b).

Usage:
  python benchmarks/vectorized_training.py [--models_at_once=250] [--sequential_runs=10]
"""

import dataclasses
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

from heldout.data import sources as data_lib  # noqa: E402
from heldout.models import ensemble as models_lib  # noqa: E402
from heldout.models import registry  # noqa: E402
from heldout.store import designs as subsets_lib  # noqa: E402
from heldout.training import core as training  # noqa: E402
from heldout.training.ensemble import EnsembleTrainer  # noqa: E402
from heldout.training.select import make_trainer  # noqa: E402

_MODELS_AT_ONCE = flags.DEFINE_integer("models_at_once", 250, "K of the vectorized arm.")
_SEQUENTIAL_RUNS = flags.DEFINE_integer(
    "sequential_runs", 10, "Runs trained one at a time (their time is per model).")
_EPOCHS = flags.DEFINE_integer("epochs", 20, "Epochs of every run.")
_NUM_RUNS = flags.DEFINE_integer("num_runs", 1000, "Runs of arm (c), the digits default.")
_PROGRAMS = flags.DEFINE_integer("concurrent_programs", 0,
                                 "Programs side by side in arm (c) (0: the default).")
_CHUNK = flags.DEFINE_integer("chunk_models", 0, "M of arm (c) (0: the default, automatic).")


def train_one_at_a_time(dataset, config, subset, seeds) -> tuple[float, float, float]:
    """Trains one run with a compiled step per batch.

    Returns:
        (seconds, seconds of the first step, which traces and compiles, test accuracy).
    """
    start = time.time()
    ensemble = registry.build_ensemble(config.model, dataset.num_classes, 1)
    ensemble(tf.zeros([1, 1, *dataset.input_shape]))
    init_rng = np.random.default_rng(seeds.init)
    for variable in ensemble.trainable_variables:
        variable.assign(models_lib.initial_values(variable, [init_rng]))
    model = ensemble.export(0, dataset.input_shape)  # same initial weights as arm (b)
    variables = model.trainable_variables
    velocity = [tf.Variable(tf.zeros_like(v)) for v in variables]
    decays = [0.0 if v.name.split("/")[-1].startswith("b") else 1.0 for v in variables]
    x_train = tf.constant(dataset.x_train)
    y_train = tf.constant(dataset.y_train, tf.int32)

    @tf.function(jit_compile=True)
    def step(indices, lr):
        images, labels = tf.gather(x_train, indices), tf.gather(y_train, indices)
        with tf.GradientTape() as tape:
            logits = model(images, is_training=True)
            loss = tf.reduce_mean(
                tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
        grads = tape.gradient(loss, variables)
        for variable, v, grad, decay in zip(variables, velocity, grads, decays, strict=True):
            if decay:
                grad += config.weight_decay * variable
            v.assign(config.momentum * v + grad)
            variable.assign_sub(lr * v)

    order_rng = np.random.default_rng(seeds.order)
    steps_per_epoch = -(-len(subset) // config.batch_size)
    total = steps_per_epoch * config.epochs
    warmup = int(round(config.warmup_epochs * steps_per_epoch))
    global_step = 0
    first_step_seconds = 0.0
    for _ in range(config.epochs):
        batches = training._epoch_batches([subset], [order_rng], steps_per_epoch,
                                          config.batch_size)
        for indices in batches[:, 0]:
            lr = training.learning_rate_at(global_step, total, warmup, config.learning_rate,
                                           config.lr_schedule)
            step_start = time.time()
            step(tf.constant(indices), lr)
            if global_step == 0:
                first_step_seconds = time.time() - step_start
            global_step += 1
    logits = model(tf.constant(dataset.x_test))
    accuracy = float(np.mean(np.argmax(logits, axis=1) == dataset.y_test))
    return time.time() - start, first_step_seconds, accuracy


def batched_matmul_rate(k: int, repeats: int = 50) -> float:
    """FLOP/s of ``[k, 64, 64] x [k, 64, 128]`` float32 products in one XLA program."""
    a = tf.random.normal([k, 64, 64])
    b = tf.random.normal([k, 64, 128])

    @tf.function(jit_compile=True)
    def products(a, b):
        total = tf.zeros([])
        for _ in tf.range(repeats):
            total += tf.reduce_sum(tf.matmul(a + total * 0.0, b)[:, :1, :1])
        return total

    products(a, b).numpy()
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        products(a, b).numpy()
        best = min(best, time.perf_counter() - start)
    return 2 * k * 64 * 64 * 128 * repeats / best


def mlp_training_flop(config, input_size: int, num_classes: int, steps: int) -> float:
    """Multiply-add FLOP of training one MLP for `steps` optimizer steps."""
    sizes = [input_size, *registry.MLP_HIDDEN, num_classes]
    layers = list(zip(sizes[:-1], sizes[1:], strict=True))
    forward = sum(2 * config.batch_size * m * n for m, n in layers)
    input_grads = sum(2 * config.batch_size * m * n for m, n in layers[1:])
    return steps * (2 * forward + input_grads)  # forward, weight grads, input grads


def main(argv):
    del argv
    dataset = data_lib.load_digits()
    k = _MODELS_AT_ONCE.value
    config = training.TrainConfig(models_at_once=k, epochs=_EPOCHS.value)
    subset_name = "0.7"
    seeds = [subsets_lib.run_seeds(0, subset_name, r) for r in range(k)]
    subsets = [subsets_lib.subset_indices(dataset.num_train, subset_name, 0, r)
               for r in range(k)]
    print(f"digits MLP, {config.epochs} epochs, batch {config.batch_size}, "
          f"{-(-len(subsets[0]) // config.batch_size) * config.epochs} steps per run, "
          f"{tf.config.threading.get_intra_op_parallelism_threads() or os.cpu_count()} "
          "threads")

    sequential = [train_one_at_a_time(dataset, config, subsets[r], seeds[r])
                  for r in range(_SEQUENTIAL_RUNS.value)]
    # Each run traces and compiles its own step, as a user of that pattern pays it; the
    # time without the first step is printed too, for a compile-free comparison.
    seq_seconds = np.mean([s for s, _, _ in sequential])
    seq_seconds_no_compile = np.mean([s - c for s, c, _ in sequential])
    seq_accuracy = np.mean([a for _, _, a in sequential])

    start = time.time()
    trainer = EnsembleTrainer(dataset, config)
    results = trainer.train(subsets, [s.init for s in seeds], [s.order for s in seeds])
    vec_seconds = (time.time() - start) / k
    vec_accuracy_same = np.mean([r.test.correctness.mean()
                                 for r in results[:_SEQUENTIAL_RUNS.value]])
    vec_accuracy_all = np.mean([r.test.correctness.mean() for r in results])

    print(f"(a) one at a time : {seq_seconds * 1000:8.1f} ms per model, "
          f"test accuracy {seq_accuracy:.4f} (runs 0-{_SEQUENTIAL_RUNS.value - 1})")
    print(f"    (a) without compiling: {seq_seconds_no_compile * 1000:8.1f} ms per model")
    print(f"(b) {k} at once   : {vec_seconds * 1000:8.1f} ms per model (one program, chunks "
          f"of {trainer.chunk_models}), "
          f"test accuracy {vec_accuracy_same:.4f} (same runs), {vec_accuracy_all:.4f} "
          f"(all {k})")
    rate = batched_matmul_rate(k)
    steps = -(-len(subsets[0]) // config.batch_size) * config.epochs
    flop = mlp_training_flop(config, int(np.prod(dataset.input_shape)), dataset.num_classes,
                             steps)
    floor = flop / rate
    print(f"roofline: batched matmul {rate / 1e9:.0f} GFLOP/s in this process; "
          f"{flop / 1e9:.2f} GFLOP per model -> floor {floor * 1000:.1f} ms per model; "
          f"(b) reaches {floor / vec_seconds:.0%} of it")
    print(f"speed-up per model: {seq_seconds / vec_seconds:.1f}x "
          f"({seq_seconds_no_compile / vec_seconds:.1f}x against (a) without compilation) "
          f"(target >= 10x); accuracy difference "
          f"{abs(seq_accuracy - vec_accuracy_same) * 100:.2f} points (target <= 1)")
    default = training.TrainConfig(epochs=_EPOCHS.value,
                                   concurrent_programs=_PROGRAMS.value,
                                   chunk_models=_CHUNK.value)
    per_model, steady, accuracy = train_default(dataset, default, _NUM_RUNS.value)
    chunk = EnsembleTrainer(dataset, default).chunk_models
    print(f"(c) digits default, {_NUM_RUNS.value} runs, {default.programs} programs of "
          f"{default.models_at_once} in chunks of {chunk}: {per_model * 1000:6.1f} ms per "
          "model with compilation, "
          f"{steady * 1000:6.1f} ms after the first call; test accuracy {accuracy:.4f}")
    print(f"    (c) reaches {floor / per_model:.0%} of the floor ({floor / steady:.0%} after "
          f"the first call); (c) vs (b): {vec_seconds / per_model:.2f}x")
    if default.programs > 1:
        one = dataclasses.replace(default, concurrent_programs=1)
        one_per_model, one_steady, one_accuracy = train_default(dataset, one, _NUM_RUNS.value)
        print(f"    (c) with 1 program: {one_per_model * 1000:6.1f} ms per model with "
              f"compilation, {one_steady * 1000:6.1f} ms after the first call; test accuracy "
              f"{one_accuracy:.4f}; {default.programs} programs are "
              f"{one_per_model / per_model:.2f}x faster ({one_steady / steady:.2f}x after the "
              "first call)")
    print_unchunked(dataset, default, _NUM_RUNS.value, floor, per_model)


def print_unchunked(dataset, default, num_runs: int, floor: float, per_model: float) -> None:
    """Arm (d): arm (c) with all K models in every step, its fraction of the floor and
    how much faster (c)'s chunks are."""
    whole = dataclasses.replace(default, chunk_models=default.models_at_once)
    per, steady, accuracy = train_default(dataset, whole, num_runs)
    print(f"(d) as (c), --chunk_models={whole.chunk_models} (no chunks): {per * 1000:6.1f} ms "
          f"per model with compilation, {steady * 1000:6.1f} ms after the first call; test "
          f"accuracy {accuracy:.4f}; {floor / per:.0%} of the floor ({floor / steady:.0%} "
          f"after the first call); (c) is {per / per_model:.2f}x faster")


def train_default(dataset, config, num_runs: int) -> tuple[float, float, float]:
    """Arm (c): `num_runs` runs of the default design through `make_trainer`.

    Returns:
        (seconds per model, seconds per model after the first call, which compiles,
        mean test accuracy).
    """
    subset_name = "0.7"
    start = time.time()
    trainer = make_trainer(dataset, config)
    accuracies, first_call = [], 0.0
    for begin in range(0, num_runs, trainer.num_models):
        ids = range(begin, min(begin + trainer.num_models, num_runs))
        seeds = [subsets_lib.run_seeds(0, subset_name, r) for r in ids]
        subsets = [subsets_lib.subset_indices(dataset.num_train, subset_name, 0, r)
                   for r in ids]
        results = trainer.train(subsets, [s.init for s in seeds], [s.order for s in seeds])
        accuracies += [r.test.correctness.mean() for r in results]
        if begin == 0:
            first_call = time.time() - start
    seconds = time.time() - start
    later = num_runs - min(trainer.num_models, num_runs)
    steady = (seconds - first_call) / later if later else float("nan")
    return seconds / num_runs, steady, float(np.mean(accuracies))


if __name__ == "__main__":
    app.run(main)
