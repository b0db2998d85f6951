"""Issue 13, reproduced as real subprocesses of train.py / estimate.py at tiny sizes.

Each case asserts the new behaviour: refused with a one-line message (no traceback), or
completed with every run exactly once. Cases covered here: 1 and 9 (racing workers with
different settings; the loser names the differing keys), 2 (requeued task with claims
left by its killed predecessor), 3 (wrong-but-readable aux arrays), 5 (concurrent
writers of the same runs). The library-level halves (20 races, replaced data files,
runs without experiment.json, diverged runs) are in tests/store and tests/training.
"""

import os
import pathlib
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

import heldout
from heldout.store import coordination, files, layout, records, runs

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
TINY = ["--num_runs=4", "--epochs=1", "--models_at_once=4", "--progress=false"]
TIMEOUT = 300  # seconds a subprocess may take before the test fails

pytestmark = pytest.mark.slow


def _start(script, *args, env=None):
    environ = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "",
               **(env or {})}
    for name in ("SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_JOB_ID",
                 "JOB_COMPLETION_INDEX"):
        if env is None or name not in env:
            environ.pop(name, None)
    return subprocess.Popen([sys.executable, str(REPO_ROOT / script), *args], cwd=REPO_ROOT,
                            env=environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _run(script, *args, env=None):
    process = _start(script, *args, env=env)
    stdout, stderr = process.communicate(timeout=TIMEOUT)
    return process.returncode, stdout, stderr


def _one_line_error(stderr):
    """The error lines a CLI printed (absl and TensorFlow log lines aside)."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.startswith(("train.py:",
                                                                      "estimate.py:"))]
    assert len(lines) == 1, stderr
    return lines[0]


def _trained(stdout):
    ids = []
    for line in stdout.splitlines():
        if line.strip().startswith("trained run ids:"):
            ids += heldout.parse_run_ids(line.split(":", 1)[1].strip())
    return ids


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny default experiment: 4 digits runs of one epoch."""
    directory = str(tmp_path_factory.mktemp("trained") / "exp")
    code, _, stderr = _run("train.py", f"--experiment_dir={directory}", *TINY)
    assert code == 0, stderr
    return directory


def _copy(directory, tmp_path):
    copy = str(tmp_path / "exp")
    shutil.copytree(directory, copy)
    return copy


def test_case1_and_9_racing_workers_with_different_settings_never_mix(tmp_path):
    """Case 1: of two workers started at once with different settings exactly one proceeds;
    case 9: the other's one-line error names the differing keys, not the whole config."""
    directory = str(tmp_path / "race")
    settings = (["--epochs=1"], ["--epochs=2", "--learning_rate=0.05"])
    workers = [_start("train.py", f"--experiment_dir={directory}", *TINY, *flags)
               for flags in settings]
    outcomes = [(w.wait(timeout=TIMEOUT), *w.communicate()) for w in workers]
    codes = [code for code, _, _ in outcomes]
    assert sorted(codes) == [0, 1], outcomes
    winner = codes.index(0)
    error = _one_line_error(outcomes[1 - winner][2])
    given, stored = (1, 2) if winner else (2, 1)
    assert f"train_config.epochs (stored {stored}, given {given})" in error
    assert "train_config.learning_rate (stored " in error
    assert "batch_size" not in error and "{" not in error  # the keys, not the config
    epochs = {records.read_run_record(runs.run_dir(directory, "0.7", r)).train_config["epochs"]
              for r in range(4)}
    assert epochs == {winner + 1}  # every run of the winner's settings, none of the other's
    assert runs.list_runs(directory, "0.7") == ([0, 1, 2, 3], [])


def _dead_claims(directory, run_ids, task):
    """Claims a worker on another host held when it was killed (lease not yet over)."""
    claims = layout.ExperimentDir(directory).claims("0.7")
    for run_id in run_ids:
        files.write_json(layout.claim_file(claims, run_id), {
            "token": "killed", "host": "preempted-host", "pid": 12345, "task": task,
            "expires": time.time() + 600})


def test_case2_requeued_task_takes_over_its_claims_and_others_exit_3(tmp_path):
    directory = str(tmp_path / "requeue")
    slurm = {"SLURM_ARRAY_JOB_ID": "77", "SLURM_ARRAY_TASK_ID": "0"}
    # --run_ids instead of TINY's --num_runs (given both, train.py refuses --num_runs).
    flags = [f"--experiment_dir={directory}", *TINY[1:], "--run_ids=0-7", "--num_shards=1",
             "--shard_index=0"]
    # Task 0 was killed holding these, and task 1 these.
    _dead_claims(directory, range(4), coordination.task_identity(slurm))
    _dead_claims(directory, (4, 5), coordination.task_identity(
        {**slurm, "SLURM_ARRAY_TASK_ID": "1"}))
    start = time.time()
    code, stdout, stderr = _run("train.py", *flags, env=slurm)  # task 0, requeued
    assert code == coordination.EXIT_RUNS_CLAIMED_ELSEWHERE == 3, stderr
    assert _trained(stdout) == [0, 1, 2, 3, 6, 7]  # its own claims taken over at once
    assert "runs 4-5 of " in _one_line_error(stderr)  # task 1's: retry later
    code, stdout, stderr = _run("train.py", *flags, env={**slurm, "SLURM_ARRAY_TASK_ID": "1"})
    assert code == 0, stderr  # task 1, requeued: takes over its claims too
    assert _trained(stdout) == [4, 5]
    assert time.time() - start < 600  # neither waited for the lease
    assert runs.list_runs(directory, "0.7") == (list(range(8)), [])


def _rewrite(directory, run_id, change):
    run = layout.ExperimentDir(directory).run("0.7", run_id)
    arrays = files.read_npz(run.aux_arrays)
    change(arrays)
    files.write_npz(run.aux_arrays, arrays)


def _fewer_test_examples(arrays):
    keep = arrays["index_test"] < 400
    for prefix in ("correctness_", "index_", "margin_", "logodds_"):
        arrays[prefix + "test"] = arrays[prefix + "test"][keep]


def test_case3_wrong_but_readable_runs_are_found_moved_aside_and_redone(trained, tmp_path):
    directory = _copy(trained, tmp_path)
    original = files.read_npz(runs.run_dir(directory, "0.7", 1) + "/aux_arrays.npz")
    _rewrite(directory, 1, lambda a: a.update(
        correctness_test=a["correctness_test"].astype(np.float32) * 0.5))
    _rewrite(directory, 2, lambda a: a.update(subsample_idx=a["index_removed"]))
    _rewrite(directory, 3, _fewer_test_examples)
    code, stdout, stderr = _run("estimate.py", f"--experiment_dir={directory}", "--verify")
    assert code == 1, stderr
    assert "verified 4 complete runs: 3 damaged" in stdout
    assert "correctness_test has dtype float32" in stdout
    assert "subsample_idx differs from index_train" in stdout
    assert "400 test examples, expected 1352 and 445" in stdout

    code, stdout, stderr = _run("train.py", f"--experiment_dir={directory}", *TINY,
                                "--verify")
    assert code == 0, stderr
    assert "verified 4 complete runs: 3 damaged" in stdout
    assert _trained(stdout) == [1, 2, 3]
    assert runs.verify_runs(directory) == (4, [])
    redone = files.read_npz(runs.run_dir(directory, "0.7", 1) + "/aux_arrays.npz")
    for key in ("subsample_idx", "correctness_test", "margin_test"):
        np.testing.assert_array_equal(redone[key], original[key], err_msg=key)
    # Runs without experiment.json are refused for training: tests/training/test_experiment.py.


def test_case5_concurrent_writers_of_the_same_runs_leave_each_run_once(tmp_path):
    directory = str(tmp_path / "shared")
    workers = [_start("train.py", f"--experiment_dir={directory}", *TINY,
                      "--claim_runs=false") for _ in range(2)]
    outputs = []
    for worker in workers:
        stdout, stderr = worker.communicate(timeout=TIMEOUT)
        assert worker.returncode == 0, stderr
        outputs.append(stdout)
    assert sorted(_trained(outputs[0]) + _trained(outputs[1])) == [0, 1, 2, 3]
    assert runs.list_runs(directory, "0.7") == ([0, 1, 2, 3], [])
    assert runs.verify_runs(directory) == (4, [])
    for run_id in range(4):
        assert records.read_run_record(runs.run_dir(directory, "0.7", run_id)).run_id == run_id
