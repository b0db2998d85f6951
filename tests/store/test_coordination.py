"""Shards, claims and crash safety: many workers, one experiment directory (issue 7).

The fault-injection and concurrency cases run real train.py processes at tiny scale.
"""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time
import uuid

import numpy as np
import pytest
import tensorflow as tf

import heldout
from heldout.errors import ParameterError
from heldout.store import coordination, layout, records, runs

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
TINY = ["--models_at_once=4", "--epochs=2", "--progress=false"]


def train_cli(*args: str, **popen) -> subprocess.Popen:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.Popen([sys.executable, str(REPO_ROOT / "train.py"), *args],
                            cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **popen)


def trained_ids(stdout: str) -> list[int]:
    ids = []
    for line in stdout.splitlines():
        if line.strip().startswith("trained run ids:"):
            ids += heldout.parse_run_ids(line.split(":", 1)[1].strip())
    return ids


# --- shards --------------------------------------------------------------------------


def test_shards_partition_the_run_ids():
    ids = list(range(23))
    parts = [coordination.shard_run_ids(ids, coordination.Shard(i, 4, "flags"))
             for i in range(4)]
    assert sorted(sum(parts, [])) == ids
    assert parts[1] == [1, 5, 9, 13, 17, 21]


@pytest.mark.parametrize("flags_, environ, expected", [
    ((None, None), {}, (0, 1, "single")),
    ((3, 1), {"SLURM_ARRAY_TASK_ID": "2"}, (1, 3, "flags")),
    ((None, None), {"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_COUNT": "5"},
     (2, 5, "SLURM_ARRAY_TASK_ID")),
    ((None, None), {"SLURM_ARRAY_TASK_ID": "11", "SLURM_ARRAY_TASK_MIN": "10",
                    "SLURM_ARRAY_TASK_COUNT": "3"}, (1, 3, "SLURM_ARRAY_TASK_ID")),
    ((8, None), {"JOB_COMPLETION_INDEX": "7"}, (7, 8, "JOB_COMPLETION_INDEX")),
])
def test_shard_from_flags_or_scheduler(flags_, environ, expected):
    shard = coordination.resolve_shard(*flags_, environ=environ)
    assert (shard.index, shard.count, shard.source) == expected


@pytest.mark.parametrize("flags_, environ, message", [
    ((None, None), {"JOB_COMPLETION_INDEX": "2"}, "num_shards"),
    ((4, 4), {}, "shard_index"),
    ((4, None), {}, "num_shards"),  # a count without an index
])
def test_bad_shards_name_the_parameter(flags_, environ, message):
    with pytest.raises(ParameterError) as raised:
        coordination.resolve_shard(*flags_, environ=environ)
    assert raised.value.parameter == message


# --- claims --------------------------------------------------------------------------


def test_claims_exclude_other_workers_until_released(tmp_path):
    first = coordination.Claims(str(tmp_path), settle_seconds=0.0)
    second = coordination.Claims(str(tmp_path), settle_seconds=0.0)
    assert first.claim([0, 1, 2]) == [0, 1, 2]
    assert second.claim([1, 2, 3]) == [3]
    first.release([1])
    assert second.claim([1, 2]) == [1]
    assert first.held == {0, 2} and second.held == {1, 3}


def test_expired_or_dead_claims_are_taken_over(tmp_path):
    old = coordination.Claims(str(tmp_path), lease_seconds=0.05, settle_seconds=0.0)
    assert old.claim([0]) == [0]
    time.sleep(0.1)
    assert coordination.Claims(str(tmp_path), settle_seconds=0.0).claim([0]) == [0]
    # A claim of a process of this host that no longer exists is stale at once.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    path = tmp_path / "5.json"
    path.write_text(json.dumps({"token": "x", "host": os.uname().nodename, "pid": int(dead),
                                "expires": time.time() + 3600}))
    assert coordination.Claims(str(tmp_path), settle_seconds=0.0).claim([5]) == [5]


def test_racing_claims_have_one_winner(tmp_path):
    """Both write before either reads back: exactly one reads its own token."""
    workers = [coordination.Claims(str(tmp_path), settle_seconds=0.0) for _ in range(3)]
    tmp_path.mkdir(exist_ok=True)
    for worker in workers:
        worker._write(7)
    winners = [w for w in workers if (w._read(7) or {}).get("token") == w.token]
    assert len(winners) == 1


@pytest.mark.parametrize("environ, expected", [
    ({}, None),
    ({"SLURM_ARRAY_JOB_ID": "77", "SLURM_ARRAY_TASK_ID": "3", "SLURM_JOB_ID": "80"},
     "slurm:77_3:batch:0"),
    ({"SLURM_JOB_ID": "80"}, "slurm:80:batch:0"),
    ({"SLURM_JOB_ID": "80", "SLURM_STEP_ID": "1", "SLURM_PROCID": "2"}, "slurm:80:1:2"),
    ({"JOB_COMPLETION_INDEX": "2", "JOB_NAME": "heldout"}, "k8s:heldout:2"),
])
def test_task_identity_from_the_scheduler(environ, expected):
    assert coordination.task_identity(environ) == expected


