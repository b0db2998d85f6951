"""Issue 24, items 5-7 in the store layer: names from files and subset names cannot
leave the experiment, leases are validated and claims keyed to the scheduler's task
(never only the job), and runs copied under another id or not fitting their folder's
design are found by `verify_runs` and refused by the run-matrix reader.
"""

import json
import math
import shutil

import numpy as np
import pytest

from heldout.errors import ParameterError
from heldout.store import coordination, designs, files, layout, runs, targets

NUM_TRAIN, NUM_TEST = 40, 12


# --- 5: path escape -----------------------------------------------------------------------

@pytest.mark.parametrize("name", ["x/../../..", "..", "../../etc", "a\\b", "", " x"])
def test_names_are_single_path_components(tmp_path, name):
    experiment = layout.ExperimentDir(str(tmp_path / "e"))
    for call in (lambda: experiment.subset(name), lambda: experiment.run(name, 0),
                 lambda: experiment.claims(name), lambda: experiment.estimates(name or "x/.."),
                 lambda: experiment.targets(name), lambda: experiment.targeted_report(name),
                 lambda: experiment.attribution("trak", name, 0),
                 lambda: runs.load_experiment(str(tmp_path / "e"), name or "..")):
        with pytest.raises(ValueError, match="single folder or file name"):
            call()


def test_target_set_file_with_escaping_name_is_refused(tmp_path):
    path = tmp_path / "evil.json"
    path.write_text(json.dumps({"name": "x/../../..", "groups": {"user": [1, 2]}}))
    with pytest.raises(ValueError) as info:
        targets.load_targets(str(path))
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(ParameterError, match="name=x/../../.."):
        targets.TargetSet(name="x/../../..", groups={"user": (1,)})
    assert targets.TargetSet(name="easy-10_b", groups={"user": (1,)}).drop_subset == \
        "drop-easy-10_b"
    assert not list(tmp_path.parent.glob("x"))  # nothing was created outside


# --- 6: leases and task identity -----------------------------------------------------------

@pytest.mark.parametrize("lease", [math.nan, math.inf, -1.0, 0.0, 1e300])
def test_lease_seconds_must_be_finite_and_positive(tmp_path, lease):
    with pytest.raises(ParameterError) as info:
        coordination.Claims(str(tmp_path), lease_seconds=lease)
    assert info.value.parameter == "lease_seconds"


def test_a_claim_with_a_nan_expiry_is_stale(tmp_path):
    (tmp_path / "0.json").write_text(json.dumps({
        "token": "t", "host": "other", "pid": 1, "task": None, "expires": math.nan}))
    claims = coordination.Claims(str(tmp_path), settle_seconds=0.0, task=None)
    assert claims.claim([0]) == [0]


def test_two_steps_of_one_job_are_different_tasks(tmp_path):
    job = {"SLURM_JOB_ID": "900"}
    step0 = coordination.task_identity({**job, "SLURM_STEP_ID": "0", "SLURM_PROCID": "0"})
    step1 = coordination.task_identity({**job, "SLURM_STEP_ID": "1", "SLURM_PROCID": "0"})
    rank1 = coordination.task_identity({**job, "SLURM_STEP_ID": "0", "SLURM_PROCID": "1"})
    assert len({step0, step1, rank1}) == 3 and "900" in step0
    array = {"SLURM_ARRAY_JOB_ID": "5", "SLURM_ARRAY_TASK_ID": "3", "SLURM_JOB_ID": "8"}
    assert coordination.task_identity(array) != coordination.task_identity(
        {**array, "SLURM_ARRAY_TASK_ID": "4"})
    # Step 0 holds runs 0-1; step 1 of the same job must not take them as its own.
    first = coordination.Claims(str(tmp_path), settle_seconds=0.0, task=step0)
    assert first.claim([0, 1]) == [0, 1]
    second = coordination.Claims(str(tmp_path), settle_seconds=0.0, task=step1)
    assert second.claim([0, 1, 2]) == [2]
    # A requeued step 0 (same identity, new process) takes over its claims at once.
    requeued = coordination.Claims(str(tmp_path), settle_seconds=0.0, task=step0)
    assert requeued.claim([0, 1]) == [0, 1]


