"""train.py and estimate.py end to end, as a user runs them (subprocesses, tiny sizes)."""

import io
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]

TINY = ["--num_runs=6", "--models_at_once=4", "--epochs=3", "--progress=false"]


def run_cli(script: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run([sys.executable, str(REPO_ROOT / script), *args], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=300, env=env)


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


@pytest.fixture(scope="module")
def experiment(tmp_path_factory) -> str:
    directory = str(tmp_path_factory.mktemp("cli") / "digits")
    result = run_cli("train.py", f"--experiment_dir={directory}", *TINY,
                     "--save_checkpoints")
    assert result.returncode == 0, result.stderr
    assert "trained 6 runs, 0 were already complete" in result.stdout
    return directory


@pytest.mark.slow
def test_train_writes_complete_run_directories(experiment):
    run_ids = sorted(os.listdir(os.path.join(experiment, "0.7")), key=int)
    assert run_ids == [str(i) for i in range(6)]
    for run_id in run_ids:
        directory = os.path.join(experiment, "0.7", run_id)
        names = set(os.listdir(directory))
        assert {"aux_arrays.npz", "run.json", "checkpoints"} <= names
        assert not [n for n in names if ".tmp-" in n]
        aux = load_aux(os.path.join(directory, "aux_arrays.npz"))
        assert len(aux["subsample_idx"]) == round(0.7 * 1352)
        np.testing.assert_array_equal(aux["index_train"], aux["subsample_idx"])
        assert aux["margin_test"].dtype == np.float32
        # Margin > 0 exactly when the prediction is correct (ties aside).
        np.testing.assert_array_equal(aux["margin_test"] > 0, aux["correctness_test"])


@pytest.mark.slow
def test_rerun_is_idempotent_and_redoes_a_partial_run(experiment):
    before = {r: os.path.getmtime(os.path.join(experiment, "0.7", str(r), "aux_arrays.npz"))
              for r in range(6)}
    original = load_aux(os.path.join(experiment, "0.7", "2", "aux_arrays.npz"))
    # Leave run 2 as an interrupted writer would: no aux arrays, a stray temporary file.
    os.remove(os.path.join(experiment, "0.7", "2", "aux_arrays.npz"))
    with open(os.path.join(experiment, "0.7", "2", "aux_arrays.npz.tmp-dead"), "wb") as f:
        f.write(b"PK\x03\x04 half written")

    result = run_cli("train.py", f"--experiment_dir={experiment}", *TINY,
                     "--save_checkpoints")
    assert result.returncode == 0, result.stderr
    assert "trained 1 runs, 5 were already complete" in result.stdout
    for r in (0, 1, 3, 4, 5):
        path = os.path.join(experiment, "0.7", str(r), "aux_arrays.npz")
        assert os.path.getmtime(path) == before[r]
    redone = load_aux(os.path.join(experiment, "0.7", "2", "aux_arrays.npz"))
    # The stray temporary file may belong to a live writer, so it is left alone, unread.
    np.testing.assert_array_equal(redone["subsample_idx"], original["subsample_idx"])
    np.testing.assert_array_equal(redone["correctness_test"], original["correctness_test"])
    np.testing.assert_allclose(redone["margin_test"], original["margin_test"], atol=1e-4)


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


@pytest.mark.slow
def test_checkpoint_restores_the_run_model(experiment):
    import tensorflow as tf

    from heldout.data import sources as data
    from heldout.models import ensemble as models

    dataset = data.load_digits()
    model = models.MLP((128,), 10)
    model(tf.zeros([1, 8, 8, 1]))
    checkpoint = tf.train.Checkpoint(model=model, epoch=tf.Variable(0, dtype=tf.int64),
                                     global_step=tf.Variable(0, dtype=tf.int64))
    directory = os.path.join(experiment, "0.7", "4", "checkpoints")
    checkpoint.restore(tf.train.latest_checkpoint(directory)).assert_existing_objects_matched()
    assert int(checkpoint.epoch) == 3
    assert os.path.exists(os.path.join(directory, "ckpt-3.index"))
    predictions = np.argmax(model(tf.constant(dataset.x_test)), axis=1)
    aux = load_aux(os.path.join(experiment, "0.7", "4", "aux_arrays.npz"))
    np.testing.assert_array_equal(predictions == dataset.y_test, aux["correctness_test"])


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines, "no error message"
    for fragment in fragments:
        assert fragment in lines[-1], lines[-1]


def test_unknown_dataset_is_a_one_line_error(tmp_path):
    result = run_cli("train.py", f"--experiment_dir={tmp_path}/e", "--dataset=mnistt", *TINY)
    assert_one_line_error(result, "--dataset", "mnistt")
    assert not os.path.exists(f"{tmp_path}/e/experiment.json")  # nothing half-made


def test_missing_npz_key_is_a_one_line_error(tmp_path):
    path = tmp_path / "data.npz"
    buffer = io.BytesIO()
    np.savez(buffer, x_train=np.zeros((4, 3)), y_train=np.zeros(4, int), x_test=np.zeros((2, 3)))
    path.write_bytes(buffer.getvalue())
    result = run_cli("train.py", f"--experiment_dir={tmp_path}/e", f"--dataset=npz:{path}",
                     *TINY)
    assert_one_line_error(result, "y_test")


def test_subset_ratio_outside_unit_interval_is_a_one_line_error(tmp_path):
    result = run_cli("train.py", f"--experiment_dir={tmp_path}/e", "--subset_ratio=1.5", *TINY)
    assert_one_line_error(result, "--subset_ratio", "(0, 1)")


def test_other_settings_in_the_same_directory_are_refused(experiment):
    result = run_cli("train.py", f"--experiment_dir={experiment}", *TINY, "--seed=7")
    assert_one_line_error(result, "experiment_dir", "seed (stored 0, given 7)")


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
