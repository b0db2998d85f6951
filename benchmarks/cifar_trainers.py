"""CIFAR trainers side by side: Sonnet airbench against PyPI airbench under PyTorch.

On synthetic CIFAR-shaped data (32x32x3, 10 classes), on this machine's CPU, float32,
optimizer steps per second; every setting is timed in interleaved rounds and the
median shown, so slow drift of a shared machine hits all sides alike:
  airbench: (1) the network step (forward, backward, Nesterov SGD update on one batch)
      of Sonnet `heldout.models.airbench.Airbench`, with and without XLA, against the network
      of PyPI ``airbench`` (``lib_airbench94.make_net94``: its own modules, built on the
      CPU in float32) under PyTorch at the same batch; (2) the whole training step:
      Sonnet's `AirbenchTrainer` epoch program (gather by index, augmentation, schedule,
      weight averaging) against the PyTorch loop of airbench94 (batches sliced from the
      epoch's flipped and translated images, SGD and schedule step, averaging every 5
      steps). Ratios are Sonnet / PyTorch.
  small_inception: SmallInception's `SingleModelTrainer` step, with and without XLA.
  k_at_once: `AirbenchTrainer` with K small-width models in one program (grouped
      convolutions) against one model per program, per model.

TensorFlow's oneDNN kernels are switched on (TF_ENABLE_ONEDNN_OPTS=1, PyTorch's CPU
convolutions are oneDNN too); TensorFlow leaves them off on some CPUs, AMD among them.
Run with TF_ENABLE_ONEDNN_OPTS=0 to time TensorFlow's default Eigen kernels there.

The PyTorch side needs ``pip install torch`` and ``pip install airbench --no-deps``
(airbench's package imports torchvision only to download CIFAR-10, stubbed out here);
without them it is skipped with a message. Never a test dependency.

Usage:
  python benchmarks/cifar_trainers.py [--batch_sizes=1024,512] [--steps=3] [--rounds=3]
      [--sections=airbench,small_inception,k_at_once]
"""

import contextlib
import os
import platform
import sys
import time
import types
from collections.abc import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

from heldout.data.dataset import Dataset  # noqa: E402
from heldout.models import airbench as airbench_net
from heldout.training import airbench_recipe, select
from heldout.training import core as training
from heldout.training import recipes as recipes_lib  # noqa: E402

tf.get_logger().setLevel("ERROR")  # retracing notes of the many trainers built here

_BATCH_SIZES = flags.DEFINE_list("batch_sizes", ["1024", "512"], "Batch sizes to time.")
_STEPS = flags.DEFINE_integer("steps", 3, "Timed optimizer steps per measurement.")
_WARMUP_ROUNDS = flags.DEFINE_integer(
    "warmup_rounds", 1, "Untimed rounds of --steps steps first (tracing, compilation, "
    "allocation, all at the timed shapes); at least 1.")
_ROUNDS = flags.DEFINE_integer(
    "rounds", 3, "Measurements per setting, interleaved across settings; medians are shown "
    "(a shared CPU's speed drifts, so the sides are timed side by side in every round).")
_SECTIONS = flags.DEFINE_list(
    "sections", ["airbench", "small_inception", "k_at_once"], "What to time.")
_XLA = flags.DEFINE_list("xla", ["false", "true"], "XLA settings of the Sonnet side.")
_K = flags.DEFINE_integer("models_at_once", 8, "K of the K-at-once section.")
_K_WIDTH = flags.DEFINE_float("k_width", 0.25, "Width multiplier of the K-at-once models.")
_K_BATCH = flags.DEFINE_integer("k_batch_size", 256, "Batch per model in the K-at-once section.")

NUM_CLASSES = 10
Runner = Callable[[int], None]  # runs n optimizer steps and returns when they are done


def _steps_per_second(run: Runner, steps: int) -> float:
    start = time.perf_counter()
    run(steps)
    return steps / (time.perf_counter() - start)


