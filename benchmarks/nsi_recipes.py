"""Which training recipes make adding an easy example lower its own margin, and by how much?

The negative-self-influence experiment (full arm: every training example; drop arm: all
but a target set) is repeated under a grid of recipes on the embedded digits data, with
the SAME targets for every setting: 20 random and 20 easy training examples, chosen once
from pilot runs of the base recipe and stored with every setting's experiment. Easy =
highest mean log-odds margin over the pilot runs; the choice never looks at any result.

For each setting the study prints (and writes as CSV) the number of easy / random targets
significant at `--alpha`, how many of those are negative, the mean self-influence over
significant and over all targets, the mean train accuracy of the full arm, and the mean
log-odds margin of the easy targets with and without them in training; one PNG shows each
setting's self-influence (mean over targets, with the interval of that mean) for easy and
random targets.

Runs per arm: chosen by the power planner from the pilot runs (`--runs_per_arm=auto`):
the runs that detect a self-influence of `--effect` on the median target at `--alpha` with
power 0.8, rounded up to a multiple of 50 (bounded by `--max_runs_per_arm`); the effect the
chosen count can detect is printed with the table.

Settings: `--grid` (default `default`: one knob at a time around the base recipe, 9
settings) or `full` (every combination of --label_smoothing x --weight_decay x --epochs x
--models); more settings with `--setting=model=cnn,label_smoothing=0.1,...` (repeatable).

Usage:
  python benchmarks/nsi_recipes.py                      # default grid, ~15 min on 2 cores
  python benchmarks/nsi_recipes.py --grid=full --models=mlp --runs_per_arm=200
  python benchmarks/nsi_recipes.py --setting=model=mlp,label_smoothing=0.3,epochs=20
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from scipy import stats as scipy_stats  # noqa: E402

_ROOT = flags.DEFINE_string("experiment_root", "/tmp/heldout_nsi_recipes",
                            "One experiment directory per setting is made under this.")
_GRID = flags.DEFINE_enum("grid", "default", ["default", "full", "none"],
                          "default: one knob at a time around the base; full: every "
                          "combination; none: only --setting.")
_SETTINGS = flags.DEFINE_multi_string(
    "setting", [], "An extra setting as TrainConfig fields, e.g. "
    "'model=cnn,label_smoothing=0.1,weight_decay=5e-4,epochs=20'.")
_LABEL_SMOOTHING = flags.DEFINE_list("label_smoothing", ["0", "0.1", "0.2"],
                                     "Label smoothing values of the grid.")
_WEIGHT_DECAY = flags.DEFINE_list("weight_decay", ["0", "5e-4", "5e-3"],
                                  "Weight decay values of the grid.")
_EPOCHS = flags.DEFINE_list("epochs", ["10", "40"], "Short and long training, in epochs "
                            "(the base uses the preset's epochs).")
_MODELS = flags.DEFINE_list("models", ["mlp", "cnn"], "Models of the grid.")
_PILOT_RUNS = flags.DEFINE_integer("pilot_runs", 100, "Full-arm runs of the base recipe "
                                   "that the easy targets and the run count come from.")
_TARGETS = flags.DEFINE_string("targets", "random:20,easy:20", "Target groups.")
_RUNS = flags.DEFINE_string("runs_per_arm", "auto", "'auto' (power planner) or a number.")
_EFFECT = flags.DEFINE_float("effect", 0.05, "Self-influence (log-odds) the auto run count "
                             "must detect on the median target.")
_MAX_RUNS = flags.DEFINE_integer("max_runs_per_arm", 500, "Cap of the auto run count.")
_ALPHA = flags.DEFINE_float("alpha", 0.01, "Significance level.")
_TEST = flags.DEFINE_enum("test", "z", ["z", "welch"], "z: the published two-sided normal "
                          "test; welch: Welch's t-test.")
_SEED = flags.DEFINE_integer("seed", 0, "Experiment seed (runs and random targets).")
_OUTPUT = flags.DEFINE_string("output", None, "CSV path (default <root>/nsi_recipes.csv); "
                              "the PNG is written beside it.")

NAME = "nsi"  # target set name; its drop arm is drop-nsi
# A CNN step costs about 25 MLP steps on a CPU, so the default grid trains the CNN at half
# width, 10 epochs and 50 runs per arm to stay within 20 minutes on 2 cores; its rows then
# detect smaller effects less often (the table prints each row's runs).
CHEAPER = {"cnn": {"model_width": 0.5, "epochs": 10, "runs_per_arm": 50}}
STUDY_FIELDS = ("model", "model_width", "label_smoothing", "weight_decay", "epochs")


@dataclasses.dataclass(frozen=True)
class GroupResult:
    """One target group of one setting."""

    targets: int
    significant: int
    negative: int  # significant and below zero
    mean_significant: float
    mean_all: float
    ci_low: float  # interval of mean_all over targets (t, level 1 - alpha)
    ci_high: float
    margin_with: float  # mean log-odds margin of the group's targets, full arm
    margin_without: float  # the same, drop arm


@dataclasses.dataclass(frozen=True)
class SettingResult:
    """The study's row for one recipe."""

    setting: dict
    runs_per_arm: int
    train_accuracy: float  # full arm, on its training examples
    groups: dict[str, GroupResult]
    seconds: float