def _foreign_claim(directory, run_id, task, expires_in=3600.0):
    """A live-looking claim of a worker on another host (one that was preempted, say)."""
    path = pathlib.Path(directory, f"{run_id}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"token": "gone", "host": "another-host", "pid": 1,
                                "task": task, "expires": time.time() + expires_in}))


def test_requeued_task_takes_over_its_own_claims_at_once(tmp_path):
    _foreign_claim(tmp_path, 0, "slurm:77:3")
    _foreign_claim(tmp_path, 1, "slurm:77:4")
    _foreign_claim(tmp_path, 2, None)
    requeued = coordination.Claims(str(tmp_path), settle_seconds=0.0, task="slurm:77:3")
    assert requeued.claim([0, 1, 2]) == [0]
    assert requeued.holder(1) == "slurm:77:4" and requeued.holder(2) == "another-host:1"
    untracked = coordination.Claims(str(tmp_path), settle_seconds=0.0, task=None)
    assert untracked.claim([1, 2]) == []


def test_heartbeat_thread_keeps_claims_live_while_the_worker_is_busy(tmp_path):
    lease = 0.6
    worker = coordination.Claims(str(tmp_path), lease_seconds=lease, settle_seconds=0.0)
    assert worker.claim([4]) == [4]
    with worker.heartbeat():
        time.sleep(3 * lease)  # busy: compiling or writing, no call into the claims
        other = coordination.Claims(str(tmp_path), lease_seconds=lease, settle_seconds=0.0)
        assert other.claim([4]) == []
        assert worker._read(4)["expires"] > time.time()
    time.sleep(1.5 * lease)  # no heartbeat: the lease runs out
    assert other.claim([4]) == [4]


def test_bad_lease_settings_name_the_parameter(tmp_path):
    with pytest.raises(ValueError, match="lease_seconds=0"):
        coordination.Claims(str(tmp_path), lease_seconds=0)
    with pytest.raises(ValueError, match="settle_seconds=-1"):
        coordination.Claims(str(tmp_path), settle_seconds=-1)


# --- storage on other file systems -----------------------------------------------------


def test_experiment_on_tensorflows_ram_filesystem():
    directory = f"ram://heldout-tests/{uuid.uuid4().hex}/experiment"
    config = heldout.TrainConfig(models_at_once=4, epochs=1)
    summary = heldout.train_experiment(directory, "digits", config, 0.7, range(5),
                                       progress=False, settle_seconds=0.0)
    assert summary.trained == (0, 1, 2, 3, 4)
    again = heldout.train_experiment(directory, "digits", config, 0.7, range(5),
                                     progress=False, settle_seconds=0.0)
    assert again.trained == () and again.already_complete == (0, 1, 2, 3, 4)
    experiment = heldout.load_experiment(directory, "0.7", progress=False)
    assert experiment.num_runs == 5 and experiment.membership.sum(axis=1).tolist() == [946] * 5
    assert not tf.io.gfile.glob(f"{directory}/{layout.CLAIMS_DIRNAME}/0.7/*.json")
    assert tf.io.gfile.listdir(f"{directory}/0.7") == [str(r) for r in range(5)]


# --- damaged and vanishing runs --------------------------------------------------------


@pytest.fixture(scope="module")
def small_experiment(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("small") / "exp")
    heldout.train_experiment(directory, "digits", heldout.TrainConfig(models_at_once=4, epochs=1),
                             0.7, range(6), progress=False, settle_seconds=0.0)
    return directory


def test_reader_skips_runs_that_vanish_while_reading(small_experiment, monkeypatch):
    listed = runs.list_runs(small_experiment, "0.7")
    monkeypatch.setattr(runs, "list_runs", lambda *_: (listed[0] + [99], listed[1]))
    experiment = runs.load_experiment(small_experiment, "0.7", progress=False)
    assert experiment.run_ids.tolist() == [0, 1, 2, 3, 4, 5]
    assert experiment.skipped == (99,)


