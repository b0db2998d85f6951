"""Tests of the targeted self-influence workflow: heldout/targeted.py (report, table,
files, plot, power plan), stats.runs_per_arm, experiment.train_targeted_experiment on
real (tiny) training, and the train.py / estimate.py command lines.

The synthetic experiment plants known effects on the log-odds margins of some target
examples (+1, -1 or 0, noise sd 1) in a ``full`` arm of 200 runs and a ``drop-t`` arm
of 170 runs (unequal, so Welch's test differs from Student's), with fixed seeds. All
expected numbers are computed here from the planted arrays with NumPy and SciPy.
"""

import csv
import json
import math
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats as sp_stats

import heldout
from heldout.estimate import export, stats, targeted
from heldout.estimate.config import TargetedConfig
from heldout.store import runs, targets
from heldout.store.targets import TargetSet
from heldout.training.core import TrainConfig

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]

NUM_TRAIN, NUM_TEST = 30, 4
RUNS_WITH, RUNS_WITHOUT = 200, 170
# Planted self-influence on log-odds, per target index, by group.
PLANTED = {
    "random": {2: 1.0, 5: 1.0, 11: -1.0, 17: 0.0, 23: 0.0},
    "easy": {3: -1.0, 8: -1.0, 14: -1.0, 20: 1.0, 27: 0.0},
}
EFFECT = {i: e for group in PLANTED.values() for i, e in group.items()}
TARGET_INDICES = np.array(sorted(EFFECT))
# The report's row order: by group, then by index.
ROW_INDEX = [i for group in PLANTED.values() for i in sorted(group)]
ROW_GROUP = [g for g, group in PLANTED.items() for _ in sorted(group)]


class Synthetic:
    """Where the synthetic experiment is and the float32 values its runs hold."""

    def __init__(self, directory, logodds_with, logodds_without, labels):
        self.directory = directory
        self.logodds_with = logodds_with.astype(np.float64)  # [RUNS_WITH, NUM_TRAIN]
        self.logodds_without = logodds_without.astype(np.float64)
        self.labels = labels

    def with_(self, index):
        return self.logodds_with[:, index]

    def without(self, index):
        return self.logodds_without[:, index]


def _write_arm(directory, subset, values, test_values, subset_idx, margins=True):
    for r in range(len(values)):
        margin = 0.5 * values[r] if margins else None
        margin_test = 0.5 * test_values[r] if margins else None
        arrays = runs.aux_arrays(
            subset_idx, values[r] > 0, test_values[r] > 0, margin_train=margin,
            margin_test=margin_test, logodds_train=values[r], logodds_test=test_values[r])
        runs.save_run(runs.run_dir(directory, subset, r), arrays)


def _make_synthetic(directory, margins=True, seed=0, arms=("full", "drop-t"),
                    runs_with=RUNS_WITH, runs_without=RUNS_WITHOUT):
    rng = np.random.default_rng(seed)
    base = rng.normal(2.0, 1.0, size=NUM_TRAIN)
    effect = np.zeros(NUM_TRAIN)
    effect[list(EFFECT)] = list(EFFECT.values())
    with_ = (base + effect + rng.normal(size=(runs_with, NUM_TRAIN))).astype(np.float32)
    without = (base + rng.normal(size=(runs_without, NUM_TRAIN))).astype(np.float32)
    test_with = rng.normal(size=(runs_with, NUM_TEST)).astype(np.float32)
    test_without = rng.normal(size=(runs_without, NUM_TEST)).astype(np.float32)
    keep = np.setdiff1d(np.arange(NUM_TRAIN), TARGET_INDICES)
    if "full" in arms:
        _write_arm(directory, "full", with_, test_with, np.arange(NUM_TRAIN), margins)
    if "drop-t" in arms:
        _write_arm(directory, "drop-t", without, test_without, keep, margins)
    targets.save_targets(directory, TargetSet(
        name="t", groups={g: tuple(group) for g, group in PLANTED.items()}))
    labels = rng.integers(0, 10, size=NUM_TRAIN)
    return Synthetic(directory, with_, without, labels)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return _make_synthetic(str(tmp_path_factory.mktemp("synthetic") / "exp"))


@pytest.fixture(scope="module")
def report(synthetic):
    return targeted.targeted_self_influence(synthetic.directory, "t", test="welch",
                                            progress=False)