def base_config():
    """The base recipe: the digits_nsi preset's training settings."""
    from heldout.training import presets

    return presets.preset_config("digits_nsi")


def grid_settings(kind: str, base, label_smoothing, weight_decay, epochs, models
                  ) -> list[dict]:
    """The recipes to study, as dicts of TrainConfig fields that differ from the base."""
    ls = [float(v) for v in label_smoothing]
    wd = [float(v) for v in weight_decay]
    ep = [int(v) for v in epochs]
    settings: list[dict] = []
    if kind == "default":
        settings += [{"label_smoothing": v} for v in ls]
        settings += [{"weight_decay": v} for v in wd if v != base.weight_decay]
        settings += [{"epochs": v} for v in ep if v != base.epochs]
        for model in models:
            if model != base.model:
                cheaper = CHEAPER.get(model, {})
                settings += [{"model": model, **cheaper},
                             {"model": model, **cheaper, "label_smoothing": 0.0}]
    elif kind == "full":
        settings += [{"model": m, "label_smoothing": a, "weight_decay": b, "epochs": e}
                     for m in models for a in ls for b in wd for e in [base.epochs, *ep]]
    unique = []
    for s in settings:
        full = {**{k: getattr(base, k) for k in STUDY_FIELDS}, **s}
        if full not in unique:
            unique.append(full)
    return unique


def parse_setting(text: str, base) -> dict:
    """``model=cnn,label_smoothing=0.1`` -> a full setting dict (unknown fields refused)."""
    fields = {f.name: f.type for f in dataclasses.fields(base)}
    out = {k: getattr(base, k) for k in STUDY_FIELDS}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        key = key.strip()
        if key == "runs_per_arm" and sep:
            out[key] = int(value)
            continue
        if not sep or key not in fields:
            raise ValueError(f"--setting={text}: {key!r} is not a TrainConfig field")
        current = getattr(base, key)
        out[key] = type(current)(value) if not isinstance(current, bool) else \
            value.lower() in ("1", "true", "yes")
    return out


def planned_runs(pilot_logodds: np.ndarray, effect: float, alpha: float,
                 power: float = 0.8) -> tuple[int, float]:
    """Runs per arm that detect `effect` on the median target; and the median sd."""
    from heldout.estimate import stats

    sd = pilot_logodds.std(axis=0, ddof=1)
    needed = stats.runs_per_arm(sd, sd, effect, alpha, power)
    return int(np.ceil(np.median(needed))), float(np.median(sd))


def detectable_effect(sd: float, runs: int, alpha: float, power: float = 0.8) -> float:
    """Smallest |self-influence| a two-sided test at `alpha` finds with `power`."""
    z = scipy_stats.norm.ppf(1 - alpha / 2) + scipy_stats.norm.ppf(power)
    return float(z * math.sqrt(2 * sd ** 2 / runs))


