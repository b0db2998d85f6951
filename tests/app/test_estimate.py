"""The front door of estimate.py in process (`heldout.run_estimate` of the job
`heldout.estimate_job` builds): every mode on tiny synthetic experiments, checked
against brute force or an independent computation; outputs written only after every
check, under names that never replace a fuller result."""

import os

import numpy as np
import pytest

import heldout
from heldout.attribution import config as attribution_config
from heldout.errors import ParameterError
from tests.cli.runner import random_experiment


def estimate(**given) -> heldout.EstimateReport:
    """What estimate.py does with these settings (by parameter name)."""
    return heldout.run_estimate(heldout.estimate_job(given))


@pytest.mark.parametrize("where", ["missing", "empty"])
def test_verify_refuses_a_missing_or_empty_directory(tmp_path, where):
    directory = tmp_path / "exp"
    if where == "empty":
        directory.mkdir()
    with pytest.raises(ValueError, match="not a directory|no runs found"):
        estimate(experiment_dir=str(directory), verify=True)


def test_verify_says_an_unreadable_directory_cannot_be_read(tmp_path, monkeypatch):
    """An experiment that cannot be read (an unreachable bucket: TensorFlow's isdir says
    False, its stat says why) is reported as unreadable, not as "not a directory"."""
    import tensorflow as tf

    def unreachable(path):
        raise tf.errors.FailedPreconditionError(None, None, "Could not resolve host")

    monkeypatch.setattr(tf.io.gfile, "stat", unreachable)
    with pytest.raises(ParameterError, match=r"cannot be read \(Could not resolve host\)") \
            as error:
        estimate(experiment_dir=str(tmp_path / "bucket"), verify=True)
    assert error.value.parameter == "experiment_dir"


def test_md5_of_a_directory_is_refused_not_ignored(tmp_path):
    """md5 checks a tarball; given with an experiment directory it is refused by name."""
    exp = random_experiment(tmp_path / "exp", num_runs=1)
    for given in ({"verify": True}, {"min_runs": 1, "progress": False}):
        with pytest.raises(ParameterError, match="is a directory, which has no MD5") as error:
            estimate(experiment_dir=exp, md5="0" * 32, **given)
        assert error.value.parameter == "md5"
    assert sorted(os.listdir(exp)) == ["0.5"]


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
    report = estimate(
        experiment_dir=str(tmp_path / "exp"), estimators=("cscore",), min_runs=1,
        compare_to=str(tmp_path / "cscores.npz"), plot_dir=str(tmp_path / "plots"),
        progress=False)
    text = str(report)
    assert "Spearman 1.000" in text, text
    assert any(p.endswith(".png") and os.path.exists(p) for p in report.written)
    with pytest.raises(ValueError, match="not a published estimates file"):
        estimate(
            experiment_dir=str(tmp_path / "exp"), estimators=("cscore",),
            compare_to=str(tmp_path / "exp" / "0.5" / "0" / "aux_arrays.npz"))
    # ImageNet's C-scores are listed by file name: imagenet_index places them (issue 24).
    names = np.array([f"n{i:08d}.JPEG" for i in range(num_train)], dtype=object)
    np.savez(tmp_path / "imagenet_index.npz", tr_filenames=names,
             tr_labels=np.zeros(num_train, np.int64), tt_filenames=names[:4],
             tt_labels=np.zeros(4, np.int64), tr_mem=np.zeros(num_train))
    order = rng.permutation(num_train)
    np.savez(tmp_path / "imagenet-cscores.npz", labels=np.zeros(num_train, np.int64),
             scores=brute[order], filenames=np.array(["train/" + n for n in names[order]],
                                                     dtype=object))
    request = dict(experiment_dir=str(tmp_path / "exp"), estimators=("cscore",), min_runs=1,
                   compare_to=str(tmp_path / "imagenet-cscores.npz"), progress=False)
    with pytest.raises(ParameterError, match="imagenet_index.npz is needed") as error:
        estimate(**request, output=str(tmp_path / "no.npz"))
    assert error.value.parameter == "imagenet_index"
    assert not os.path.exists(tmp_path / "no.npz")
    report = estimate(**request, imagenet_index=str(tmp_path / "imagenet_index.npz"),
                      output=str(tmp_path / "imagenet.npz"))
    assert "Spearman 1.000" in str(report), str(report)


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
    report = estimate(
        **request, md5=digest, fetch_dir=str(tmp_path / "ok"))
    assert f"MD5 {digest} (verified)" in str(report)
    with pytest.raises(ValueError, match=f"differs from the expected {'0' * 32}"):
        estimate(
            **request, md5="0" * 32, fetch_dir=str(tmp_path / "bad"))


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
    estimate(**common, output=str(whole))
    parts = []
    for i in range(2):
        parts.append(str(tmp_path / f"part{i}.npz"))
        estimate(**common, eval_shard=f"{i}/2", output=parts[-1])
    report = estimate(merge=tuple(parts))
    merged_path = str(tmp_path / "estimates-0.5-merged.npz")  # beside the parts
    assert f"merged 2 parts into {merged_path}" in str(report)
    expected, merged = export.load_estimates(str(whole)), export.load_estimates(merged_path)
    np.testing.assert_array_equal(merged.memorization.score, expected.memorization.score)
    np.testing.assert_array_equal(merged.influence.matrix, expected.influence.matrix)
    np.testing.assert_array_equal(merged.influence.eval_indices,
                                  expected.influence.eval_indices)
    with pytest.raises(ValueError, match="merge: empty"):
        estimate(merge=())


