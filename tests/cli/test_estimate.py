"""estimate.py and its front doors (`heldout.run_estimate`): estimates checked against
brute force, outputs checked writable first, gradient-method settings as flags."""

import os

import numpy as np
import pytest

import heldout
from heldout.attribution import api as attribution_api
from heldout.attribution import influence_functions, tracin
from tests.cli.runner import assert_one_line_error, run_cli, run_many


def load_aux(path) -> dict:
    with np.load(path) as npz:
        return {key: npz[key] for key in npz.files}


def brute_force_memorization(experiment: str, num_train: int) -> tuple[np.ndarray, ...]:
    """Memorization and test influence from the aux files, one example at a time."""
    files = sorted(os.listdir(os.path.join(experiment, "0.7")), key=int)
    runs = [load_aux(os.path.join(experiment, "0.7", f, "aux_arrays.npz")) for f in files]
    memorization = np.full(num_train, np.nan)
    for i in range(num_train):
        inside = [bool(r["correctness_train"][list(r["index_train"]).index(i)])
                  for r in runs if i in r["index_train"]]
        outside = [bool(r["correctness_removed"][list(r["index_removed"]).index(i)])
                   for r in runs if i in r["index_removed"]]
        if inside and outside:
            memorization[i] = np.mean(inside) - np.mean(outside)
    num_test = len(runs[0]["index_test"])
    influence = np.full((num_train, num_test), np.nan)
    for i in range(num_train):
        inside = [r["correctness_test"] for r in runs if i in r["index_train"]]
        outside = [r["correctness_test"] for r in runs if i in r["index_removed"]]
        if inside and outside:
            influence[i] = np.mean(inside, axis=0) - np.mean(outside, axis=0)
    return memorization, influence


@pytest.mark.slow
def test_estimate_matches_brute_force_and_draws_figures(experiment, tmp_path):
    output = tmp_path / "estimates.npz"
    plot_dir = tmp_path / "plots"
    result = run_cli("estimate.py", f"--experiment_dir={experiment}", f"--output={output}",
                     f"--plot_dir={plot_dir}", "--progress=false", "--top=5", "--min_runs=1")
    assert result.returncode == 0, result.stderr
    assert "memorization: 6 runs of 0.7" in result.stdout
    assert "Top 5 memorized training examples" in result.stdout
    estimates = load_aux(output)
    memorization, influence = brute_force_memorization(experiment, 1352)
    np.testing.assert_allclose(estimates["mem_score"], memorization, atol=1e-6)
    np.testing.assert_allclose(estimates["infl_matrix"], influence, atol=1e-6)
    best = np.nanmax(influence)
    assert estimates["infl_pair_score"][0] == pytest.approx(best, abs=1e-6)
    for name in ("memorization_histogram.png", "top_memorized.png", "influence_pairs.png"):
        content = (plot_dir / name).read_bytes()
        assert content.startswith(b"\x89PNG") and len(content) > 5000


def test_estimate_on_empty_directory_is_a_one_line_error(tmp_path):
    result = run_cli("estimate.py", f"--experiment_dir={tmp_path}")
    assert_one_line_error(result, "--experiment_dir", "no runs found")


def test_estimate_fetches_a_released_tarball_first(experiment, tmp_path):
    import tarfile

    tarball = tmp_path / "my-release.tar.gz"
    with tarfile.open(tarball, "w:gz") as archive:
        archive.add(os.path.join(experiment, "0.7"), arcname="my-release/0.7")
    fetched = tmp_path / "fetched"
    result = run_cli("estimate.py", f"--experiment_dir={tarball}", f"--fetch_dir={fetched}",
                     "--progress=false", "--min_runs=1", "--estimator=memorization")
    assert result.returncode == 0, result.stderr
    assert "extracted 6" in result.stdout
    assert "memorization: 6 runs of 0.7" in result.stdout
    assert sorted(os.listdir(fetched / "my-release" / "0.7"), key=int) == [str(i) for i in range(6)]
    assert not list(fetched.rglob("checkpoints"))  # aux arrays only, by default


# --- the front door, in process -------------------------------------------------------


def test_gradient_method_settings_build_their_configs():
    config = attribution_api.method_config(
        "if_kfac", {"fisher": "true", "fisher_seed": 3, "fisher_draws": 2, "batch_size": 7,
                    "damping": 0.5, "layers": ("_layers/0",)})
    assert config == influence_functions.InfluenceConfig(
        strategy="kfac", fisher="true", fisher_seed=3, fisher_draws=2, batch_size=7,
        damping=0.5, layers=("_layers/0",))
    assert attribution_api.method_config("tracin", {"projection_dim": 16}) == \
        tracin.TracInConfig(projection_dim=16)


