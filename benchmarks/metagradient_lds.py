"""Exact metagradients on the digits MLP, judged by the single-model LDS.

Trains a base run and banks of runs with the base run's seeds and a random fraction p
of the training set dropped as zero loss weights (designs ``bank-<p>``), computes the
metagradients g[i, j] = d f_j / d w_i of every test target through the base run's
whole training, and prints for each p the single-model LDS: the mean over targets of
the Spearman correlation over bank runs of the actual log-odds change from the base
run and the predicted change -sum_{i dropped} g[i, j] (`heldout.estimate.lds.lds` with
the bank's weights as masks; ranks ignore the base run's constant). TRAK and influence
functions (EK-FAC) of the base model and TracIn over its per-epoch checkpoints are
scored on the same banks. Then a learning-rate table (lr vs single-model LDS at 1%
drops vs test accuracy): smoothness of training, not precision, limits the LDS.

Cost: the seconds of the metagradients of every target beside the seconds of training
as many models K-at-once (both from a cold start, compilation included), the peak
bytes of kept states and the process's peak resident memory. Each result also as the
fraction of the machine's measured matrix-product rate (`roofline`): a backward step
is counted as 9 batch products per layer per target (the step's forward and backward,
3, and their reverse-mode derivative, 6), a training step as 3.

Usage:
  python benchmarks/metagradient_lds.py                     # about 4 minutes on 2 cores
  python benchmarks/metagradient_lds.py --bank_runs=20 --lr_targets=32   # quicker
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import roofline  # noqa: E402

from heldout.attribution import config as attribution_config  # noqa: E402
from heldout.attribution import (  # noqa: E402
    influence_functions,
    metagradient,
    runs_attribution,
    tracin,
    trak,
)
from heldout.data import sources  # noqa: E402
from heldout.estimate import lds as lds_lib  # noqa: E402
from heldout.store import designs, records  # noqa: E402
from heldout.store import runs as runs_lib  # noqa: E402
from heldout.training import core, experiment  # noqa: E402
from heldout.training.select import make_trainer  # noqa: E402


def train_bank(directory: str, config: core.TrainConfig, fraction: float, runs: int,
               checkpoints: bool = False) -> tuple[np.ndarray, np.ndarray, str]:
    """Trains runs 0..runs of ``bank-<fraction>``: weights ``[runs, n]`` and test
    log-odds ``[runs, num_test]`` of runs 1..runs, and the base run's directory."""
    design = designs.design_name(f"{designs.BANK_PREFIX}{fraction}")
    if checkpoints:  # the base run with per-epoch checkpoints (TracIn, TRAK, IF)
        experiment.train_experiment(directory, "digits", dataclasses.replace(
            config, checkpoint_every=1), design, [0], save_checkpoints=True, progress=False)
    experiment.train_experiment(directory, "digits", config, design, range(runs + 1),
                                progress=False)
    loaded = [runs_lib.load_run(runs_lib.run_dir(directory, design, r))
              for r in range(runs + 1)]
    weights = np.stack([run[runs_lib.EXAMPLE_WEIGHTS] for run in loaded[1:]])
    outputs = np.stack([run["logodds_test"] for run in loaded[1:]])
    return weights, outputs, runs_lib.run_dir(directory, design, 0)


def single_model_lds(scores: np.ndarray, weights: np.ndarray, outputs: np.ndarray) -> float:
    """Mean over targets of Spearman(actual, -sum_{dropped} scores) over bank runs."""
    return float(lds_lib.lds(scores, weights, outputs, num_bootstrap=0).mean)


