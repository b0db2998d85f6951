"""Issue 13 cases 4, 6, 7, 8 and 10 as a user meets them: real subprocesses of train.py,
estimate.py and demo.py, each refused with one line (no traceback, non-zero status) or,
for case 10, the README's commands working in the order written.

The independent refusals run a few at a time (`run_many`); every one of them fails
before training, so each costs one interpreter start (mostly importing TensorFlow).
To stay within the time budget, each case runs here for its representative inputs;
the other inputs of each case are refused by the same library checks, tested in process
(tests/cli/test_train.py, test_estimate.py, tests/data/test_sources.py,
tests/store/test_checks.py). A read-only directory is made with ``chattr +i`` (root
ignores permission bits, not the immutable attribute).
"""

import subprocess

import numpy as np
import pytest

from tests.cli.runner import assert_one_line_error, random_experiment, run_cli, run_many

TINY = ["--models_at_once=2", "--epochs=2", "--progress=false"]


def _npz(path, **changes):
    rng = np.random.default_rng(1)
    arrays = dict(x_train=rng.random((20, 4, 4, 1)).astype(np.float32),
                  y_train=rng.integers(0, 3, 20), x_test=rng.random((6, 4, 4, 1)),
                  y_test=rng.integers(0, 3, 6))
    arrays.update(changes)
    np.savez(path, **arrays)
    return f"npz:{path}"


@pytest.fixture(scope="module")
def refusals(tmp_path_factory):
    """Every independent refusal, run once: name -> (CompletedProcess, scratch directory)."""
    tmp = tmp_path_factory.mktemp("refusals")
    nan_x = np.zeros((20, 4, 4, 1), np.float32)
    nan_x[7, 1, 2, 0] = np.nan
    a_file = tmp / "a_file"
    a_file.write_text("not a directory")
    synthetic = random_experiment(tmp / "synthetic", num_runs=4, num_test=5, seed=0, accuracy=0.5)
    frozen = random_experiment(tmp / "frozen", num_runs=4, num_test=5, seed=0, accuracy=0.5)
    immutable = subprocess.run(["chattr", "+i", frozen], capture_output=True).returncode == 0
    train = ("train.py", f"--experiment_dir={tmp}/e", "--num_runs=2", *TINY)
    commands = {
        # case 4: non-finite inputs
        "nan": ((*train, f"--dataset={_npz(tmp / 'nan.npz', x_train=nan_x)}"), None),
        # case 6: files and schemes
        "dir_is_file": (("train.py", f"--experiment_dir={a_file}", "--num_runs=2", *TINY), None),
        "output_under_file": (("estimate.py", f"--experiment_dir={synthetic}",
                               f"--output={a_file}/e.npz", "--progress=false"), None),
        # case 7: read-only experiment, verify of nothing
        "read_only": (("estimate.py", f"--experiment_dir={frozen}", "--progress=false",
                       "--min_runs=1"), None),
        "verify_missing": (("estimate.py", f"--experiment_dir={tmp}/missing", "--verify"),
                           None),
        # case 8: unbounded or empty inputs
        "label": ((*train, f"--dataset={_npz(tmp / 'l.npz', y_train=np.arange(20) * 50_000)}"),
                  None),
        "run_ids_huge": ((*train[:2], *train[3:], "--run_ids=0-3000000000"), None),
        "subset_ratio": ((*train, "--subset_ratio=0.0001"), None),
        "slurm": (train, {"SLURM_ARRAY_TASK_ID": "abc"}),
    }
    try:
        results = run_many(commands)
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", frozen], check=True)
    return results, tmp, immutable


def test_case4_non_finite_images_are_refused_before_training(refusals):
    results, tmp, _ = refusals
    assert_one_line_error(results["nan"], "--dataset=npz:", "x_train holds NaN or infinity "
                          "(example 7); expected finite real numbers")
    assert not (tmp / "e" / "experiment.json").exists()


@pytest.mark.parametrize("name, fragments", [
    ("dir_is_file", ("--experiment_dir=", "a_file: not writable", "not a directory")),
    ("output_under_file", ("--output=", "a_file/e.npz: not writable")),
])
def test_case6_file_errors_are_one_line(refusals, name, fragments):
    assert_one_line_error(refusals[0][name], *fragments)


def test_case7_read_only_experiment_fails_before_computing(refusals):
    results, tmp, immutable = refusals
    if not immutable:
        pytest.skip("chattr +i is not available here")
    result = results["read_only"]
    assert_one_line_error(result, f"--output={tmp}/frozen/estimates-0.5.npz: not writable")
    assert "memorization:" not in result.stdout  # nothing was computed
    assert not (tmp / "frozen" / "estimates-0.5.npz").exists()


def test_case7_verify_of_a_missing_directory_fails(refusals):
    assert_one_line_error(refusals[0]["verify_missing"], "--experiment_dir=",
                          "missing: not a directory")


@pytest.mark.parametrize("name, fragments", [
    ("label", ("labels give 950,001 classes, above the limit of 10,000", "--max_classes")),
    ("run_ids_huge", ("--run_ids='0-3000000000': run ids must be below 1,000,000",)),
    ("subset_ratio", ("--subset_ratio=0.0001: each run would train on 0 of 1352 examples",)),
    ("slurm", ("environment variable SLURM_ARRAY_TASK_ID='abc': expected an integer",)),
])
def test_case8_unbounded_or_empty_inputs_are_refused(refusals, name, fragments):
    assert_one_line_error(refusals[0][name], *fragments)
    assert not (refusals[1] / "e" / "experiment.json").exists()


@pytest.mark.slow
def test_case10_readme_commands_work_in_order(tmp_path):
    """The default job, then checkpoints for TracIn, then TracIn, then the demo."""
    exp = str(tmp_path / "digits")
    first = run_cli("train.py", f"--experiment_dir={exp}", "--num_runs=2", *TINY)
    assert first.returncode == 0, first.stderr
    before = (tmp_path / "digits" / "0.7" / "0" / "aux_arrays.npz").read_bytes()

    checkpoints = ("train.py", f"--experiment_dir={exp}", "--num_runs=2", *TINY,
                   "--save_checkpoints", "--checkpoint_every=1")
    refused = run_cli(*checkpoints)
    assert_one_line_error(refused, "--save_checkpoints: 2 requested runs", "0.7 runs 0-1",
                          "new experiment_dir", "add retrain_complete")
    retrained = run_cli(*checkpoints, "--retrain_complete")
    assert retrained.returncode == 0, retrained.stderr
    assert "aux arrays bit-identical to the earlier ones in 2 of 2" in retrained.stdout
    assert (tmp_path / "digits" / "0.7" / "0" / "aux_arrays.npz").read_bytes() == before

    tracin = run_cli("estimate.py", f"--experiment_dir={exp}", "--estimator=tracin",
                     "--run_id=0", "--eval_indices=0-3", "--progress=false")
    assert tracin.returncode == 0, tracin.stderr
    assert "TracIn over" in tracin.stdout and "checkpoints" in tracin.stdout
    demo = run_cli("demo.py", f"--run_dir={exp}/0.7/0")
    assert demo.returncode == 0, demo.stderr
    assert "445 out of 445 predictions match" in demo.stdout