@pytest.mark.parametrize("method, settings, fragment", [
    ("tracin", {"fisher": "empirical"}, "fisher: not a setting of estimators=tracin"),
    ("tracin", {"damping": 0.1}, "damping: not a setting of estimators=tracin"),
    ("if_ekfac", {"projection_dim": 4}, "projection_dim: not a setting"),
    ("if_ekfac", {"strategy": "kfac"}, "strategy: not a setting"),  # fixed by the method
])
def test_settings_a_method_lacks_are_refused(method, settings, fragment):
    with pytest.raises(ValueError, match=fragment):
        attribution_api.method_config(method, settings)


def test_attribution_settings_with_a_retraining_estimator_are_refused(tmp_path):
    request = heldout.EstimateRequest(experiment_dir=str(tmp_path),
                                      attribution={"damping": 1.0})
    with pytest.raises(ValueError, match="damping: a setting of the gradient methods"):
        heldout.run_estimate(request)


def test_targeted_report_has_the_published_defaults_unless_given():
    request = heldout.EstimateRequest()
    assert [request.setting(n, True) for n in ("metric", "alpha", "confidence")] == \
        ["logodds", 0.01, 0.99]
    assert [request.setting(n, False) for n in ("metric", "alpha", "confidence")] == \
        ["correctness", 0.05, 0.95]
    given = heldout.EstimateRequest(metric="margin", alpha=0.2, confidence=0.5)
    assert [given.setting(n, True) for n in ("metric", "alpha", "confidence")] == \
        ["margin", 0.2, 0.5]


@pytest.mark.parametrize("where", ["missing", "empty"])
def test_verify_refuses_a_missing_or_empty_directory(tmp_path, where):
    directory = tmp_path / "exp"
    if where == "empty":
        directory.mkdir()
    with pytest.raises(ValueError, match="not a directory|no runs found"):
        heldout.run_estimate(heldout.EstimateRequest(experiment_dir=str(directory),
                                                     verify=True))


@pytest.mark.slow
def test_gradient_flags_reach_their_config_and_errors_name_the_flags(experiment, tmp_path):
    """estimate.py's one table: a flag the method lacks is refused, a config's error about
    a parameter (batch_size) comes back naming its flag (--gradient_batch_size); both
    before any work (no output written)."""
    results = run_many({
        "lacking": (("estimate.py", f"--experiment_dir={experiment}", "--estimator=tracin",
                     "--fisher=empirical", f"--output={tmp_path}/a.npz"), None),
        "invalid": (("estimate.py", f"--experiment_dir={experiment}", "--estimator=if_ekfac",
                     "--gradient_batch_size=0", f"--output={tmp_path}/b.npz"), None)})
    assert_one_line_error(results["lacking"], "--fisher: not a setting of --estimator=tracin")
    assert_one_line_error(results["invalid"], "--gradient_batch_size=0: expected a whole number")
    assert not list(tmp_path.iterdir())