def summarize(experiment_dir: str, test: str, alpha: float, runs_per_arm: int,
              setting: dict, seconds: float) -> SettingResult:
    """The study's row for one trained setting, from its aux arrays."""
    from heldout.estimate import targeted
    from heldout.store import runs as runs_lib

    report = targeted.targeted_self_influence(experiment_dir, NAME, metric="logodds",
                                              test=test, confidence=1 - alpha, progress=False)
    estimate = report.estimate
    full = runs_lib.load_experiment(experiment_dir, "full", progress=False)
    accuracy = float(full.metric("correctness", "train")[full.membership].mean())
    groups = {}
    for group in report.targets.groups:
        rows = np.array([r for r, g in enumerate(report.group) if g == group])
        score = estimate.score[rows]
        significant = estimate.p_value[rows] < alpha
        half = scipy_stats.t.ppf(1 - alpha / 2, len(rows) - 1) * score.std(ddof=1) / \
            math.sqrt(len(rows))
        groups[group] = GroupResult(
            targets=len(rows), significant=int(significant.sum()),
            negative=int((significant & (score < 0)).sum()),
            mean_significant=float(score[significant].mean()) if significant.any()
            else float("nan"),
            mean_all=float(score.mean()), ci_low=float(score.mean() - half),
            ci_high=float(score.mean() + half),
            margin_with=float(estimate.mean_in[rows].mean()),
            margin_without=float(estimate.mean_out[rows].mean()))
    return SettingResult(setting=setting, runs_per_arm=runs_per_arm, train_accuracy=accuracy,
                         groups=groups, seconds=seconds)


def setting_label(setting: dict) -> str:
    width = setting.get("model_width", 1.0)
    return (f"{setting['model']}{'' if width == 1 else f'x{width:g}'} "
            f"ls={setting['label_smoothing']:g} wd={setting['weight_decay']:g} "
            f"ep={setting['epochs']}")


def format_table(results: list[SettingResult], alpha: float, test: str) -> str:
    head = (f"{'setting':<32} {'runs':>5} {'train acc':>9} | {'easy sig':>8} {'neg':>4} "
            f"{'mean sig':>8} {'mean all':>8} {'with':>6} {'without':>7} | {'rand sig':>8} "
            f"{'neg':>4} {'mean sig':>8} {'mean all':>8}")
    lines = [f"Self-influence on the log-odds margin, {test} test, alpha {alpha}; "
             "sig = targets with p < alpha (of 20), neg = of those below zero", head]
    for r in results:
        e, q = r.groups.get("easy"), r.groups.get("random")
        lines.append(
            f"{setting_label(r.setting):<32} {r.runs_per_arm:>5} {r.train_accuracy:>9.4f} | "
            f"{e.significant:>8} {e.negative:>4} {e.mean_significant:>+8.3f} "
            f"{e.mean_all:>+8.3f} {e.margin_with:>6.2f} {e.margin_without:>7.2f} | "
            f"{q.significant:>8} {q.negative:>4} {q.mean_significant:>+8.3f} "
            f"{q.mean_all:>+8.3f}")
    return "\n".join(lines)


def write_csv(results: list[SettingResult], path: str) -> None:
    from heldout.store import files

    header = [*STUDY_FIELDS, "runs_per_arm", "train_accuracy"]
    groups = ["easy", "random"]
    fields = [f.name for f in dataclasses.fields(GroupResult)]
    header += [f"{g}_{f}" for g in groups for f in fields]
    rows = []
    for r in results:
        row = [r.setting.get(k, "") for k in STUDY_FIELDS] + [r.runs_per_arm,
                                                               r.train_accuracy]
        row += [getattr(r.groups[g], f) for g in groups for f in fields]
        rows.append(row)
    files.write_csv(path, header, rows)