# --- 7: garbage counted -------------------------------------------------------------------

def _save(directory, subset, run_id, subset_indices, seed=0):
    rng = np.random.default_rng(1000 * seed + run_id)
    arrays = runs.aux_arrays(subset_indices, rng.random(NUM_TRAIN) < 0.5,
                             rng.random(NUM_TEST) < 0.5,
                             margin_train=rng.normal(size=NUM_TRAIN).astype(np.float32),
                             margin_test=rng.normal(size=NUM_TEST).astype(np.float32))
    runs.save_run(runs.run_dir(directory, subset, run_id), arrays)


def _experiment(tmp_path, seed=7, num_runs=4):
    """Runs of design 0.7 on the subsets the design derives, with experiment.json."""
    directory = str(tmp_path / "exp")
    for r in range(num_runs):
        _save(directory, "0.7", r, designs.subset_indices(NUM_TRAIN, "0.7", seed, r))
    files.write_json(layout.ExperimentDir(directory).experiment_info, {
        "seed": seed, "data": {"num_train": NUM_TRAIN, "num_test": NUM_TEST}})
    return directory


def test_clean_experiment_verifies_and_loads(tmp_path):
    directory = _experiment(tmp_path)
    assert runs.verify_runs(directory) == (4, [])
    experiment = runs.load_experiment(directory, "0.7", progress=False)
    assert experiment.num_runs == 4
    assert (experiment.membership.sum(1) == round(0.7 * NUM_TRAIN)).all()


def test_run_copied_under_another_id_is_found(tmp_path):
    directory = _experiment(tmp_path)
    shutil.copytree(runs.run_dir(directory, "0.7", 1), runs.run_dir(directory, "0.7", 9))
    checked, problems = runs.verify_runs(directory)
    assert checked == 5 and [p[0] for p in problems] == [runs.run_dir(directory, "0.7", 9)]
    assert "copied" in problems[0][1]
    with pytest.raises(runs.RunFileError, match=r"0\.7/9/aux_arrays.npz: .*as .*0\.7/1"):
        runs.load_experiment(directory, "0.7", progress=False)


def test_copy_without_experiment_record_still_found_by_its_arrays(tmp_path):
    directory = _experiment(tmp_path)
    (tmp_path / "exp" / "experiment.json").unlink()  # released runs have no record
    shutil.copytree(runs.run_dir(directory, "0.7", 2), runs.run_dir(directory, "0.7", 5))
    problems = runs.verify_runs(directory)[1]
    assert [p[0] for p in problems] == [runs.run_dir(directory, "0.7", 5)]
    with pytest.raises(runs.RunFileError, match="copied under another id"):
        runs.load_experiment(directory, "0.7", progress=False)


def test_run_of_every_example_in_the_ratio_folder_is_refused(tmp_path):
    directory = _experiment(tmp_path)
    _save(directory, "0.7", 4, np.arange(NUM_TRAIN), seed=3)  # a "full" run put into 0.7
    _save(directory, "0.7", 5, np.arange(20), seed=3)  # a 0.5 run
    problems = dict(runs.verify_runs(directory)[1])
    assert set(problems) == {runs.run_dir(directory, "0.7", r) for r in (4, 5)}
    assert "trains on 40 of 40 examples, but design 0.7 takes 28" in problems[
        runs.run_dir(directory, "0.7", 4)]
    with pytest.raises(runs.RunFileError, match="trains on 40 of 40 examples"):
        runs.load_experiment(directory, "0.7", progress=False)