def _scipy_welch(synthetic):
    return [sp_stats.ttest_ind(synthetic.with_(i), synthetic.without(i), equal_var=False)
            for i in ROW_INDEX]


# --- the report on planted effects ----------------------------------------------------


def test_report_rows_groups_and_counts(report):
    assert list(report.index) == ROW_INDEX
    assert report.group == ROW_GROUP
    assert report.metric == "logodds" and report.test == "welch"
    assert report.confidence == 0.99
    assert report.runs_with == RUNS_WITH and report.runs_without == RUNS_WITHOUT
    np.testing.assert_array_equal(report.estimate.num_in, RUNS_WITH)
    np.testing.assert_array_equal(report.estimate.num_out, RUNS_WITHOUT)


def test_report_finds_exactly_the_planted_effects(report):
    significant = {int(i) for i, p in zip(report.index, report.estimate.p_value, strict=True)
                   if p < 0.01}
    assert significant == {i for i, e in EFFECT.items() if e != 0}
    for i, score in zip(report.index, report.estimate.score, strict=True):
        if EFFECT[int(i)] != 0:
            assert np.sign(score) == EFFECT[int(i)]
            assert abs(score - EFFECT[int(i)]) < 0.5  # se ~0.1


def test_report_matches_scipy_welch(synthetic, report):
    results = _scipy_welch(synthetic)
    estimate = report.estimate
    for r, (i, result) in enumerate(zip(ROW_INDEX, results, strict=True)):
        with_, without = synthetic.with_(i), synthetic.without(i)
        assert estimate.mean_in[r] == pytest.approx(with_.mean(), rel=1e-9, abs=1e-12)
        assert estimate.mean_out[r] == pytest.approx(without.mean(), rel=1e-9, abs=1e-12)
        assert estimate.score[r] == pytest.approx(with_.mean() - without.mean(), abs=1e-9)
        se = math.sqrt(with_.var(ddof=1) / len(with_) + without.var(ddof=1) / len(without))
        assert estimate.stderr[r] == pytest.approx(se, rel=1e-9)
        assert estimate.p_value[r] == pytest.approx(result.pvalue, rel=1e-9, abs=1e-300)
        ci = result.confidence_interval(0.99)
        assert estimate.ci_low[r] == pytest.approx(ci.low, abs=1e-9)
        assert estimate.ci_high[r] == pytest.approx(ci.high, abs=1e-9)


def test_report_z_test_matches_normal_formula(synthetic):
    report = targeted.targeted_self_influence(synthetic.directory, "t", test="z",
                                              confidence=0.9, progress=False)
    assert report.test == "z"
    for r, i in enumerate(ROW_INDEX):
        with_, without = synthetic.with_(i), synthetic.without(i)
        diff = with_.mean() - without.mean()
        se = math.sqrt(with_.var(ddof=1) / len(with_) + without.var(ddof=1) / len(without))
        p = 2 * sp_stats.norm.sf(abs(diff / se))
        assert report.estimate.p_value[r] == pytest.approx(p, rel=1e-9, abs=1e-300)
        half = sp_stats.norm.ppf(0.95) * se
        assert report.estimate.ci_low[r] == pytest.approx(diff - half, abs=1e-9)
        assert report.estimate.ci_high[r] == pytest.approx(diff + half, abs=1e-9)


def test_report_by_file_path_equals_by_name(synthetic, report):
    path = targets.targets_path(synthetic.directory, "t")
    by_path = targeted.targeted_self_influence(synthetic.directory, path, test="welch",
                                               progress=False)
    np.testing.assert_array_equal(by_path.index, report.index)
    np.testing.assert_array_equal(by_path.estimate.p_value, report.estimate.p_value)


def test_report_other_metrics(synthetic):
    margin = targeted.targeted_self_influence(synthetic.directory, "t", metric="margin",
                                              progress=False)
    for r, i in enumerate(ROW_INDEX):  # the margins are 0.5 * log-odds, in float32
        expected = (np.float32(0.5) * synthetic.with_(i).astype(np.float32)).mean(
            dtype=np.float64)
        assert margin.estimate.mean_in[r] == pytest.approx(expected, rel=1e-9)
    correctness = targeted.targeted_self_influence(synthetic.directory, "t",
                                                   metric="correctness", progress=False)
    for r, i in enumerate(ROW_INDEX):
        expected = (synthetic.with_(i) > 0).mean() - (synthetic.without(i) > 0).mean()
        assert correctness.estimate.score[r] == pytest.approx(expected, abs=1e-12)