def plot(results: list[SettingResult], path: str, alpha: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 0.45 * len(results) + 1.5))
    y = np.arange(len(results))
    for offset, group, color in ((-0.15, "easy", "tab:red"), (0.15, "random", "tab:blue")):
        mean = np.array([r.groups[group].mean_all for r in results])
        low = np.array([r.groups[group].ci_low for r in results])
        high = np.array([r.groups[group].ci_high for r in results])
        ax.errorbar(mean, y + offset, xerr=[mean - low, high - mean], fmt="o", color=color,
                    capsize=3, label=f"{group} targets")
    ax.axvline(0, color="gray", lw=0.8)
    ax.set_yticks(y, [setting_label(r.setting) for r in results])
    ax.invert_yaxis()
    ax.set_xlabel(f"mean self-influence on log-odds margin ({100 * (1 - alpha):.0f}% interval "
                  "over the 20 targets)")
    ax.set_title("Negative self-influence on digits: which recipes produce it")
    ax.legend(loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_study(root: str, base, settings: list[dict], runs: str, pilot_runs: int,
              targets: str, effect: float, max_runs: int, alpha: float, test: str, seed: int,
              log=print) -> tuple[list[SettingResult], str]:
    """Pilot, targets, run count, then both arms of every setting; rows and a plan line.

    Args:
        root: directory under which the pilot and one experiment per setting are made.
        base: the base `TrainConfig`; the pilot uses it and settings override its fields.
        settings: TrainConfig fields per setting (`grid_settings`, `parse_setting`).
        runs: ``"auto"`` (power planner, bounded by `max_runs`) or a number of runs.
    """
    from heldout.store import runs as runs_lib
    from heldout.store import targets as targets_lib
    from heldout.training import experiment

    pilot_dir = os.path.join(root, "pilot")
    log(f"pilot: {pilot_runs} full runs of the base recipe in {pilot_dir}")
    pilot_config = dataclasses.replace(base, models_at_once=min(base.models_at_once,
                                                                pilot_runs))
    experiment.train_targeted_experiment(pilot_dir, "digits", pilot_config, NAME, [],
                                         choose=targets,
                                         pilot_runs=pilot_runs, seed=seed, progress=False,
                                         arms=())
    target_set = targets_lib.find_targets(pilot_dir, NAME)
    pilot = runs_lib.load_experiment(pilot_dir, "full", progress=False)
    index = np.array(sorted(i for g in target_set.groups.values() for i in g))
    needed, sd = planned_runs(pilot.metric("logodds", "train")[:, index], effect, alpha)
    if runs == "auto":
        runs_per_arm = int(min(max_runs, max(50, 50 * math.ceil(needed / 50))))
    else:
        runs_per_arm = int(runs)
    plan = (f"runs per arm: {runs_per_arm} ({'power planner' if runs == 'auto' else 'given'}: "
            f"{needed} runs detect |self-influence| >= {effect} on the median target at alpha "
            f"{alpha} with power 0.8, from {pilot.num_runs} pilot runs, median sd {sd:.3f}); "
            f"with {runs_per_arm} runs the detectable effect is "
            f"{detectable_effect(sd, runs_per_arm, alpha):.3f}")
    log(plan)
    results = []
    for i, setting in enumerate(settings):
        # K-at-once groups are padded to models_at_once, so a group as large as the arm
        # wastes nothing; runs are bit-identical whatever their group (a speed setting).
        fields = {k: v for k, v in setting.items() if k != "runs_per_arm"}
        runs_here = int(setting.get("runs_per_arm", runs_per_arm))
        config = dataclasses.replace(base, **fields,
                                     models_at_once=min(base.models_at_once, runs_here))
        directory = os.path.join(root, "setting_" + "_".join(
            f"{k}={v}" for k, v in sorted(setting.items())))
        targets_lib.save_targets(directory, target_set)
        start = time.perf_counter()
        experiment.train_targeted_experiment(directory, "digits", config, NAME,
                                             range(runs_here), seed=seed, progress=False)
        seconds = time.perf_counter() - start
        results.append(summarize(directory, test, alpha, runs_here, setting, seconds))
        log(f"[{i + 1}/{len(settings)}] {setting_label(setting)}: {seconds:.0f} s")
    return results, plan


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    start = time.perf_counter()
    base = base_config()
    settings = grid_settings(_GRID.value, base, _LABEL_SMOOTHING.value, _WEIGHT_DECAY.value,
                             _EPOCHS.value, _MODELS.value)
    settings += [parse_setting(s, base) for s in _SETTINGS.value]
    if not settings:
        raise app.UsageError("--grid=none needs at least one --setting")
    print(f"{len(settings)} settings; base recipe: model={base.model}, label_smoothing="
          f"{base.label_smoothing}, weight_decay={base.weight_decay}, epochs={base.epochs}, "
          f"batch_size={base.batch_size}, learning_rate={base.learning_rate}; "
          f"test: {_TEST.value}")
    results, plan = run_study(_ROOT.value, base, settings, _RUNS.value, _PILOT_RUNS.value,
                              _TARGETS.value, _EFFECT.value, _MAX_RUNS.value, _ALPHA.value,
                              _TEST.value, _SEED.value)
    print()
    print(plan)
    print(format_table(results, _ALPHA.value, _TEST.value))
    output = _OUTPUT.value or os.path.join(_ROOT.value, "nsi_recipes.csv")
    write_csv(results, output)
    png = os.path.splitext(output)[0] + ".png"
    plot(results, png, _ALPHA.value)
    print(f"\nwrote {output} and {png}; {time.perf_counter() - start:.0f} s in all")


if __name__ == "__main__":
    app.run(main)