def test_run_of_the_right_size_but_not_the_derived_subset(tmp_path):
    """With the experiment seed recorded, the subset must be the derived one: a run of
    another experiment (other seed) copied in has the right size but other examples."""
    directory = _experiment(tmp_path)
    _save(directory, "0.7", 4, designs.subset_indices(NUM_TRAIN, "0.7", 99, 4), seed=5)
    problems = runs.verify_runs(directory)[1]
    assert [p[0] for p in problems] == [runs.run_dir(directory, "0.7", 4)]
    assert "other examples than run 4 of design 0.7 with experiment seed 7" in problems[0][1]


def test_design_problem_matches_a_plain_rule():
    """Against the rule written out: ratio designs within one example of ratio * n when
    the seed is recorded, never every example; full: all; drop: all but the targets."""
    rng = np.random.default_rng(0)
    for size in range(NUM_TRAIN + 1):
        chosen = np.sort(rng.choice(NUM_TRAIN, size, replace=False))
        exact = runs.design_problem("0.7", 0, chosen, NUM_TRAIN, seed=1, derive=False)
        assert (exact is None) == (abs(size - 28) <= 1 and size < NUM_TRAIN)
        full = runs.design_problem("full", 0, chosen, NUM_TRAIN)
        assert (full is None) == (size == NUM_TRAIN)
        drop = runs.design_problem("drop-x", 0, chosen, NUM_TRAIN, dropped=np.array([3, 5]))
        assert (drop is None) == (size == NUM_TRAIN - 2 and not np.isin([3, 5], chosen).any())
    kept = np.setdiff1d(np.arange(NUM_TRAIN), [3, 5])
    assert runs.design_problem("drop-x", 0, kept, NUM_TRAIN, dropped=np.array([3, 5])) is None
    swapped = np.append(np.setdiff1d(kept, [7]), 3)  # the right size, a target inside
    assert "target example 3" in runs.design_problem("drop-x", 0, swapped, NUM_TRAIN,
                                                       dropped=np.array([3, 5]))
    assert runs.design_problem("not-a-design", 0, np.arange(3), NUM_TRAIN) is None


def test_full_runs_with_equal_predictions_are_not_taken_for_copies(tmp_path):
    """Runs of the full design all train on every example: two of them that happen to
    predict alike (0/1 only, as released files) are not copies; with margins, an exact
    copy still is."""
    directory = str(tmp_path / "targeted")
    right_train, right_test = np.ones(NUM_TRAIN, bool), np.ones(NUM_TEST, bool)
    for r in range(2):
        runs.save_run(runs.run_dir(directory, "full", r), runs.aux_arrays(
            np.arange(NUM_TRAIN), right_train, right_test))
    assert runs.verify_runs(directory) == (2, [])
    assert runs.load_experiment(directory, "full", progress=False).num_runs == 2
    _save(directory, "full", 5, np.arange(NUM_TRAIN))
    shutil.copytree(runs.run_dir(directory, "full", 5), runs.run_dir(directory, "full", 6))
    shutil.rmtree(runs.run_dir(directory, "full", 0))
    shutil.rmtree(runs.run_dir(directory, "full", 1))
    assert [p[0] for p in runs.verify_runs(directory)[1]] == [
        runs.run_dir(directory, "full", 6)]


def test_experiment_sizes_without_loading_runs(tmp_path):
    directory = _experiment(tmp_path)
    assert runs.experiment_sizes(directory) == (NUM_TRAIN, NUM_TEST)
    (tmp_path / "exp" / "experiment.json").unlink()
    assert runs.experiment_sizes(directory, "0.7") == (NUM_TRAIN, NUM_TEST)
    with pytest.raises(ValueError, match="no complete runs"):
        runs.experiment_sizes(str(tmp_path / "nothing"))


def test_load_membership_equals_the_run_matrix(tmp_path):
    directory = _experiment(tmp_path)
    experiment = runs.load_experiment(directory, "0.7", progress=False)
    masks = runs.load_membership(directory, "0.7", [2, 0], NUM_TRAIN)
    np.testing.assert_array_equal(masks, experiment.membership[[2, 0]])
    with pytest.raises(runs.RunFileError, match="outside"):
        runs.load_membership(directory, "0.7", [1], NUM_TRAIN - 5)