# --- the printed table ----------------------------------------------------------------


def _table_rows(text):
    """(group, index, label, with, without, self-influence, p, flagged) of table lines."""
    rows = []
    for line in text.splitlines()[2:]:
        if not line.strip():
            break
        parts = line.split()
        rows.append((parts[0], int(parts[1]), parts[2], float(parts[3]), float(parts[4]),
                     float(parts[5]), float(parts[6]), parts[-1] == "*"))
    return rows


def _summary_lines(text):
    return text.split("\n\n", 1)[1].splitlines()


@pytest.mark.parametrize("alpha", [0.01, 0.3])
def test_table_shows_significant_rows_only(synthetic, report, alpha):
    text = targeted.format_targeted_report(report, alpha=alpha)
    p_values = [r.pvalue for r in _scipy_welch(synthetic)]
    expected = [(g, i) for g, i, p in zip(ROW_GROUP, ROW_INDEX, p_values, strict=True)
                if p < alpha]
    rows = _table_rows(text)
    assert [(row[0], row[1]) for row in rows] == expected
    assert not any(row[7] for row in rows)


def test_table_show_all_flags_non_significant(synthetic, report):
    text = targeted.format_targeted_report(report, alpha=0.01, show_all=True)
    rows = _table_rows(text)
    assert [(row[0], row[1]) for row in rows] == list(zip(ROW_GROUP, ROW_INDEX, strict=True))
    p_values = [r.pvalue for r in _scipy_welch(synthetic)]
    assert [row[7] for row in rows] == [p >= 0.01 for p in p_values]


def test_table_columns_with_is_the_full_arm(synthetic, report):
    text = targeted.format_targeted_report(report, show_all=True, labels=synthetic.labels)
    header = text.splitlines()[1]
    assert header.index("mean with") < header.index("mean without")
    assert "with the targets (full)" in text.splitlines()[0]
    for _, index, label, with_, without, score, _, _ in _table_rows(text):
        assert with_ == pytest.approx(synthetic.with_(index).mean(), abs=6e-4)
        assert without == pytest.approx(synthetic.without(index).mean(), abs=6e-4)
        diff = synthetic.with_(index).mean() - synthetic.without(index).mean()
        assert score == pytest.approx(diff, abs=6e-4)
        assert label == str(synthetic.labels[index])
        if EFFECT[index] > 0:
            assert with_ > without and score > 0
        elif EFFECT[index] < 0:
            assert with_ < without and score < 0


def test_table_group_averages(synthetic, report):
    text = targeted.format_targeted_report(report, alpha=0.01)
    p_values = dict(zip(ROW_INDEX, (r.pvalue for r in _scipy_welch(synthetic)), strict=True))
    expected = []
    for group, members in PLANTED.items():
        diffs = {i: synthetic.with_(i).mean() - synthetic.without(i).mean() for i in members}
        chosen = [diffs[i] for i in members if p_values[i] < 0.01]
        expected.append(
            f"{group}: {len(chosen)} of {len(members)} significant; mean self-influence "
            f"{np.mean(chosen):+.3f} over significant rows, "
            f"{np.mean(list(diffs.values())):+.3f} over all rows")
    assert _summary_lines(text) == expected
    # The planted averages, roughly: random (+1, +1, -1) and easy (-1, -1, -1, +1).
    assert "random: 3 of 5 significant; mean self-influence +0.3" in text
    assert "easy: 4 of 5 significant; mean self-influence -0.5" in text


# --- files and figure -----------------------------------------------------------------


def test_save_report_npz_round_trip(synthetic, report, tmp_path):
    path = str(tmp_path / "out" / "report.npz")
    os.makedirs(tmp_path / "out")
    export.save_targeted_report(report, path, alpha=0.01)
    with np.load(path) as npz:
        saved = {key: npz[key] for key in npz.files}
    estimate = report.estimate
    np.testing.assert_array_equal(saved["index"], ROW_INDEX)
    assert list(saved["group"]) == ROW_GROUP
    for key, value in (("mean_with", estimate.mean_in), ("mean_without", estimate.mean_out),
                       ("num_with", estimate.num_in), ("num_without", estimate.num_out),
                       ("self_influence", estimate.score), ("stderr", estimate.stderr),
                       ("p_value", estimate.p_value), ("ci_low", estimate.ci_low),
                       ("ci_high", estimate.ci_high)):
        np.testing.assert_array_equal(saved[key], value)
    p_values = np.array([r.pvalue for r in _scipy_welch(synthetic)])
    np.testing.assert_array_equal(saved["significant"], p_values < 0.01)
    np.testing.assert_allclose(saved["mean_with"],
                               [synthetic.with_(i).mean() for i in ROW_INDEX], rtol=1e-9)


