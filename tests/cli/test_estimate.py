"""estimate.py as a user runs it: estimates checked against brute force, a released
tarball fetched first, gradient-method settings as flags (the front door in process:
tests/app/test_estimate.py)."""

import os

import numpy as np
import pytest

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


def test_metagradient_of_one_run_and_its_refused_flags(experiment, tmp_path):
    """--estimator=metagradient replays run 0 and writes d log-odds / d weight: NaN rows
    exactly for the training examples outside the run (counted in the summary line), finite
    ones for every example it trained on; a gradient-method flag it lacks is refused by
    name before any work."""
    output = tmp_path / "mg.npz"
    results = run_many({
        "scores": (("estimate.py", f"--experiment_dir={experiment}",
                    "--estimator=metagradient", "--run_id=0", "--eval_indices=0-4",
                    "--checkpoint_interval=3", f"--output={output}", "--progress=false"),
                   None),
        "refused": (("estimate.py", f"--experiment_dir={experiment}",
                     "--estimator=metagradient", "--damping=0.1",
                     f"--output={tmp_path}/no.npz"), None)})
    assert_one_line_error(results["refused"],
                          "--damping: not a setting of --estimator=metagradient")
    result = results["scores"]
    assert result.returncode == 0, result.stderr
    aux = load_aux(os.path.join(experiment, "0.7", "0", "aux_arrays.npz"))
    outside = np.sort(aux["index_removed"])
    assert (f"metagradient of 0.7 run 0: scores 1352 training x 5 eval examples, "
            f"{len(outside)} training examples without a batch slot") in result.stdout
    saved = load_aux(output)
    assert saved["scores"].shape == (1352, 5)
    np.testing.assert_array_equal(np.flatnonzero(np.isnan(saved["scores"]).all(axis=1)),
                                  outside)
    assert np.isfinite(np.delete(saved["scores"], outside, axis=0)).all()
    assert saved["eval_indices"].tolist() == [0, 1, 2, 3, 4]
    assert f"Saved {output}" in result.stdout
    assert not os.path.exists(tmp_path / "no.npz")
