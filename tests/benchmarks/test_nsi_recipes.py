"""The recipe study's numbers against an independent recomputation from the aux arrays.

A tiny study (2 settings, few runs, 2 epochs) is run through `benchmarks/nsi_recipes.py`;
every number of its rows is then recomputed from the runs' ``aux_arrays.npz`` files read
with NumPy alone, with scipy's Welch test and a normal two-sided z-test.
"""

import dataclasses
import importlib.util
import json
import math
import pathlib
import sys

import numpy as np
import pytest
from scipy import stats as scipy_stats

from heldout.training.core import TrainConfig

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


def _study_module():
    """benchmarks/nsi_recipes.py, loaded once (its absl flags can be defined only once)."""
    if "nsi_recipes" not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            "nsi_recipes", REPO_ROOT / "benchmarks" / "nsi_recipes.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["nsi_recipes"] = module
        spec.loader.exec_module(module)
    return sys.modules["nsi_recipes"]


def _arm(directory: pathlib.Path) -> list[dict]:
    runs = []
    for run in sorted(directory.iterdir(), key=lambda p: p.name):
        if run.name.isdigit() and (run / "aux_arrays.npz").exists():
            with np.load(run / "aux_arrays.npz") as f:
                runs.append({k: f[k] for k in f.files})
    return runs


def _recompute(directory: pathlib.Path, group: list[int], test: str, alpha: float) -> dict:
    full, drop = _arm(directory / "full"), _arm(directory / "drop-nsi")
    score, p_values, with_, without = [], [], [], []
    for i in group:
        a = np.array([r["logodds_train"][list(r["index_train"]).index(i)] for r in full],
                     np.float64)
        b = np.array([r["logodds_removed"][list(r["index_removed"]).index(i)] for r in drop],
                     np.float64)
        diff = a.mean() - b.mean()
        if test == "welch":
            p = scipy_stats.ttest_ind(a, b, equal_var=False).pvalue
        else:
            se = math.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
            p = 2 * scipy_stats.norm.sf(abs(diff) / se)
        score.append(diff)
        p_values.append(p)
        with_.append(a.mean())
        without.append(b.mean())
    score, p_values = np.array(score), np.array(p_values)
    significant = p_values < alpha
    accuracy = np.mean(np.concatenate([r["correctness_train"] for r in full]))
    return dict(significant=int(significant.sum()),
                negative=int((significant & (score < 0)).sum()),
                mean_all=score.mean(), mean_significant=score[significant].mean()
                if significant.any() else float("nan"),
                margin_with=np.mean(with_), margin_without=np.mean(without),
                train_accuracy=accuracy)


@pytest.mark.slow
def test_study_rows_equal_a_recomputation_from_the_aux_arrays(tmp_path):
    study = _study_module()
    base = TrainConfig(label_smoothing=0.2, epochs=2, models_at_once=16)
    settings = [study.parse_setting("label_smoothing=0.2", base),
                study.parse_setting("label_smoothing=0.0,weight_decay=0.005", base)]
    alpha = 0.05
    results, plan = study.run_study(str(tmp_path), base, settings, runs="12", pilot_runs=6,
                                    targets="random:3,easy:3", effect=0.25, max_runs=100,
                                    alpha=alpha, test="z", seed=0, log=lambda _: None)
    assert "runs per arm: 12 (given" in plan
    for test in ("z", "welch"):
        if test == "welch":  # the same runs, summarized with the other test
            results = [study.summarize(str(_setting_dir(tmp_path, s)), "welch", alpha, 12, s,
                                       r.seconds) for r, s in zip(results, settings, strict=True)]
        _check_rows(tmp_path, results, settings, test, alpha)
    # the two settings are different trainings
    assert results[0].groups["easy"].margin_with != results[1].groups["easy"].margin_with
    csv_path = tmp_path / "study.csv"
    study.write_csv(results, str(csv_path))
    assert len(csv_path.read_text().splitlines()) == 3
    study.plot(results, str(tmp_path / "study.png"), alpha)
    assert (tmp_path / "study.png").stat().st_size > 1000


def _setting_dir(root: pathlib.Path, setting: dict) -> pathlib.Path:
    return root / ("setting_" + "_".join(f"{k}={v}" for k, v in sorted(setting.items())))


def _check_rows(tmp_path, results, settings, test, alpha):
    stored = json.loads((tmp_path / "pilot" / "targets" / "nsi.json").read_text())
    for result, setting in zip(results, settings, strict=True):
        assert result.setting == setting
        directory = _setting_dir(tmp_path, setting)
        # the same stored targets in every setting
        assert json.loads((directory / "targets" / "nsi.json").read_text()) == stored
        for group, members in stored["groups"].items():
            expected = _recompute(directory, members, test, alpha)
            got = result.groups[group]
            assert got.significant == expected["significant"]
            assert got.negative == expected["negative"]
            np.testing.assert_allclose(got.mean_all, expected["mean_all"], rtol=1e-6)
            np.testing.assert_allclose(got.mean_significant, expected["mean_significant"],
                                       rtol=1e-6)
            np.testing.assert_allclose(got.margin_with, expected["margin_with"], rtol=1e-6)
            np.testing.assert_allclose(got.margin_without, expected["margin_without"],
                                       rtol=1e-6)
            np.testing.assert_allclose(result.train_accuracy, expected["train_accuracy"],
                                       rtol=1e-6)


def test_grid_has_at_least_eight_settings_and_no_duplicates():
    study = _study_module()
    base = TrainConfig(label_smoothing=0.2)
    grid = study.grid_settings("default", base, ["0", "0.1", "0.2"], ["0", "5e-4", "5e-3"],
                               ["10", "40"], ["mlp", "cnn"])
    assert len(grid) >= 8
    assert len({json.dumps(s, sort_keys=True) for s in grid}) == len(grid)
    for setting in grid:  # every setting is a valid TrainConfig
        dataclasses.replace(base, **{k: v for k, v in setting.items() if k != "runs_per_arm"})
    assert any(s["model"] == "cnn" for s in grid) and any(s["model"] == "mlp" for s in grid)


def test_detectable_effect_inverts_the_power_planner():
    study = _study_module()
    from heldout.estimate import stats

    sd, alpha = 0.4, 0.01
    runs = int(stats.runs_per_arm(np.array([sd]), np.array([sd]), 0.25, alpha, 0.8)[0])
    assert study.detectable_effect(sd, runs, alpha) <= 0.25 + 1e-9
    assert study.detectable_effect(sd, runs - 1, alpha) > 0.25 - 0.01