def test_load_targeted_report_returns_what_was_saved(report, tmp_path):
    path = str(tmp_path / "report.npz")
    export.save_targeted_report(report, path, alpha=0.01)
    loaded = export.load_targeted_report(path)
    assert loaded.targets == report.targets and loaded.group == report.group
    assert (loaded.metric, loaded.test, loaded.confidence, loaded.runs_with,
            loaded.runs_without) == (report.metric, report.test, report.confidence,
                                     report.runs_with, report.runs_without)
    np.testing.assert_array_equal(loaded.index, report.index)
    for field in ("score", "mean_in", "mean_out", "num_in", "num_out", "stderr", "p_value",
                  "ci_low", "ci_high"):
        np.testing.assert_array_equal(getattr(loaded.estimate, field),
                                      getattr(report.estimate, field), err_msg=field)


def test_csv_round_trip(synthetic, report, tmp_path):
    path = str(tmp_path / "tables" / "t.csv")
    assert export.write_targeted_csv(report, path, synthetic.labels) == path
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(row["index"]) for row in rows] == ROW_INDEX
    assert [row["group"] for row in rows] == ROW_GROUP
    estimate = report.estimate
    for r, row in enumerate(rows):
        assert int(row["label"]) == synthetic.labels[ROW_INDEX[r]]
        assert int(row["num_with"]) == RUNS_WITH and int(row["num_without"]) == RUNS_WITHOUT
        for column, value in (("mean_with", estimate.mean_in), ("mean_without",
                              estimate.mean_out), ("self_influence", estimate.score),
                              ("stderr", estimate.stderr), ("ci_low", estimate.ci_low),
                              ("ci_high", estimate.ci_high), ("p_value", estimate.p_value)):
            assert float(row[column]) == pytest.approx(value[r], rel=1e-5)
    no_labels = str(tmp_path / "t2.csv")
    export.write_targeted_csv(report, no_labels)
    with open(no_labels, newline="") as f:
        assert {row["label"] for row in csv.DictReader(f)} == {"-"}