def measure(runners: dict[str, Runner], steps: int, warmup: int, rounds: int
            ) -> dict[str, list[float]]:
    """Steps per second of every runner, `rounds` times, the runners interleaved.

    Every runner first runs `warmup` untimed rounds of `steps` steps, so programs are
    traced and compiled for exactly the timed shapes.
    """
    for run in runners.values():
        for _ in range(warmup):
            run(steps)
    rates = {name: [] for name in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            rates[name].append(_steps_per_second(run, steps))
    return rates


def _synthetic(num_examples: int, seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (num_examples, 32, 32, 3)).astype(np.float32) / 255
    y = rng.integers(0, NUM_CLASSES, num_examples)
    return Dataset("synthetic", x, y, x[:512], y[:512], NUM_CLASSES)


# --- Sonnet -------------------------------------------------------------------------


def sonnet_network(batch_size: int, xla: bool) -> Runner:
    """Forward, backward and the Nesterov update of the airbench network on one batch."""
    model = airbench_net.Airbench(NUM_CLASSES)
    model(tf.zeros([1, 32, 32, 3]), is_training=False)
    data = _synthetic(batch_size)
    model.initialize([np.random.default_rng(0)], [data.x_train])
    variables = model.trainable_variables
    velocity = [tf.Variable(tf.zeros_like(v)) for v in variables]
    images = tf.constant(data.x_train)
    targets = tf.constant(np.eye(NUM_CLASSES, dtype=np.float32)[data.y_train] * 0.8 + 0.02)
    lr, decay, momentum = 1e-3, 1.0, airbench_recipe.MOMENTUM

    @tf.function(jit_compile=xla)
    def step():
        with tf.GradientTape() as tape:
            logits = model(images[None], is_training=True)[0]
            loss = tf.reduce_sum(tf.nn.softmax_cross_entropy_with_logits(targets, logits))
        for v, m, g in zip(variables, velocity, tape.gradient(loss, variables), strict=True):
            g = g + decay * v
            m.assign(momentum * m + g)
            v.assign_sub(lr * (g + momentum * m))
        return loss

    def run(n):
        for _ in range(n):
            loss = step()
        loss.numpy()

    return run


def sonnet_trainer(model: str, batch_size: int, xla: bool, models_at_once: int = 1,
                   width: float = 1.0) -> Runner:
    """Optimizer steps of a toolkit trainer's epoch program (epoch 5: averaging is on)."""
    chosen = {"model": model, "xla": xla, "batch_size": batch_size, "epochs": 10,
              "models_at_once": models_at_once, "model_width": width}
    config = recipes_lib.config_for(chosen, model)
    data = _synthetic(batch_size * 2)
    trainer = select.make_trainer(data, config)
    k = trainer.num_models
    subsets = [np.arange(data.num_train)] * k
    trainer._initialize(subsets, [np.random.SeedSequence(i) for i in range(k)])
    rng = np.random.default_rng(0)
    seed_values = rng.integers(0, 2**31 - 1, (k, 2)).astype(np.int32)
    seeds, phases = tf.constant(seed_values), trainer.flip_phases(seed_values)
    epoch, per_epoch, warmup = (tf.constant(5), tf.constant([1000] * k),
                                tf.constant([1] * k))

    def run(n):
        batches = tf.constant(training._epoch_batches(subsets, [rng] * k, n, batch_size))
        trainer._train_epoch(batches, epoch, per_epoch, warmup, seeds, phases)
        trainer.model.trainable_variables[0].numpy()  # waits for the program

    return run


# --- PyTorch: PyPI airbench's network ---------------------------------------------------


def _import_airbench_torch():
    """PyPI airbench's module for airbench94, or the reason it cannot be had."""
    try:
        import torch
    except ImportError as e:
        return None, f"PyTorch not installed ({e}); pip install torch"
    # airbench/utils.py imports torchvision to download CIFAR-10 and builds a loader at
    # import time; neither is used here, so that module is replaced by a stub.
    stub = types.ModuleType("airbench.utils")
    stub.train = stub.evaluate = stub.infer = None
    stub.CifarLoader = lambda *args, **kwargs: None
    sys.modules.setdefault("airbench.utils", stub)
    try:
        from airbench import lib_airbench94
    except ImportError as e:
        return None, f"PyPI airbench not installed ({e}); pip install airbench --no-deps"
    return (torch, lib_airbench94), None


@contextlib.contextmanager
def _on_cpu_in_float32(torch):
    """make_net94 calls .half().cuda(); on this CPU the network stays float32 instead."""
    half, cuda = torch.nn.Module.half, torch.nn.Module.cuda
    torch.nn.Module.half = lambda self: self
    torch.nn.Module.cuda = lambda self, *args, **kwargs: self
    try:
        yield
    finally:
        torch.nn.Module.half, torch.nn.Module.cuda = half, cuda


def torch_airbench(batch_size: int, modules) -> tuple[Runner, Runner]:
    """(network step, training step) runners of PyPI airbench94 under PyTorch."""
    torch, ab = modules
    torch.manual_seed(0)
    with _on_cpu_in_float32(torch):
        net = ab.make_net94()
    hyp = ab.hyp["opt"]
    kilostep = 1024 * (1 + 1 / (1 - hyp["momentum"]))
    lr = hyp["lr"] / kilostep
    wd = hyp["weight_decay"] * batch_size / kilostep
    lr_biases = lr * hyp["bias_scaler"]
    norm_biases = [p for k, p in net.named_parameters() if "norm" in k and p.requires_grad]
    others = [p for k, p in net.named_parameters() if "norm" not in k and p.requires_grad]
    optimizer = torch.optim.SGD([
        {"params": norm_biases, "lr": lr_biases, "weight_decay": wd / lr_biases},
        {"params": others, "lr": lr, "weight_decay": wd / lr}],
        momentum=hyp["momentum"], nesterov=True)
    schedule = np.interp(np.arange(10_000), [0, 2000, 10_000], [0.2, 1, 0.07])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: schedule[i])
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=hyp["label_smoothing"],
                                        reduction="none")
    data = _synthetic(batch_size * 2)
    images = torch.tensor(data.x_train).permute(0, 3, 1, 2).contiguous(
        memory_format=torch.channels_last)
    labels = torch.tensor(data.y_train)
    net.train()

    def step(inputs, targets):
        loss = loss_fn(net(inputs), targets).sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()

    def network(n):
        for _ in range(n):
            step(images[:batch_size], labels[:batch_size])

    average = {k: v.clone() for k, v in net.state_dict().items()}
    count = [0]

    def training_loop(n):
        # airbench94's loop: flip and translate the epoch's images at once, slice batches
        # by a random permutation, step, and average the weights every 5 steps.
        flipped = torch.where(torch.rand(len(images)).view(-1, 1, 1, 1) < 0.5,
                              images.flip(-1), images)
        padded = torch.nn.functional.pad(flipped, (2,) * 4, "reflect")
        shifts = torch.randint(0, 5, (2,))
        epoch_images = padded[:, :, shifts[0]:shifts[0] + 32, shifts[1]:shifts[1] + 32]
        order = torch.randperm(len(images))
        for i in range(n):
            index = order[(i % 2) * batch_size:(i % 2 + 1) * batch_size]
            step(epoch_images[index], labels[index])
            count[0] += 1
            if count[0] % 5 == 0:
                for value, kept in zip(net.state_dict().values(), average.values(),
                                       strict=True):
                    if value.dtype == torch.float:
                        kept.lerp_(value, 0.1)
                        value.copy_(kept)

    return network, training_loop


