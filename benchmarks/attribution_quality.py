"""Gradient-based attribution judged against retraining on digits (issue 6).

Two questions, each answered with a table:

1. Mislabel detection. 10% of the digits training labels are flipped (seeded) to a
   random other class. Every training example is scored by: heldout memorization and
   1 - C-score (from `--num_runs` retrainings on random 70% subsets of the flipped set),
   TracIn-CP self-influence, influence-function self-influence with EKFAC, KFAC,
   diagonal and identity factors, and the plain loss (the last three families from
   one model trained on the whole flipped set). For each: the fraction of the flipped
   labels found among the top 5/10/20/30% of scores, and the ROC AUC; the curves go
   into a PNG.
2. Agreement with retraining, on the clean data set: Spearman correlation between
   each cheap method's self-influence and heldout memorization (correctness) and
   margin self-influence, and between its train x test scores (margin measurement)
   and heldout margin influence, on the `--top_pairs` pairs of highest heldout
   influence and on all pairs. The row "heldout split-half" compares the estimates
   of two disjoint halves of the runs: the agreement that retraining's own noise
   allows at half the runs.

The single model is trained with `EnsembleTrainer` (one model, the whole training
set, the same `TrainConfig` as the heldout runs). Its checkpoints are taken after
every epoch through the trainer's ``on_epoch`` callback, each weighted in TracIn by
the mean learning rate of the epoch that ended there (`learning_rate_at` over that
epoch's steps); the last one is the final model, which the influence functions and the
loss use. These are the checkpoints ``estimate.py --estimator=tracin`` uses on a run
trained with ``checkpoint_every=1`` (`RunRecord.tracin_checkpoints`: those saved
during training and the final model). Influence functions use the true Fisher with
one draw of sampled labels (``fisher_seed=0``, ``fisher_draws=1``, the defaults).

Usage:
  python benchmarks/attribution_quality.py [--num_runs=1000] [--work_dir=/tmp/attribution]
"""

import dataclasses
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from scipy import stats  # noqa: E402
from sklearn import metrics  # noqa: E402

import heldout  # noqa: E402
from heldout import attribution
from heldout.data import sources as data
from heldout.store import designs as subsets
from heldout.training import core as training  # noqa: E402
from heldout.training.ensemble import EnsembleTrainer  # noqa: E402

_NUM_RUNS = flags.DEFINE_integer("num_runs", 1000, "Heldout retrainings per data set.")
_FLIP_FRACTION = flags.DEFINE_float("flip_fraction", 0.1, "Fraction of labels flipped.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the flips, runs and the single model.")
_WORK_DIR = flags.DEFINE_string("work_dir", None, "Where runs and figures go (kept, so "
                                "a second call reuses the runs); a temporary directory "
                                "by default.")
_TOP_PAIRS = flags.DEFINE_integer("top_pairs", 1000, "Highest-influence pairs compared.")

SUBSET_RATIO = 0.7
INSPECTED = (0.05, 0.10, 0.20, 0.30)  # fractions of the training set inspected
IF_STRATEGIES = ("ekfac", "kfac", "diagonal", "identity")