def test_plot_writes_png(report, tmp_path):
    path = str(tmp_path / "plots" / "t.png")
    os.makedirs(tmp_path / "plots")
    targeted.plot_targeted_report(report, path)
    content = pathlib.Path(path).read_bytes()
    assert content[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(content) > 2000


# --- errors ---------------------------------------------------------------------------


def test_margin_metric_without_margins_names_metric(tmp_path):
    directory = str(tmp_path / "no_margins")
    _make_synthetic(directory, margins=False, runs_with=6, runs_without=6)
    with pytest.raises(ValueError, match="^metric=margin"):
        targeted.targeted_self_influence(directory, "t", metric="margin", progress=False)
    # Log-odds are there, so the default metric works.
    report = targeted.targeted_self_influence(directory, "t", progress=False)
    assert report.runs_with == 6


def test_missing_arm_names_it(tmp_path):
    only_full = str(tmp_path / "only_full")
    _make_synthetic(only_full, arms=("full",), runs_with=6, runs_without=6)
    with pytest.raises(ValueError, match="has no drop-t runs"):
        targeted.targeted_self_influence(only_full, "t", progress=False)
    only_drop = str(tmp_path / "only_drop")
    _make_synthetic(only_drop, arms=("drop-t",), runs_with=6, runs_without=6)
    with pytest.raises(ValueError, match="has no full runs"):
        targeted.targeted_self_influence(only_drop, "t", progress=False)


def test_unknown_target_set_names_targets(synthetic):
    with pytest.raises(ValueError, match=r"^targets=nope: .*stored: t\)"):
        targeted.targeted_self_influence(synthetic.directory, "nope", progress=False)


# --- power ----------------------------------------------------------------------------


def _closed_form(sd_in, sd_out, effect, alpha, power):
    z = sp_stats.norm.ppf(1 - alpha / 2) + sp_stats.norm.ppf(power)
    return np.ceil(z**2 * (np.square(sd_in) + np.square(sd_out)) / effect**2)


def test_runs_per_arm_textbook_answer():
    # Two-sample z-test, d = 0.5 sd, alpha 0.05, power 0.8: 63 per group.
    assert stats.runs_per_arm(1.0, 1.0, 0.5, 0.05, 0.8) == 63


@pytest.mark.parametrize("alpha, power, effect", [
    (0.01, 0.8, 0.25), (0.05, 0.9, 0.1), (0.001, 0.5, 1.3)])
def test_runs_per_arm_closed_form(alpha, power, effect):
    rng = np.random.default_rng(4)
    sd_in, sd_out = rng.uniform(0.1, 3.0, size=50), rng.uniform(0.1, 3.0, size=50)
    got = stats.runs_per_arm(sd_in, sd_out, effect, alpha, power)
    np.testing.assert_array_equal(got, _closed_form(sd_in, sd_out, effect, alpha, power))


@pytest.mark.parametrize("kwargs, parameter", [
    ({"effect": 0.0}, "effect"), ({"effect": -1.0}, "effect"),
    ({"alpha": 0.0}, "alpha"), ({"alpha": 1.0}, "alpha"),
    ({"power": 0.0}, "power"), ({"power": 1.0}, "power")])
def test_runs_per_arm_rejects(kwargs, parameter):
    arguments = {"effect": 0.5, "alpha": 0.01, "power": 0.8, **kwargs}
    with pytest.raises(ValueError, match=f"^{parameter}=") as error:
        stats.runs_per_arm(1.0, 1.0, **arguments)
    assert error.value.parameter == parameter


def test_plan_runs_uses_per_example_sd_of_the_full_arm(synthetic):
    plan = targeted.plan_runs(synthetic.directory, 0.25, alpha=0.01, power=0.8,
                              indices=TARGET_INDICES, progress=False)
    sd = synthetic.logodds_with[:, TARGET_INDICES].std(axis=0, ddof=1)
    np.testing.assert_allclose(plan.sd, sd, rtol=1e-6)  # computed in float32
    np.testing.assert_array_equal(plan.runs_needed, _closed_form(sd, sd, 0.25, 0.01, 0.8))
    assert plan.pilot_runs == RUNS_WITH
    text = targeted.format_plan(plan, "logodds")
    assert f"Power plan from {RUNS_WITH} pilot runs" in text
    median = np.percentile(plan.runs_needed, 50)
    assert f"median example: {median:.0f} (sd {np.percentile(sd, 50):.3f})" in text
    assert f"hardest example: {plan.runs_needed.max():.0f}" in text
    every = targeted.plan_runs(synthetic.directory, 0.5, progress=False)
    assert every.sd.shape == (NUM_TRAIN,)
    np.testing.assert_allclose(every.sd, synthetic.logodds_with.std(axis=0, ddof=1),
                               rtol=1e-6)
    # ddof=0 would be smaller by sqrt(199/200), far outside that tolerance.
    assert not np.allclose(every.sd, synthetic.logodds_with.std(axis=0), rtol=1e-4)


def test_plan_needs_two_pilot_runs(tmp_path):
    directory = str(tmp_path / "one")
    _make_synthetic(directory, arms=("full",), runs_with=1)
    with pytest.raises(ValueError, match="^plan: "):
        targeted.plan_runs(directory, 0.25, progress=False)


# --- real training, tiny --------------------------------------------------------------

# batch 450: the full arm (1352 examples) takes 4 steps per epoch, while the drop arm
# (1346) would take 3 on its own, so equal steps are a real requirement here. XLA off:
# it changes speed only, and compiling for three group sizes costs more than it saves.
TINY = TrainConfig(epochs=2, models_at_once=8, batch_size=450, xla=False)
NUM_DIGITS_TRAIN = 1352


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("trained") / "exp")
    summaries = heldout.train_targeted_experiment(
        directory, "digits", TINY, "t", range(6), choose="random:3,easy:3", pilot_runs=4,
        progress=False)
    return directory, summaries


def _aux(directory, subset, run_id):
    with np.load(os.path.join(directory, subset, str(run_id), "aux_arrays.npz")) as npz:
        return {key: npz[key] for key in npz.files}


def _info(directory, subset, run_id):
    with open(os.path.join(directory, subset, str(run_id), "run.json")) as f:
        return json.load(f)