# --- report ----------------------------------------------------------------------------


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _report(title: str, rates: dict[str, list[float]], baseline: str | None,
            batch_size: int | None = None) -> None:
    print(f"\n[{title}]")
    base = rates.get(baseline) if baseline else None
    for name, values in rates.items():
        line = f"  {name:<38} {np.median(values):7.3f} steps/s"
        if batch_size:
            line += f" ({np.median(values) * batch_size:6.0f} examples/s)"
        if base and name != baseline:
            ratios = np.array(values) / np.array(base)
            line += (f"  ratio {np.median(values) / np.median(base):.2f}x "
                     f"(rounds {ratios.min():.2f}-{ratios.max():.2f})")
        print(line, flush=True)


def _onednn() -> str:
    try:
        from tensorflow.python.util import _pywrap_util_port

        return "on" if _pywrap_util_port.IsMklEnabled() else "off"
    except ImportError:
        return "unknown"


def main(argv):
    del argv
    steps, warmup, rounds = _STEPS.value, max(_WARMUP_ROUNDS.value, 1), _ROUNDS.value
    batch_sizes = [int(b) for b in _BATCH_SIZES.value]
    xla_settings = [x.lower() in ("1", "true", "yes") for x in _XLA.value]
    sections = set(_SECTIONS.value)
    gpus = tf.config.list_physical_devices("GPU")
    print(f"device: {'GPU ' + gpus[0].name if gpus else 'CPU'} ({_cpu_name()}, "
          f"{os.cpu_count()} cores); TensorFlow {tf.__version__} (oneDNN {_onednn()}, "
          f"intra-op threads {tf.config.threading.get_intra_op_parallelism_threads() or 'all'}"
          f"); precision float32; per setting: median of {rounds} rounds of {steps} steps "
          f"after {warmup} untimed round(s)", flush=True)
    modules, reason = _import_airbench_torch()
    if modules is None:
        print(f"PyTorch side skipped: {reason}")
    else:
        print(f"PyTorch {modules[0].__version__} ({modules[0].get_num_threads()} threads), "
              "network from PyPI airbench (lib_airbench94.make_net94, float32 on the CPU)")

    def xla_name(xla: bool) -> str:
        return f"XLA {'on' if xla else 'off'}"

    for batch_size in batch_sizes if "airbench" in sections else []:
        network, trainer = {}, {}
        if modules is not None:
            network["PyTorch airbench (PyPI)"], trainer["PyTorch airbench94 loop"] = (
                torch_airbench(batch_size, modules))
        for xla in xla_settings:
            network[f"Sonnet Airbench, {xla_name(xla)}"] = sonnet_network(batch_size, xla)
            trainer[f"Sonnet AirbenchTrainer, {xla_name(xla)}"] = sonnet_trainer(
                "airbench", batch_size, xla)
        baseline = next(iter(network)) if modules is not None else None
        _report(f"airbench network step (forward, backward, update), batch {batch_size}",
                measure(network, steps, warmup, rounds), baseline)
        baseline = next(iter(trainer)) if modules is not None else None
        _report(f"airbench training step (+ gather, augmentation, schedule, averaging), "
                f"batch {batch_size}", measure(trainer, steps, warmup, rounds), baseline)
        del network, trainer

    for batch_size in batch_sizes if "small_inception" in sections else []:
        runners = {f"Sonnet SmallInception, {xla_name(xla)}":
                   sonnet_trainer("small_inception", batch_size, xla) for xla in xla_settings}
        _report(f"SmallInception training step (SingleModelTrainer), batch {batch_size}",
                measure(runners, steps, warmup, rounds), None, batch_size)

    if "k_at_once" in sections:
        k, width, batch = _K.value, _K_WIDTH.value, _K_BATCH.value
        for xla in xla_settings:
            runners = {"1 model per program": sonnet_trainer("airbench", batch, xla, 1, width),
                       f"{k} models per program": sonnet_trainer("airbench", batch, xla, k,
                                                                width)}
            rates = measure(runners, steps, warmup, rounds)
            alone, together = (np.median(v) for v in rates.values())
            print(f"\n[K at once: airbench width {width}, batch {batch} per model, "
                  f"{xla_name(xla)}]")
            print(f"  1 model per program   {alone:7.3f} steps/s = {alone:7.3f} model-steps/s")
            print(f"  {k} models per program {together:7.3f} steps/s = {together * k:7.3f} "
                  f"model-steps/s; per model {together * k / alone:.2f}x the speed of one "
                  "per program", flush=True)


if __name__ == "__main__":
    app.run(main)
