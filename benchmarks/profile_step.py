"""Where a K-at-once training step spends its time, from XLA's own per-operation trace.

Trains one group of the digits default (K = `--models_at_once` MLPs in one program, in
chunks of M as the default does; `--chunk_models`) twice: once to compile, once under
TensorFlow's profiler with XLA's per-operation trace on
(``--xla_cpu_enable_xprof_traceme``) and the optimized HLO dumped. For the epoch program
only (not prediction), it prints each XLA operation's milliseconds per optimizer step,
summed over the threads that ran it, with its HLO shape; for matrix products also their
GFLOP/s and the fraction of the machine's float32 matrix-product rate
(`roofline.matmul_rate`, measured in this process) they reach. Last, the step's wall
time and the floor its matrix products imply.

The numbers of issue 17's profile come from here: which products are slow (the
10-wide head's), and how much goes to elementwise passes.

Usage:
  python benchmarks/profile_step.py [--models_at_once=250] [--chunk_models=0] [--top=15]
"""

import glob
import os
import re
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Collection

_DUMP = tempfile.mkdtemp(prefix="heldout-hlo-")
os.environ["XLA_FLAGS"] = " ".join(filter(None, [
    os.environ.get("XLA_FLAGS"), "--xla_cpu_enable_xprof_traceme=true",
    f"--xla_dump_to={_DUMP}", "--xla_dump_hlo_as_text"]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402
from tensorflow.tsl.profiler.protobuf import xplane_pb2  # noqa: E402

from benchmarks import roofline  # noqa: E402
from heldout.data import sources  # noqa: E402
from heldout.store import designs  # noqa: E402
from heldout.training.config import TrainConfig  # noqa: E402
from heldout.training.ensemble import EnsembleTrainer  # noqa: E402

_MODELS_AT_ONCE = flags.DEFINE_integer("models_at_once", 250, "K: models in the program.")
_EPOCHS = flags.DEFINE_integer("epochs", 2, "Epochs of the profiled call.")
_TOP = flags.DEFINE_integer("top", 15, "Operations listed, slowest first.")
_CHUNK = flags.DEFINE_integer("chunk_models", 0,
                              "Models per step (0: automatic, as the default; K: no chunks).")

_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (\w+)\[([\d,]*)\]\S* (\w[\w-]*)\((.*)")


def hlo_instructions(module_text: str) -> dict[str, tuple[str, tuple[int, ...], str, str]]:
    """Instruction name -> (element type, shape, opcode, rest of the line) of an HLO dump."""
    found = {}
    for line in module_text.splitlines():
        match = _INSTRUCTION.match(line)
        if match:
            name, dtype, dims, opcode, rest = match.groups()
            found[name] = (dtype, tuple(int(d) for d in dims.split(",") if d), opcode, rest)
    return found


def dot_flop(instructions, name: str) -> float:
    """Floating-point operations of a ``dot``: 2 x output size x contracted size."""
    _, shape, _, rest = instructions[name]
    lhs = re.match(r"%([\w.\-]+)", rest).group(1)
    contracting = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", rest).group(1)
    lhs_shape = instructions[lhs][1]
    contracted = np.prod([lhs_shape[int(d)] for d in contracting.split(",") if d])
    return 2.0 * float(np.prod(shape)) * float(contracted)


def epoch_module() -> dict:
    """The optimized HLO of the trainer's epoch program, from the dump."""
    paths = [p for p in glob.glob(os.path.join(_DUMP, "*cpu_after_optimizations.txt"))
             if "_train_epoch" in os.path.basename(p)]
    if not paths:
        raise RuntimeError(f"no epoch program among the HLO dumps in {_DUMP}")
    with open(max(paths, key=os.path.getsize)) as f:
        return hlo_instructions(f.read())


def operation_times(xplane_path: str, operations: Collection[str]) -> tuple[dict[str, float],
                                                                            float]:
    """Picoseconds per XLA operation of `operations` run inside the epoch program's calls,
    summed over threads, and the calls' wall time in picoseconds."""
    space = xplane_pb2.XSpace()
    with open(xplane_path, "rb") as f:
        space.ParseFromString(f.read())
    totals, wall = defaultdict(float), 0.0
    for plane in space.planes:
        names = {key: meta.name for key, meta in plane.event_metadata.items()}
        events = [(names.get(event.metadata_id, ""),
                   line.timestamp_ns * 1000 + event.offset_ps, event.duration_ps)
                  for line in plane.lines for event in line.events]
        windows = _outermost([(begin, begin + duration) for name, begin, duration in events
                              if name.startswith("__inference__train_epoch")])
        wall += sum(end - begin for begin, end in windows)
        for name, begin, duration in events:
            if name in operations and any(w0 <= begin < w1 for w0, w1 in windows):
                totals[name] += duration
    return dict(totals), wall


def _outermost(windows: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The windows not inside another (nested trace events of one call count once)."""
    return [w for w in windows
            if not any(o != w and o[0] <= w[0] and w[1] <= o[1] for o in windows)]


def main(argv):
    del argv
    dataset = sources.load_digits()
    k = _MODELS_AT_ONCE.value
    config = TrainConfig(models_at_once=k, epochs=_EPOCHS.value, chunk_models=_CHUNK.value)
    seeds = [designs.run_seeds(0, "0.7", r) for r in range(k)]
    subsets = [designs.subset_indices(dataset.num_train, "0.7", 0, r) for r in range(k)]
    trainer = EnsembleTrainer(dataset, config)

    def train():
        trainer.train(subsets, [s.init for s in seeds], [s.order for s in seeds])

    train()  # compiles
    logs = tempfile.mkdtemp(prefix="heldout-profile-")
    tf.profiler.experimental.start(logs)
    start = time.perf_counter()
    train()
    seconds = time.perf_counter() - start
    tf.profiler.experimental.stop()
    instructions = epoch_module()
    totals, wall_ps = operation_times(glob.glob(os.path.join(logs, "**", "*.xplane.pb"),
                                                recursive=True)[0], instructions)
    steps = trainer.steps_per_epoch(len(subsets[0])) * config.epochs
    # With chunks (the default) a step runs each operation of the chunk's step once per
    # chunk: shapes are a chunk's, and per step the products do K / M times their FLOP.
    chunks = trainer.num_models // trainer.chunk_models
    rate = roofline.matmul_rate("float32")
    print(f"digits MLP, K={k} in chunks of {trainer.chunk_models}, {steps} steps profiled "
          f"({seconds:.2f} s with prediction); "
          f"float32 matrix products: {rate / 1e9:.0f} GFLOP/s in this process")
    print(f"{'operation':32s} {'ms/step':>8s}  {'shape':18s} {'GFLOP/s':>8s} {'of rate':>8s}")
    dot_ps, dot_flops = 0.0, 0.0
    for name, ps in sorted(totals.items(), key=lambda item: -item[1])[:_TOP.value]:
        _, shape, opcode, _ = instructions[name]
        line = f"{name:32s} {ps / 1e9 / steps:8.2f}  {str(list(shape)):18s}"
        if opcode == "dot":
            flop = dot_flop(instructions, name) * chunks
            achieved = flop / (ps / 1e12 / steps)
            line += f" {achieved / 1e9:8.1f} {achieved / rate:8.0%}"
        print(line)
    for name, ps in totals.items():
        if instructions[name][2] == "dot":
            dot_ps += ps
            dot_flops += dot_flop(instructions, name) * chunks
    busy_ps = sum(totals.values())
    wall_step = wall_ps / 1e9 / steps
    floor_step = dot_flops / rate * 1e3
    print(f"matrix products: {dot_ps / 1e9 / steps:.2f} ms/step of {busy_ps / 1e9 / steps:.2f} "
          f"ms/step of operations (summed over threads); wall {wall_step:.2f} ms/step")
    print(f"floor of the step's products at {rate / 1e9:.0f} GFLOP/s: {floor_step:.2f} ms/step;"
          f" the step reaches {floor_step / wall_step:.0%} of it")


if __name__ == "__main__":
    app.run(main)