def test_training_writes_target_file_and_both_arms(trained):
    directory, summaries = trained
    assert [(s.subset, s.trained) for s in summaries] == [
        ("full", (0, 1, 2, 3)), ("full", (4, 5)), ("drop-t", (0, 1, 2, 3, 4, 5))]
    stored = targets.load_targets(os.path.join(directory, "targets", "t.json"))
    assert list(stored.groups) == ["random", "easy"]
    assert len(stored.groups["random"]) == 3 and len(stored.groups["easy"]) == 3
    assert len(stored.indices) == 6
    assert stored.provenance["spec"] == "random:3,easy:3"
    for subset in ("full", "drop-t"):
        assert sorted(int(r) for r in os.listdir(os.path.join(directory, subset))) == list(
            range(6))


def test_easy_targets_are_easiest_over_the_pilot(trained):
    directory, _ = trained
    stored = targets.load_targets(os.path.join(directory, "targets", "t.json"))
    pilot = np.zeros((4, NUM_DIGITS_TRAIN))
    for r in range(4):
        aux = _aux(directory, "full", r)
        pilot[r, aux["index_train"]] = aux["logodds_train"]
    mean = pilot.mean(axis=0)
    mean[list(stored.groups["random"])] = -np.inf
    assert set(stored.groups["easy"]) == {int(i) for i in np.argsort(-mean)[:3]}


def test_arms_train_on_the_right_examples_at_equal_steps(trained):
    directory, _ = trained
    stored = targets.load_targets(os.path.join(directory, "targets", "t.json"))
    keep = np.setdiff1d(np.arange(NUM_DIGITS_TRAIN), stored.indices)
    steps_per_epoch = math.ceil(NUM_DIGITS_TRAIN / TINY.batch_size)
    assert steps_per_epoch != math.ceil(len(keep) / TINY.batch_size)
    for r in range(6):
        full_aux, drop_aux = _aux(directory, "full", r), _aux(directory, "drop-t", r)
        np.testing.assert_array_equal(full_aux["subsample_idx"], np.arange(NUM_DIGITS_TRAIN))
        np.testing.assert_array_equal(drop_aux["subsample_idx"], keep)
        np.testing.assert_array_equal(drop_aux["index_removed"], stored.indices)
        assert len(drop_aux["logodds_removed"]) == 6
        full_info, drop_info = _info(directory, "full", r), _info(directory, "drop-t", r)
        assert full_info["num_train_examples"] == NUM_DIGITS_TRAIN
        assert drop_info["num_train_examples"] == NUM_DIGITS_TRAIN - 6
        assert full_info["optimizer_steps"] == drop_info["optimizer_steps"]
        assert drop_info["optimizer_steps"] == TINY.epochs * steps_per_epoch
        assert drop_info["subset"] == "drop-t"
        assert drop_info["targets"]["name"] == "t"
        assert drop_info["targets"]["groups"] == {
            g: list(v) for g, v in stored.groups.items()}


def test_rerun_trains_nothing_and_other_spec_is_refused(trained):
    directory, _ = trained
    again = heldout.train_targeted_experiment(
        directory, "digits", TINY, "t", range(6), choose="random:3,easy:3", pilot_runs=4,
        progress=False)
    assert all(s.trained == () for s in again)
    assert again[-1].already_complete == tuple(range(6))
    with pytest.raises(ValueError, match="t.json"):
        heldout.train_targeted_experiment(directory, "digits", TINY, "t", range(6),
                                          choose="random:4", progress=False)
    with pytest.raises(ValueError, match="t.json"):
        heldout.train_targeted_experiment(directory, "digits", TINY, "t", range(6),
                                          indices="1,2,3", progress=False)
    assert sorted(os.listdir(os.path.join(directory, "drop-t"))) == [str(r) for r in range(6)]


def test_report_on_trained_runs(trained):
    directory, _ = trained
    report = targeted.targeted_self_influence(directory, "t", min_runs=2, progress=False)
    stored = targets.load_targets(os.path.join(directory, "targets", "t.json"))
    assert sorted(report.index) == sorted(stored.indices)
    values_with = np.stack([_aux(directory, "full", r)["logodds_train"] for r in range(6)])
    r0 = report.group.index("easy")
    index = report.index[r0]
    assert report.estimate.mean_in[r0] == pytest.approx(values_with[:, index].mean(),
                                                        rel=1e-6)