def test_invalid_experiment_json_is_one_line_naming_it(tmp_path):
    """Issue 13 case 6: an unreadable experiment.json names the file, before any work."""
    from heldout.store import runs

    rng = np.random.default_rng(0)
    for r in range(3):
        runs.save_run(runs.run_dir(str(tmp_path), "0.5", r),
                      runs.aux_arrays(np.arange(5), rng.random(10) < 0.5, rng.random(3) < 0.5))
    (tmp_path / "experiment.json").write_text("{ not json")
    with pytest.raises(ValueError, match=r"experiment\.json: not a valid JSON file"):
        estimate(experiment_dir=str(tmp_path), min_runs=1, progress=False)
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

    from heldout.estimate import export
    from heldout.store import files

    rng = np.random.default_rng(6)
    theta = rng.standard_normal((16, 5))
    _linear_experiment(tmp_path / "exp", rng, theta, {"0.7": (0.7, 60), "0.5": (0.5, 40)})
    exp = str(tmp_path / "exp")
    report = estimate(
        experiment_dir=exp, subsets=("0.7",), estimators=("datamodel",), lds_subset="0.5",
        progress=False)
    saved = files.read_npz(f"{exp}/datamodels-0.7.npz")
    lds_runs = heldout.load_experiment(exp, "0.5", progress=False)
    predicted = lds_runs.membership @ saved["weights"]
    brute = [scipy_stats.spearmanr(lds_runs.logodds_test[:, j], predicted[:, j]).statistic
             for j in range(5)]
    assert f"LDS on 40 runs of 0.5 (log-odds, 5 eval examples): {np.mean(brute):.3f}" in \
        str(report), str(report)
    assert np.mean(brute) > 0.8  # the outputs are linear in membership
    with pytest.raises(ValueError, match=r"lds_run_ids overlap fit_run_ids in 60 runs"):
        estimate(
            experiment_dir=exp, subsets=("0.7",), estimators=("datamodel",),
            lds_subset="0.7", output=str(tmp_path / "x.npz"), progress=False)
    # Without --subset, the fit folder is the only one besides the LDS folder (issue 25).
    influence = estimate(
        experiment_dir=exp, estimators=("influence",), min_runs=1,
        lds_subset="0.5", lds_runs="0-19", output=str(tmp_path / "i.npz"), progress=False)
    assert "LDS on 20 runs of 0.5" in str(influence)
    # The LDS is saved beside the scores, with its per-example values and runs.
    saved_lds = export.load_lds(str(tmp_path / "i-lds-0.5.npz"))
    np.testing.assert_array_equal(saved_lds["run_ids"], np.arange(20))
    assert f"{saved_lds['result'].mean:.3f}" in str(influence)
    assert saved_lds["meta"] == {
        "kind": "lds", "method": "influence", "scores_file": str(tmp_path / "i.npz"),
        "lds_subset": "0.5", "fit_subset": "0.7", "output": "logodds", "confidence": 0.95,
        "num_bootstrap": 1000, "seed": 0}
    assert f"Saved {tmp_path / 'exp' / 'datamodels-0.7-lds-0.5.npz'}" in str(report)