def base_trajectory(config: core.TrainConfig, num_train: int) -> metagradient.Trajectory:
    seeds = designs.bank_seeds(0)
    steps = -(-num_train // config.batch_size)
    return metagradient.Trajectory(config, np.arange(num_train), seeds.init, seeds.order, steps)


def weight_parameters(data, config: core.TrainConfig) -> int:
    """Entries of the weight matrices of one model (the products' inner sizes)."""
    trainer = make_trainer(data, dataclasses.replace(config, models_at_once=4,
                                                     concurrent_programs=1))
    return sum(int(np.prod(v.shape[1:])) for v in trainer.model.trainable_variables
               if v.name.split("/")[-1].startswith("w"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--learning_rate", type=float, default=0.02,
                        help="peak rate of the main recipe (the digits default otherwise)")
    parser.add_argument("--fractions", default="0.01,0.05,0.1")
    parser.add_argument("--bank_runs", type=int, default=100, help="runs per bank")
    parser.add_argument("--lr_table", default="0.1,0.05,0.02")
    parser.add_argument("--lr_targets", type=int, default=64,
                        help="test targets of the learning-rate table")
    parser.add_argument("--baselines", default="trak,if_ekfac,tracin")
    parser.add_argument("--targets", type=int, default=0,
                        help="test targets of the main table (0: all)")
    args = parser.parse_args()
    rate = roofline.matmul_rate("float32")
    data = sources.load_digits()
    n, num_test = data.num_train, args.targets or data.num_test
    config = core.TrainConfig(learning_rate=args.learning_rate)
    flop_per_product = 2 * config.batch_size * weight_parameters(data, config)
    steps = -(-n // config.batch_size) * config.epochs
    print(f"digits MLP, {n} training weights x {num_test} test targets; recipe: the digits "
          f"default (epochs {config.epochs}, batch {config.batch_size}, momentum "
          f"{config.momentum}, weight decay {config.weight_decay}, {config.lr_schedule}) at "
          f"learning_rate={config.learning_rate}; {steps} optimizer steps; banks of "
          f"{args.bank_runs} runs")

    with tempfile.TemporaryDirectory() as directory:
        # Cost of the yardstick: as many models as targets, K-at-once, from a cold start.
        start = time.time()
        trainer = make_trainer(data, config)
        seeds = [designs.run_seeds(1, "full", r) for r in range(num_test)]
        for first in range(0, num_test, trainer.num_models):
            group = seeds[first:first + trainer.num_models]
            trainer.train([np.arange(n)] * len(group), [s.init for s in group],
                          [s.order for s in group])
        train_seconds = time.time() - start
        print(roofline.roofline_line(f"training {num_test} models K-at-once", train_seconds,
                                     3 * flop_per_product * steps * num_test, rate))

        banks = {}
        fractions = [float(f) for f in args.fractions.split(",")]
        for index, fraction in enumerate(fractions):
            banks[fraction] = train_bank(directory, config, fraction, args.bank_runs,
                                         checkpoints=index == 0)
        base_dir = banks[fractions[0]][2]

        start = time.time()
        result = metagradient.metagradients(
            data, base_trajectory(config, n), data.x_test[:num_test], data.y_test[:num_test],
            attribution_config.MetagradientConfig(progress=False))
        seconds = time.time() - start
        print(roofline.roofline_line(f"metagradients, {num_test} targets x {n} weights",
                                     seconds, 9 * flop_per_product * steps * num_test, rate))
        print(f"  = {seconds / train_seconds:.1f}x training {num_test} models K-at-once; "
              f"states kept {result.state_bytes / 2**20:.1f} MiB (every "
              f"{result.checkpoint_interval} step(s)); peak resident memory "
              f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")
        # Memory bounded by checkpoints: a budget of a tenth of the states keeps every
        # ~sqrt(T)-th and replays segments; the scores do not change.
        budget = result.state_bytes // 10
        targets = np.arange(args.lr_targets)
        timed = {}
        for name, memory in (("all states", 1 << 40), ("checkpointed", budget)):
            start = time.time()
            timed[name] = metagradient.metagradients(
                data, base_trajectory(config, n), data.x_test[targets], data.y_test[targets],
                attribution_config.MetagradientConfig(progress=False, memory_budget_bytes=memory))
            print(f"{name} ({args.lr_targets} targets, budget {min(memory, 2**40) / 2**20:.1f} "
                  f"MiB): states every {timed[name].checkpoint_interval} step(s), "
                  f"{timed[name].state_bytes / 2**20:.1f} MiB kept, {time.time() - start:.1f} s")
        print("  checkpointed scores identical to all states kept: "
              f"{np.array_equal(timed['checkpointed'].scores, timed['all states'].scores)}")
        methods = {"metagradient": result.scores}
        baselines = [b for b in args.baselines.split(",") if b]
        models = runs_attribution.restore_final_models([base_dir], data)
        for name in baselines:
            start = time.time()
            if name == "trak":
                scores = trak.score_trak(models, data.x_train, data.y_train,
                                         data.x_test[:num_test], data.y_test[:num_test]).scores
            elif name == "if_ekfac":
                scores = influence_functions.score_influence_functions(
                    models[0], data.x_train, data.y_train, data.x_test[:num_test],
                    data.y_test[:num_test],
                    attribution_config.InfluenceConfig(measurement="logodds")).scores
            elif name == "tracin":
                record = records.read_run_record(base_dir)
                checkpoints = [tracin.Checkpoint(runs_attribution._restore(
                    base_dir, "mlp", data, 1.0, epoch), lr)
                    for epoch, lr in record.tracin_checkpoints(base_dir)]
                scores = tracin.score_tracin(
                    checkpoints, data.x_train, data.y_train, data.x_test[:num_test],
                    data.y_test[:num_test],
                    tracin.TracInConfig(measurement="margin")).scores
            else:
                raise SystemExit(f"--baselines: unknown method {name!r}")
            methods[name] = scores
            print(f"{name}: {time.time() - start:.1f} s")
        print("\nsingle-model LDS (mean over targets; Spearman over bank runs)")
        print("method         " + "".join(f"  drop {f:>5.0%}" for f in fractions))
        for name, scores in methods.items():
            print(f"{name:<15}" + "".join(
                f"  {single_model_lds(scores, banks[f][0], banks[f][1][:, :num_test]):10.3f}"
                for f in fractions))

        print(f"\nlearning rate vs single-model LDS at {fractions[0]:.0%} drops "
              f"({args.lr_targets} test targets) vs the base run's test accuracy")
        print("learning_rate  LDS     test_accuracy  metagradient_s")
        for lr in (float(v) for v in args.lr_table.split(",")):
            recipe = dataclasses.replace(config, learning_rate=lr)
            folder = os.path.join(directory, f"lr{lr:g}")
            weights, outputs, base = train_bank(folder, recipe, fractions[0], args.bank_runs)
            start = time.time()
            targets = np.arange(args.lr_targets)
            scores = metagradient.metagradients(
                data, base_trajectory(recipe, n), data.x_test[targets], data.y_test[targets],
                attribution_config.MetagradientConfig(progress=False)).scores
            accuracy = records.read_run_record(base).accuracy.test
            print(f"{lr:<13g}  {single_model_lds(scores, weights, outputs[:, targets]):.3f}"
                  f"   {accuracy:.4f}         {time.time() - start:.1f}")


if __name__ == "__main__":
    main()