# --- command lines --------------------------------------------------------------------
# The three commands start together with the first test of this file (each spends most
# of its time importing TensorFlow) and are awaited by the tests below.


def _start(script, *args):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.Popen([sys.executable, script, *args], cwd=REPO_ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module", autouse=True)
def cli_processes(synthetic, tmp_path_factory):
    """Starts the commands at the first test, so they run while the others do."""
    root = tmp_path_factory.mktemp("cli")
    copy = str(root / "copy")
    shutil.copytree(synthetic.directory, copy)
    processes = {
        "train_drop": _start("train.py", f"--experiment_dir={root / 'train'}",
                             "--subset=drop-x", "--num_runs=2", "--progress=false"),
        "unknown_targets": _start("estimate.py", f"--experiment_dir={synthetic.directory}",
                                  "--targets=nope", "--progress=false"),
        "all_plan": _start("estimate.py", f"--experiment_dir={copy}", "--targets=t", "--all",
                           "--plan", "--test=welch", "--progress=false"),
    }
    yield {"processes": processes, "train_dir": root / "train", "copy": copy}
    for process in processes.values():
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def cli(cli_processes):
    """name -> (returncode, stdout, stderr), plus the directories the commands used."""
    results = {}
    for name, process in cli_processes["processes"].items():
        stdout, stderr = process.communicate(timeout=180)
        results[name] = (process.returncode, stdout, stderr)
    return {**cli_processes, "results": results}


def _error_lines(stderr):
    return [line for line in stderr.splitlines() if "error:" in line]


def test_train_drop_without_targets_is_a_one_line_error(cli):
    returncode, _, stderr = cli["results"]["train_drop"]
    assert returncode != 0
    assert "Traceback" not in stderr
    lines = _error_lines(stderr)
    assert len(lines) == 1 and lines[0].startswith("train.py: error:")
    assert "--targets" in lines[0]
    assert not os.path.exists(cli["train_dir"] / "drop-x")


def test_estimate_unknown_targets_is_a_one_line_error(cli):
    returncode, _, stderr = cli["results"]["unknown_targets"]
    assert returncode != 0
    assert "Traceback" not in stderr
    lines = _error_lines(stderr)
    assert len(lines) == 1 and lines[0].startswith("estimate.py: error: --targets=nope")


def test_estimate_targets_all_plan(cli):
    returncode, out, stderr = cli["results"]["all_plan"]
    assert returncode == 0, stderr
    assert f"Power plan from {RUNS_WITH} pilot runs" in out
    assert "Targeted self-influence on logodds (welch test)" in out
    assert out.index("Power plan") < out.index("Targeted self-influence")
    table = out[out.index("Targeted self-influence"):]
    rows = _table_rows(table)
    assert [(row[0], row[1]) for row in rows] == list(zip(ROW_GROUP, ROW_INDEX, strict=True))
    assert "random: 3 of 5 significant" in out and "easy: 4 of 5 significant" in out
    saved = os.path.join(cli["copy"], "self_influence-t.npz")
    assert f"Saved {saved}" in out
    with np.load(saved) as npz:
        np.testing.assert_array_equal(npz["index"], ROW_INDEX)


def test_targeted_report_uses_the_published_z_test_by_default(synthetic, tmp_path):
    """estimate.py without --test gives the published table's two-sided z-test."""
    import heldout

    copy = str(tmp_path / "copy")
    shutil.copytree(synthetic.directory, copy)
    report = str(heldout.run_estimate(heldout.estimate_job(
        {"experiment_dir": copy, "targets": "t", "progress": False})))
    assert "Targeted self-influence on logodds (z test)" in report
    welch = str(heldout.run_estimate(heldout.estimate_job(
        {"experiment_dir": copy, "targets": "t", "test": "welch", "progress": False})))
    assert "(welch test)" in welch


def test_library_default_test_is_the_published_z_as_in_targeted_config(synthetic):
    """One owner: the function's default test is `TargetedConfig`'s (the CLI's), z."""
    default = targeted.targeted_self_influence(synthetic.directory, "t", progress=False)
    z = targeted.targeted_self_influence(synthetic.directory, "t", test="z", progress=False)
    assert default.test == "z" == TargetedConfig().test
    np.testing.assert_array_equal(default.estimate.p_value, z.estimate.p_value)