@pytest.mark.slow
def test_trak_of_an_ensemble_through_the_front_door(tmp_path):
    """--estimator=trak: the settings reach TRAKConfig (projection_seed as its seed) and
    the saved scores are those of `trak_of_runs` on the same runs and config."""
    from heldout.attribution import runs_attribution
    from heldout.store import files, runs

    exp = str(tmp_path / "exp")
    heldout.train(heldout.TrainDesign(
        heldout.TrainConfig(epochs=1, models_at_once=4),
        runs=heldout.RunSettings(exp, num_runs=2, save_checkpoints=True, progress=False)))
    settings = {"projection_dim": 32, "projection_seed": 5, "lambda_reg": 0.5}
    report = estimate(experiment_dir=exp, estimators=("trak",), trak_runs="0-1",
                      eval_indices="0-4", **settings, progress=False)
    assert "TRAK of 2 models (0.7 runs 0-1), 5 eval examples: lambda_reg 0.5" in str(report)
    saved = files.read_npz(f"{exp}/trak-0.7-runs0-1.npz")
    config = attribution_config.TRAKConfig(projection_dim=32, seed=5, lambda_reg=0.5)
    direct = runs_attribution.trak_of_runs(
        [runs.run_dir(exp, "0.7", r) for r in (0, 1)], heldout.load_dataset("digits"),
        np.arange(5), config)
    np.testing.assert_allclose(saved["scores"], direct.scores, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="fisher: not a setting of estimators=trak"):
        estimate(experiment_dir=exp, estimators=("trak",), fisher="true")


def test_a_shard_without_output_writes_a_shard_file_and_merges_beside_the_parts(tmp_path):
    """Issue 25 item 4 and issue 24 data loss: shards never land on the whole-set name,
    and their merge (default output) lands beside them, marked merged, leaving the
    experiment's whole-set file as it was."""
    from heldout.estimate import export

    exp = random_experiment(tmp_path / "exp")
    whole = tmp_path / "exp" / "estimates-0.5.npz"
    estimate(experiment_dir=exp, min_runs=1, progress=False)
    before = whole.read_bytes()
    for i in range(2):
        report = estimate(experiment_dir=exp, min_runs=1, progress=False,
                          eval_shard=f"{i}/2")
        assert f"Saved {tmp_path}/exp/estimates-0.5-shard{i}of2.npz" in str(report)
    assert whole.read_bytes() == before
    parts = tuple(f"{exp}/estimates-0.5-shard{i}of2.npz" for i in range(2))
    report = estimate(merge=parts)
    merged = f"{exp}/estimates-0.5-merged.npz"
    assert f"merged 2 parts into {merged}" in str(report)
    assert whole.read_bytes() == before
    np.testing.assert_array_equal(export.load_estimates(merged).influence.matrix,
                                  export.load_estimates(str(whole)).influence.matrix)
    with pytest.raises(ParameterError, match="is one of the parts") as error:
        estimate(merge=parts, output=parts[0])
    assert error.value.parameter == "output"
    np.savez(tmp_path / "pairs.npz", tr_idx=np.array([0, 99]), tt_idx=np.array([0, 1]),
             infl=np.ones(2), mem=np.ones(2))  # a training index outside the 20
    with pytest.raises(ParameterError, match="99") as error:
        estimate(merge=parts, compare_to=str(tmp_path / "pairs.npz"),
                 output=str(tmp_path / "m.npz"))
    assert error.value.parameter == "compare_to" and not os.path.exists(tmp_path / "m.npz")


def test_a_file_that_cannot_be_compared_stops_before_any_output(tmp_path):
    """--compare_to problems are found before anything is written."""
    exp = random_experiment(tmp_path / "exp")
    np.savez(tmp_path / "other.npz", something=np.zeros(3))
    with pytest.raises(ValueError):
        estimate(experiment_dir=exp, min_runs=1, progress=False,
                 compare_to=str(tmp_path / "other.npz"))
    assert sorted(os.listdir(exp)) == ["0.5"]