@pytest.mark.slow
def test_damaged_run_is_named_by_reader_and_verify_and_redone(small_experiment, tmp_path):
    import shutil

    directory = str(tmp_path / "exp")
    shutil.copytree(small_experiment, directory)
    aux = pathlib.Path(directory, "0.7", "3", "aux_arrays.npz")
    original = np.load(aux)["correctness_test"]
    aux.write_bytes(aux.read_bytes()[:200])  # truncated by a dying disk, say
    with pytest.raises(runs.RunFileError, match=r"0\.7/3/aux_arrays\.npz"):
        runs.load_experiment(directory, "0.7", progress=False)

    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    verify = subprocess.run([sys.executable, str(REPO_ROOT / "estimate.py"),
                             f"--experiment_dir={directory}", "--verify"],
                            capture_output=True, text=True, cwd=REPO_ROOT, env=env, timeout=300)
    assert verify.returncode == 1
    assert "damaged run" in verify.stdout and "0.7/3" in verify.stdout
    assert "verified 6 complete runs: 1 damaged" in verify.stdout

    retrain = subprocess.run(
        [sys.executable, str(REPO_ROOT / "train.py"), f"--experiment_dir={directory}",
         "--num_runs=6", "--models_at_once=4", "--epochs=1", "--progress=false", "--verify"],
        capture_output=True, text=True, cwd=REPO_ROOT, env=env, timeout=300)
    assert retrain.returncode == 0, retrain.stderr
    assert "verified 6 complete runs: 1 damaged" in retrain.stdout
    assert trained_ids(retrain.stdout) == [3]
    np.testing.assert_array_equal(np.load(aux)["correctness_test"], original)
    assert list(pathlib.Path(directory, "0.7", layout.CORRUPT_DIRNAME).glob("3-*.npz"))


# --- processes killed mid-flight, and concurrent workers -------------------------------


def _complete_runs(directory: str) -> int:
    """Complete runs of design 0.7 in `directory` (a run's directory appears by rename)."""
    return sum(path.parent.name.isdigit()
               for path in pathlib.Path(directory, "0.7").glob("*/aux_arrays.npz"))


@pytest.mark.slow
def test_killed_trainers_restarted_until_done_equal_an_uninterrupted_experiment(tmp_path):
    # Four groups of 4 trained one after the other, so every attempt makes progress.
    args = ["--num_runs=16", "--concurrent_programs=1", *TINY]
    reference = str(tmp_path / "reference")  # uninterrupted, in this process (as train.py)
    heldout.train_experiment(reference, "digits", heldout.TrainConfig(
        models_at_once=4, epochs=2, concurrent_programs=1), 0.7, range(16), progress=False)

    # The first two attempts are killed (SIGKILL) once each has completed a group's worth
    # of runs (4), while its next group trains or is being written, whatever the speed of
    # the machine (after 4-7 and 8-15 runs, so some are always left); the third finishes.
    interrupted = str(tmp_path / "interrupted")
    kills = 0
    for _ in range(3):
        before = _complete_runs(interrupted)
        process = train_cli(f"--experiment_dir={interrupted}", *args)
        deadline = time.monotonic() + 300
        while process.poll() is None and (kills == 2 or
                                          _complete_runs(interrupted) < before + 4):
            assert time.monotonic() < deadline, "an attempt made no progress in 300 s"
            time.sleep(0.005)
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait()
            kills += 1
            continue
        assert process.returncode == 0, process.stderr.read()
        break
    else:
        pytest.fail("the experiment never finished")
    assert kills >= 2  # the test did interrupt training

    complete, incomplete = runs.list_runs(interrupted, "0.7")
    assert complete == list(range(16)) and incomplete == []
    assert not list(pathlib.Path(interrupted).rglob("*.tmp-*"))
    for run_id in range(16):
        ours = runs.load_run(runs.run_dir(interrupted, "0.7", run_id))
        theirs = runs.load_run(runs.run_dir(reference, "0.7", run_id))
        for key in ("subsample_idx", "correctness_train", "correctness_removed",
                    "correctness_test", "margin_test"):
            np.testing.assert_array_equal(ours[key], theirs[key], err_msg=f"run {run_id} {key}")
    ours = heldout.estimate_experiment(interrupted, progress=False)
    theirs = heldout.estimate_experiment(reference, progress=False)
    np.testing.assert_array_equal(ours.memorization.score, theirs.memorization.score)
    np.testing.assert_array_equal(ours.influence.matrix, theirs.influence.matrix)


@pytest.mark.slow
def test_four_concurrent_workers_with_overlapping_ids_train_each_run_once(tmp_path):
    directory = str(tmp_path / "shared")
    workers = [train_cli(f"--experiment_dir={directory}", f"--run_ids={4 * w}-{4 * w + 11}",
                         *TINY) for w in range(4)]
    outputs = []
    for worker in workers:
        stdout, stderr = worker.communicate(timeout=600)
        # 3: runs of its ids were still being trained by another worker when it ended.
        assert worker.returncode in (0, coordination.EXIT_RUNS_CLAIMED_ELSEWHERE), stderr
        assert (worker.returncode == 0) == ("claimed by other workers" not in stderr)
        outputs.append(stdout)
    trained = sum((trained_ids(out) for out in outputs), [])
    assert sorted(trained) == list(range(24))  # each run trained once, by one worker
    finishers = {}
    for run_id in range(24):
        record = records.read_run_record(runs.run_dir(directory, "0.7", run_id))
        finishers[run_id] = (record.host, record.pid)
    assert len(set(finishers.values())) >= 2  # the work really was shared
    assert runs.list_runs(directory, "0.7") == (list(range(24)), [])