def test_cscores_compared_with_a_published_file(tmp_path):
    """--compare_to on C-scores: a 'published' file holding the brute-force C-score of
    every training example agrees perfectly (Spearman 1)."""
    from heldout.store import runs

    rng = np.random.default_rng(5)
    num_train, num_runs = 30, 12
    members, correct = [], []
    for r in range(num_runs):
        subset = np.sort(rng.choice(num_train, num_train // 2, replace=False))
        right = rng.random(num_train) < np.linspace(0.1, 0.9, num_train)
        runs.save_run(runs.run_dir(str(tmp_path / "exp"), "0.5", r),
                      runs.aux_arrays(subset, right, rng.random(4) < 0.5))
        members.append(np.isin(np.arange(num_train), subset))
        correct.append(right)
    members, correct = np.array(members), np.array(correct)
    brute = np.array([correct[~members[:, i], i].mean() for i in range(num_train)])
    np.savez(tmp_path / "cscores.npz", labels=np.zeros(num_train, np.int64), scores=brute)
    report = heldout.run_estimate(heldout.EstimateRequest(
        experiment_dir=str(tmp_path / "exp"), estimators=("cscore",), min_runs=1,
        compare_to=str(tmp_path / "cscores.npz"), plot_dir=str(tmp_path / "plots"),
        progress=False))
    text = str(report)
    assert "Spearman 1.000" in text, text
    assert any(p.endswith(".png") and os.path.exists(p) for p in report.written)
    with pytest.raises(ValueError, match="not a published estimates file"):
        heldout.run_estimate(heldout.EstimateRequest(
            experiment_dir=str(tmp_path / "exp"), estimators=("cscore",),
            compare_to=str(tmp_path / "exp" / "0.5" / "0" / "aux_arrays.npz")))


def test_fetched_tarball_md5_is_checked(tmp_path):
    """md5 given: the tarball's MD5 (computed here with hashlib) is verified, and any
    other value is refused; either way the experiment is fetched first."""
    import hashlib
    import tarfile

    from heldout.store import runs

    rng = np.random.default_rng(2)
    for r in range(3):
        runs.save_run(runs.run_dir(str(tmp_path / "rel"), "0.5", r),
                      runs.aux_arrays(np.arange(5), rng.random(10) < 0.5,
                                      rng.random(3) < 0.5))
    tarball = tmp_path / "rel.tar.gz"
    with tarfile.open(tarball, "w:gz") as archive:
        archive.add(tmp_path / "rel" / "0.5", arcname="rel/0.5")
    digest = hashlib.md5(tarball.read_bytes()).hexdigest()
    request = dict(experiment_dir=str(tarball), estimators=("memorization",), min_runs=1,
                   progress=False)
    report = heldout.run_estimate(heldout.EstimateRequest(
        **request, md5=digest, fetch_dir=str(tmp_path / "ok")))
    assert f"MD5 {digest} (verified)" in str(report)
    with pytest.raises(ValueError, match=f"differs from the expected {'0' * 32}"):
        heldout.run_estimate(heldout.EstimateRequest(
            **request, md5="0" * 32, fetch_dir=str(tmp_path / "bad")))


def test_merged_shards_equal_the_one_machine_estimates(tmp_path):
    """--eval_shard=i/n parts merged with --merge give the arrays of one unsharded run."""
    from heldout.estimate import export
    from heldout.store import runs

    rng = np.random.default_rng(4)
    for r in range(8):
        subset = np.sort(rng.choice(20, 10, replace=False))
        runs.save_run(runs.run_dir(str(tmp_path / "exp"), "0.5", r),
                      runs.aux_arrays(subset, rng.random(20) < 0.6, rng.random(6) < 0.6))
    common = dict(experiment_dir=str(tmp_path / "exp"), min_runs=1, progress=False)
    whole = tmp_path / "whole.npz"
    heldout.run_estimate(heldout.EstimateRequest(**common, output=str(whole)))
    parts = []
    for i in range(2):
        parts.append(str(tmp_path / f"part{i}.npz"))
        heldout.run_estimate(heldout.EstimateRequest(**common, eval_shard=f"{i}/2",
                                                     output=parts[-1]))
    report = heldout.run_estimate(heldout.EstimateRequest(**common, merge=tuple(parts)))
    merged_path = str(tmp_path / "exp" / "estimates-0.5.npz")
    assert f"merged 2 parts into {merged_path}" in str(report)
    expected, merged = export.load_estimates(str(whole)), export.load_estimates(merged_path)
    np.testing.assert_array_equal(merged.memorization.score, expected.memorization.score)
    np.testing.assert_array_equal(merged.influence.matrix, expected.influence.matrix)
    np.testing.assert_array_equal(merged.influence.eval_indices,
                                  expected.influence.eval_indices)
    with pytest.raises(ValueError, match="merge: empty"):
        heldout.run_estimate(heldout.EstimateRequest(**common, merge=()))


def test_invalid_experiment_json_is_one_line_naming_it(tmp_path):
    """Issue 13 case 6: an unreadable experiment.json names the file, before any work."""
    from heldout.store import runs

    rng = np.random.default_rng(0)
    for r in range(3):
        runs.save_run(runs.run_dir(str(tmp_path), "0.5", r),
                      runs.aux_arrays(np.arange(5), rng.random(10) < 0.5, rng.random(3) < 0.5))
    (tmp_path / "experiment.json").write_text("{ not json")
    with pytest.raises(ValueError, match=r"experiment\.json: not a valid JSON file"):
        heldout.run_estimate(heldout.EstimateRequest(experiment_dir=str(tmp_path), min_runs=1,
                                                     progress=False))
    assert not (tmp_path / "estimates-0.5.npz").exists()


def _linear_experiment(directory, rng, theta, folders):
    """Runs whose test log-odds are a linear function of membership plus noise."""
    from heldout.store import runs

    num_train = theta.shape[0]
    for subset, (ratio, num_runs) in folders.items():
        for r in range(num_runs):
            chosen = np.sort(rng.choice(num_train, int(ratio * num_train), replace=False))
            member = np.isin(np.arange(num_train), chosen)
            logodds = member @ theta + 0.1 * rng.standard_normal(theta.shape[1])
            runs.save_run(runs.run_dir(str(directory), subset, r), runs.aux_arrays(
                chosen, rng.random(num_train) < 0.5, logodds > 0,
                logodds_train=rng.standard_normal(num_train).astype(np.float32),
                logodds_test=logodds.astype(np.float32)))


def test_datamodels_and_their_lds_on_disjoint_runs(tmp_path):
    """--estimator=datamodel fits the fit folder; --lds_subset judges the weights on the
    other folder: the printed LDS equals a scipy.stats.spearmanr loop over the saved
    weights, and LDS on the fit folder itself is refused naming the shared runs."""
    from scipy import stats as scipy_stats

    from heldout.store import files

    rng = np.random.default_rng(6)
    theta = rng.standard_normal((16, 5))
    _linear_experiment(tmp_path / "exp", rng, theta, {"0.7": (0.7, 60), "0.5": (0.5, 40)})
    exp = str(tmp_path / "exp")
    report = heldout.run_estimate(heldout.EstimateRequest(
        experiment_dir=exp, subsets=("0.7",), estimators=("datamodel",), lds_subset="0.5",
        progress=False))
    saved = files.read_npz(f"{exp}/datamodels-0.7.npz")
    lds_runs = heldout.load_experiment(exp, "0.5", progress=False)
    predicted = lds_runs.membership @ saved["weights"]
    brute = [scipy_stats.spearmanr(lds_runs.logodds_test[:, j], predicted[:, j]).statistic
             for j in range(5)]
    assert f"LDS on 40 runs of 0.5 (log-odds, 5 eval examples): {np.mean(brute):.3f}" in \
        str(report), str(report)
    assert np.mean(brute) > 0.8  # the outputs are linear in membership
    with pytest.raises(ValueError, match=r"lds_run_ids overlap fit_run_ids in 60 runs"):
        heldout.run_estimate(heldout.EstimateRequest(
            experiment_dir=exp, subsets=("0.7",), estimators=("datamodel",),
            lds_subset="0.7", output=str(tmp_path / "x.npz"), progress=False))
    influence = heldout.run_estimate(heldout.EstimateRequest(
        experiment_dir=exp, subsets=("0.7",), estimators=("influence",), min_runs=1,
        lds_subset="0.5", lds_runs="0-19", output=str(tmp_path / "i.npz"), progress=False))
    assert "LDS on 20 runs of 0.5" in str(influence)


@pytest.mark.slow
def test_trak_of_an_ensemble_through_the_front_door(tmp_path):
    """--estimator=trak: the settings reach TRAKConfig (projection_seed as its seed) and
    the saved scores are those of `trak_of_runs` on the same runs and config."""
    from heldout.attribution import runs_attribution, trak
    from heldout.store import files, runs

    exp = str(tmp_path / "exp")
    heldout.train(heldout.TrainDesign(
        heldout.TrainConfig(epochs=1, models_at_once=4),
        runs=heldout.RunSettings(exp, num_runs=2, save_checkpoints=True, progress=False)))
    settings = {"projection_dim": 32, "projection_seed": 5, "lambda_reg": 0.5}
    report = heldout.run_estimate(heldout.EstimateRequest(
        experiment_dir=exp, estimators=("trak",), trak_runs="0-1", eval_indices="0-4",
        attribution=settings, progress=False))
    assert "TRAK of 2 models (0.7 runs 0-1), 5 eval examples: lambda_reg 0.5" in str(report)
    saved = files.read_npz(f"{exp}/trak-0.7-runs0-1.npz")
    config = trak.TRAKConfig(projection_dim=32, seed=5, lambda_reg=0.5)
    direct = runs_attribution.trak_of_runs(
        [runs.run_dir(exp, "0.7", r) for r in (0, 1)], heldout.load_dataset("digits"),
        np.arange(5), config)
    np.testing.assert_allclose(saved["scores"], direct.scores, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="fisher: not a setting of estimators=trak"):
        heldout.run_estimate(heldout.EstimateRequest(
            experiment_dir=exp, estimators=("trak",), attribution={"fisher": "true"}))