def flip_labels(labels: np.ndarray, num_classes: int, fraction: float, seed: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """Labels with `fraction` of them moved to a uniformly random other class.

    Returns:
        ``(new labels, bool mask of the flipped examples)``.
    """
    rng = np.random.default_rng([seed, 6])
    flipped = np.zeros(len(labels), bool)
    flipped[rng.choice(len(labels), round(fraction * len(labels)), replace=False)] = True
    new = labels.copy()
    new[flipped] = (labels[flipped] + rng.integers(1, num_classes, flipped.sum())) % num_classes
    return new, flipped


def retrain(experiment_dir: str, dataset_spec: str, config: training.TrainConfig,
            num_runs: int, seed: int) -> heldout.Experiment:
    """Trains (or finds) the heldout runs of a data set and loads them."""
    summary = heldout.train_experiment(experiment_dir, dataset_spec, config, SUBSET_RATIO,
                                       range(num_runs), seed=seed, progress=False)
    print(f"  {dataset_spec}: {len(summary.trained)} runs trained, "
          f"{len(summary.already_complete)} found, {summary.seconds:.0f} s")
    return heldout.load_experiment(experiment_dir, subsets.subset_name(SUBSET_RATIO),
                                   progress=False)


def train_with_checkpoints(dataset: data.Dataset, config: training.TrainConfig, seed: int
                           ) -> list[attribution.Checkpoint]:
    """One model on the whole training set, with a checkpoint after every epoch."""
    trainer = EnsembleTrainer(dataset, dataclasses.replace(config, models_at_once=1))
    steps = trainer.steps_per_epoch(dataset.num_train)
    total, warmup = steps * config.epochs, round(config.warmup_epochs * steps)
    checkpoints = []

    def on_epoch(_steps: int) -> None:
        epoch = len(checkpoints)
        epoch_steps = np.arange(epoch * steps, (epoch + 1) * steps)
        rates = training.learning_rate_at(epoch_steps, total, warmup, config.learning_rate,
                                          config.lr_schedule)
        checkpoints.append(attribution.Checkpoint(
            trainer.model.export(0, dataset.input_shape), float(np.mean(rates))))

    seeds = subsets.run_seeds(seed, "full", 0)
    trainer.train([np.arange(dataset.num_train)], [seeds.init], [seeds.order],
                  on_epoch=on_epoch)
    return checkpoints


def cheap_scores(checkpoints: list[attribution.Checkpoint], dataset: data.Dataset,
                 pairwise: bool) -> tuple[dict, dict, dict]:
    """Self-influence (and train x test margin scores) of every cheap method.

    Returns:
        ``(self scores by method, pairwise scores by method, seconds by method)``.
    """
    x, y = dataset.x_train, dataset.y_train
    x_query = dataset.x_test if pairwise else None
    y_query = dataset.y_test if pairwise else None
    self_scores, pair_scores, seconds = {}, {}, {}
    name = f"TracIn ({len(checkpoints)} ckpts)"
    result = attribution.score_tracin(checkpoints, x, y, x_query, y_query,
                                      attribution.TracInConfig(measurement="margin"))
    self_scores[name], pair_scores[name], seconds[name] = (result.self_influence,
                                                          result.scores, result.seconds)
    model = checkpoints[-1].model
    for strategy in IF_STRATEGIES:
        name = f"IF {strategy}"
        result = attribution.score_influence_functions(
            model, x, y, x_query, y_query,
            attribution.InfluenceConfig(strategy=strategy, measurement="margin"))
        self_scores[name], pair_scores[name] = result.self_influence, result.scores
        seconds[name] = result.timings
    self_scores["loss"] = attribution.measure(model(x), y, "loss").numpy()
    return self_scores, pair_scores, seconds


def fraction_found(scores: np.ndarray, flipped: np.ndarray, inspected: float) -> float:
    """Fraction of the flipped examples among the `inspected` fraction of highest scores."""
    order = np.argsort(-np.nan_to_num(scores, nan=-np.inf), kind="stable")
    top = order[:round(inspected * len(scores))]
    return float(flipped[top].sum() / flipped.sum())


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    keep = np.isfinite(a) & np.isfinite(b)
    return float(stats.spearmanr(a[keep], b[keep]).statistic)


def plot_curves(scores: dict[str, np.ndarray], flipped: np.ndarray, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fractions = np.linspace(0, 1, 201)
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for name, values in scores.items():
        ax.plot(fractions, [fraction_found(values, flipped, f) for f in fractions], label=name)
    ax.plot(fractions, np.minimum(fractions / flipped.mean(), 1), "k:", label="oracle")
    ax.set_xlabel("fraction of training data inspected (highest score first)")
    ax.set_ylabel("fraction of flipped labels found")
    ax.set_title(f"digits, {flipped.mean():.0%} labels flipped")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    start = time.time()
    work_dir = _WORK_DIR.value or tempfile.mkdtemp(prefix="attribution-quality-")
    os.makedirs(work_dir, exist_ok=True)
    seed, num_runs = _SEED.value, _NUM_RUNS.value
    config = training.TrainConfig()  # the embedded default: MLP(128), 20 epochs
    clean = data.load_digits()
    labels, flipped = flip_labels(clean.y_train, clean.num_classes, _FLIP_FRACTION.value, seed)
    noisy = dataclasses.replace(clean, name="digits-flipped", y_train=labels)
    npz_path = os.path.join(work_dir, "digits_flipped.npz")
    np.savez(npz_path, x_train=noisy.x_train, y_train=noisy.y_train, x_test=noisy.x_test,
             y_test=noisy.y_test)

    print(f"Retraining: {num_runs} runs per data set on random {SUBSET_RATIO:.0%} subsets")
    runs_noisy = retrain(os.path.join(work_dir, "flipped"), f"npz:{npz_path}", config,
                         num_runs, seed)
    runs_clean = retrain(os.path.join(work_dir, "clean"), "digits", config, num_runs, seed)

    print("Single models on the whole training sets, checkpoint every epoch")
    checkpoints_noisy = train_with_checkpoints(noisy, config, seed)
    checkpoints_clean = train_with_checkpoints(clean, config, seed)

    # 1. Mislabel detection.
    scores = {
        f"memorization ({num_runs} runs)": heldout.memorization(
            runs_noisy.membership, runs_noisy.correctness_train).score,
        f"1 - C-score ({num_runs} runs)": 1 - heldout.cscore(
            [SUBSET_RATIO], [runs_noisy.membership], [runs_noisy.correctness_train],
            [runs_noisy.correctness_test]).train,
    }
    cheap_self, _, seconds = cheap_scores(checkpoints_noisy, noisy, pairwise=False)
    scores.update(cheap_self)
    plot_path = os.path.join(work_dir, "mislabel_detection.png")
    plot_curves(scores, flipped, plot_path)
    header = "".join(f"{f'top {f:.0%}':>9}" for f in INSPECTED)
    lines = [f"Mislabel detection: digits, {flipped.sum()} of {len(flipped)} training "
             f"labels flipped (seed {seed}); fraction of flipped labels found",
             f"{'method':<26}{header}{'ROC AUC':>9}"]
    for name, values in scores.items():
        found = "".join(f"{fraction_found(values, flipped, f):>9.3f}" for f in INSPECTED)
        auc = metrics.roc_auc_score(flipped, np.nan_to_num(values, nan=-np.inf))
        lines.append(f"{name:<26}{found}{auc:>9.3f}")
    membership, correct = runs_noisy.membership, runs_noisy.correctness_train
    fit_in = (correct & membership)[:, flipped].sum() / membership[:, flipped].sum()
    predicted = checkpoints_noisy[-1].model(noisy.x_train).numpy().argmax(axis=1)
    lines.append(f"Flipped labels fitted: {fit_in:.1%} by heldout runs that trained on them, "
                 f"{np.mean(predicted[flipped] == labels[flipped]):.1%} by the single model.")
    print("\n" + "\n".join(lines))
    print(f"(curves: {plot_path})")

    # 2. Agreement with retraining on the clean data set.
    membership = runs_clean.membership
    memorization = heldout.memorization(membership, runs_clean.correctness_train).score
    margin_self = heldout.self_influence(membership, runs_clean.margin_train).score
    influence = heldout.influence(membership, runs_clean.margin_test)
    top_train, top_test, _ = heldout.top_influence_pairs(membership, runs_clean.margin_test,
                                                         _TOP_PAIRS.value)
    half = np.arange(len(membership)) % 2 == 0
    first_train, first_test, _ = heldout.top_influence_pairs(
        membership[half], runs_clean.margin_test[half], _TOP_PAIRS.value)
    influence_first = heldout.influence(membership[half], runs_clean.margin_test[half])
    influence_second = heldout.influence(membership[~half], runs_clean.margin_test[~half])
    rows = {f"heldout split-half ({half.sum()} vs {(~half).sum()} runs)": (
        spearman(heldout.memorization(membership[half],
                                      runs_clean.correctness_train[half]).score,
                 heldout.memorization(membership[~half],
                                      runs_clean.correctness_train[~half]).score),
        spearman(heldout.self_influence(membership[half], runs_clean.margin_train[half]).score,
                 heldout.self_influence(membership[~half],
                                        runs_clean.margin_train[~half]).score),
        spearman(influence_first[first_train, first_test],
                 influence_second[first_train, first_test]),
        spearman(influence_first.ravel(), influence_second.ravel()))}
    clean_self, clean_pairs, clean_seconds = cheap_scores(checkpoints_clean, clean,
                                                          pairwise=True)
    for name, values in clean_self.items():
        pairs = clean_pairs.get(name)
        rows[name] = (spearman(values, memorization), spearman(values, margin_self),
                      np.nan if pairs is None else spearman(pairs[top_train, top_test],
                                                            influence[top_train, top_test]),
                      np.nan if pairs is None else spearman(pairs.ravel(), influence.ravel()))
    lines = [f"Agreement with retraining: clean digits, {len(membership)} runs; Spearman "
             "correlation with heldout estimates",
             f"{'method':<38}{'self~mem':>10}{'self~mSI':>10}"
             f"{f'top-{_TOP_PAIRS.value} pairs':>16}{'all pairs':>11}"]
    for name, values in rows.items():
        cells = "".join(f"{'-' if np.isnan(v) else f'{v:.3f}':>{w}}"
                        for v, w in zip(values, (10, 10, 16, 11), strict=True))
        lines.append(f"{name:<38}{cells}")
    lines.append("self~mem: self-influence vs memorization (correctness); self~mSI: vs margin "
                 "self-influence;")
    lines.append("pairs: train x test scores (margin) vs heldout margin influence, on the "
                 "pairs of highest heldout influence and on all pairs.")
    print("\n" + "\n".join(lines))

    print("\nInfluence functions on the clean model, seconds per phase (EKFAC):")
    print(clean_seconds["IF ekfac"].format())
    tracin_name = next(n for n in clean_seconds if n.startswith("TracIn"))
    print(f"{tracin_name}: {clean_seconds[tracin_name]:.2f} s (self-influence + train x test)")
    print(f"\nTotal {time.time() - start:.0f} s; work directory {work_dir}")


if __name__ == "__main__":
    app.run(main)