def test_chosen_test_examples_never_take_the_whole_set_name(tmp_path):
    """--eval_indices without --output: influence on some test examples is written as
    estimates-<subset>-eval<selection>.npz, beside (not over) the whole-set file."""
    from heldout.estimate import export

    exp = random_experiment(tmp_path / "exp")
    report = estimate(experiment_dir=exp, min_runs=1, progress=False, eval_indices="0-2,4")
    path = f"{exp}/estimates-0.5-eval0-2_4.npz"
    assert f"Saved {path}" in str(report)
    assert export.load_estimates(path).influence.eval_indices.tolist() == [0, 1, 2, 4]
    assert not os.path.exists(f"{exp}/estimates-0.5.npz")
    (tmp_path / "chosen.txt").write_text("3 5\n")
    estimate(experiment_dir=exp, estimators=("influence",), min_runs=1, progress=False,
             eval_indices=str(tmp_path / "chosen.txt"), eval_shard="1/2")
    assert os.path.exists(f"{exp}/estimates-0.5-evalchosen-shard1of2.npz")


def test_one_run_methods_judged_on_the_other_folder_by_default(tmp_path):
    """Issue 25: with lds_subset and no subset, TRAK and metagradients score the one
    folder besides the LDS folder; the LDS printed equals a scipy loop over the saved
    scores (metagradient's NaN rows, examples outside the run, scored 0) and is saved
    beside them."""
    from scipy import stats as scipy_stats

    from heldout.attribution import metagradient
    from heldout.estimate import export
    from heldout.store import files

    exp = str(tmp_path / "exp")
    for design, num_runs in (("0.7", 1), ("0.5", 3)):
        heldout.train(heldout.TrainDesign(
            heldout.TrainConfig(epochs=1, models_at_once=4), design=design,
            runs=heldout.RunSettings(exp, num_runs=num_runs, save_checkpoints=True,
                                     progress=False)))
    lds_runs = heldout.load_experiment(exp, "0.5", progress=False)

    def brute_lds(scores):
        predicted = lds_runs.membership @ scores
        return np.nanmean([scipy_stats.spearmanr(lds_runs.logodds_test[:, j],
                                                 predicted[:, j]).statistic
                           for j in range(scores.shape[1])])

    report = estimate(experiment_dir=exp, estimators=("metagradient",), eval_indices="0-4",
                      lds_subset="0.5", progress=False)
    saved = metagradient.load_metagradient_scores(f"{exp}/metagradient-0.7-run0.npz")
    outside = int(np.isnan(saved.scores).all(axis=1).sum())
    assert outside == 1352 - round(0.7 * 1352)
    assert (f"LDS on 3 runs of 0.5 (log-odds, 5 eval examples): "
            f"{brute_lds(np.nan_to_num(saved.scores)):.3f}") in str(report), str(report)
    assert f"the {outside} NaN rows scored 0" in str(report)
    assert export.load_lds(f"{exp}/metagradient-0.7-run0-lds-0.5.npz")["meta"][
        "method"] == "metagradient"
    report = estimate(experiment_dir=exp, estimators=("trak",), trak_runs="0",
                      eval_indices="0-4", lds_subset="0.5", projection_dim=32, progress=False)
    scores = files.read_npz(f"{exp}/trak-0.7-runs0.npz")["scores"]
    assert f"LDS on 3 runs of 0.5 (log-odds, 5 eval examples): {brute_lds(scores):.3f}" in \
        str(report), str(report)
    assert f"Saved {exp}/trak-0.7-runs0-lds-0.5.npz" in str(report)


def test_fdr_untestable_reaches_the_estimates(tmp_path):
    """fdr_untestable chooses the Benjamini-Hochberg family the report states."""
    exp = random_experiment(tmp_path / "exp")
    for untestable, family in (("count", "untestable counted as p = 1"),
                               ("exclude", "untestable (p = NaN) left out")):
        report = estimate(experiment_dir=exp, estimators=("memorization",), min_runs=1,
                          fdr=True, fdr_untestable=untestable, progress=False,
                          output=str(tmp_path / f"{untestable}.npz"))
        assert family in str(report), str(report)


def test_an_lds_run_with_a_fit_runs_examples_is_refused_before_any_output(tmp_path):
    """A run of the LDS folder trained on exactly a fit run's examples (here a copy) is
    refused, naming it, before the scores are written."""
    import shutil

    exp = random_experiment(tmp_path / "exp")
    shutil.copytree(f"{exp}/0.5/3", f"{exp}/0.3/0")
    with pytest.raises(ParameterError, match=r"1 of the 1 evaluation runs \(0\.3/0\)") as error:
        estimate(experiment_dir=exp, subsets=("0.5",), estimators=("datamodel",),
                 metric="correctness", lds_subset="0.3", progress=False)
    assert error.value.parameter == "lds_subset"
    assert sorted(os.listdir(exp)) == ["0.3", "0.5"]
