"""Tests of heldout.store.runs: saving, finding, loading and verifying runs."""

import io
import re
import uuid

import numpy as np
import pytest
import tensorflow as tf

from heldout.store import records, runs

RELEASED_KEYS = ("subsample_idx", "correctness_train", "correctness_removed",
                 "correctness_test", "index_train", "index_removed", "index_test")
NUM_TRAIN, NUM_TEST, NUM_CLASSES = 13, 6, 4


@pytest.fixture(params=["local", "ram"])
def base(request, tmp_path):
    """An experiment directory on local disk, or in TensorFlow's in-memory file system."""
    if request.param == "local":
        yield str(tmp_path / "experiment")
        return
    directory = f"ram://heldout-tests/{uuid.uuid4().hex}/experiment"
    yield directory
    try:  # Best effort: the RAM file system's rmtree fails on some trees (TF quirk).
        tf.io.gfile.rmtree(directory)
    except tf.errors.OpError:
        pass


def _truth(run_id, num_train=NUM_TRAIN, num_test=NUM_TEST):
    """Ground truth of one run: its subset and its predictions on the whole splits."""
    rng = np.random.default_rng(100 + run_id)
    subset = np.sort(rng.choice(num_train, size=int(0.7 * num_train), replace=False))
    return {
        "subset": subset,
        "correctness_train": rng.random(num_train) < 0.5,
        "correctness_test": rng.random(num_test) < 0.5,
        "margin_train": rng.normal(size=num_train).astype(np.float32),
        "margin_test": rng.normal(size=num_test).astype(np.float32),
        "logits_train": rng.normal(size=(num_train, NUM_CLASSES)).astype(np.float32),
        "logits_test": rng.normal(size=(num_test, NUM_CLASSES)).astype(np.float32),
    }


def _arrays(truth, margins=True, logits=False):
    return runs.aux_arrays(
        truth["subset"], truth["correctness_train"], truth["correctness_test"],
        margin_train=truth["margin_train"] if margins else None,
        margin_test=truth["margin_test"] if margins else None,
        logits_train=truth["logits_train"] if logits else None,
        logits_test=truth["logits_test"] if logits else None)


def _write_bytes(path, content):
    """Writes a whole file, creating its folder; removes it first, because TensorFlow's
    ram:// file system appends to an existing file opened with "wb"."""
    tf.io.gfile.makedirs(path.rsplit("/", 1)[0])
    if tf.io.gfile.exists(path):
        tf.io.gfile.remove(path)
    with tf.io.gfile.GFile(path, "wb") as f:
        f.write(content)


def _read_bytes(path):
    with tf.io.gfile.GFile(path, "rb") as f:
        return f.read()


def _write_npz(directory, arrays):
    """Writes aux_arrays.npz with exactly `arrays`, as another writer (np.savez) would."""
    tf.io.gfile.makedirs(directory)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    _write_bytes(tf.io.gfile.join(directory, "aux_arrays.npz"), buffer.getvalue())


def _released_file(truth, rng, margins=False):
    """Released-format arrays (only the 7 keys), index arrays stored in shuffled order."""
    in_subset = set(truth["subset"].tolist())
    split_rows = {
        "train": [i for i in range(len(truth["correctness_train"])) if i in in_subset],
        "removed": [i for i in range(len(truth["correctness_train"])) if i not in in_subset],
        "test": list(range(len(truth["correctness_test"]))),
    }
    arrays = {"subsample_idx": truth["subset"].astype(np.int64)}
    for split, rows in split_rows.items():
        rows = rng.permutation(np.array(rows, dtype=np.int64))
        source = "test" if split == "test" else "train"
        arrays[f"correctness_{split}"] = truth[f"correctness_{source}"][rows]
        arrays[f"index_{split}"] = rows
        if margins:
            arrays[f"margin_{split}"] = truth[f"margin_{source}"][rows]
    return arrays


def _expected_matrices(truths):
    """Brute-force matrices over examples in index order, one row per run."""
    membership = np.array([[i in set(t["subset"].tolist()) for i in range(NUM_TRAIN)]
                           for t in truths])
    return {
        "membership": membership,
        "correctness_train": np.array([t["correctness_train"] for t in truths]),
        "correctness_test": np.array([t["correctness_test"] for t in truths]),
        "margin_train": np.array([t["margin_train"] for t in truths]),
        "margin_test": np.array([t["margin_test"] for t in truths]),
    }


def _assert_same_arrays(got, expected):
    assert sorted(got) == sorted(expected)
    for key, value in expected.items():
        assert got[key].dtype == value.dtype, key
        np.testing.assert_array_equal(got[key], value, err_msg=key)


# --- aux_arrays ----------------------------------------------------------------------------

def test_aux_arrays_split_train_removed_test_like_a_loop():
    truth = _truth(0)
    arrays = _arrays(truth, margins=True, logits=True)
    expected_keys = set(RELEASED_KEYS) | {f"{p}_{s}" for p in ("margin", "logits")
                                          for s in ("train", "removed", "test")}
    assert set(arrays) == expected_keys
    train_rows, removed_rows = [], []
    for i in range(NUM_TRAIN):
        (train_rows if i in truth["subset"].tolist() else removed_rows).append(i)
    rows = {"train": train_rows, "removed": removed_rows, "test": list(range(NUM_TEST))}
    for split, split_rows in rows.items():
        source = "test" if split == "test" else "train"
        assert arrays[f"index_{split}"].tolist() == split_rows
        assert arrays[f"correctness_{split}"].tolist() == [
            bool(truth[f"correctness_{source}"][i]) for i in split_rows]
        assert arrays[f"margin_{split}"].tolist() == [
            float(truth[f"margin_{source}"][i]) for i in split_rows]
        for k, i in enumerate(split_rows):
            np.testing.assert_array_equal(arrays[f"logits_{split}"][k],
                                          truth[f"logits_{source}"][i].astype(np.float16))
        assert arrays[f"correctness_{split}"].dtype == bool
        assert arrays[f"index_{split}"].dtype == np.int64
        assert arrays[f"margin_{split}"].dtype == np.float32
        assert arrays[f"logits_{split}"].dtype == np.float16
    assert arrays["subsample_idx"].tolist() == truth["subset"].tolist()


def test_aux_arrays_without_optional_predictions_has_only_released_keys():
    arrays = _arrays(_truth(1), margins=False, logits=False)
    assert set(arrays) == set(RELEASED_KEYS)


# --- save_run / load_run -------------------------------------------------------------------

def test_save_then_load_round_trips_every_key(base):
    directory = runs.run_dir(base, "0.7", 3)
    assert directory.endswith("0.7/3")
    arrays = _arrays(_truth(3), margins=True, logits=True)
    record = records.RunRecord(seed=3, train_config={"epochs": 2}, run_id=3)
    assert not runs.run_complete(directory)
    runs.save_run(directory, arrays, record)
    assert runs.run_complete(directory)
    _assert_same_arrays(runs.load_run(directory), arrays)
    assert records.read_run_record(directory) == record
    assert sorted(tf.io.gfile.listdir(directory)) == ["aux_arrays.npz", "run.json"]
    assert runs.list_runs(base, "0.7") == ([3], [])
    assert runs.list_subsets(base) == ["0.7"]


def test_save_run_completes_over_leftovers_of_an_interrupted_attempt(base):
    directory = runs.run_dir(base, "0.7", 0)
    tf.io.gfile.makedirs(tf.io.gfile.join(directory, "checkpoints"))
    _write_bytes(tf.io.gfile.join(directory, "run.json"), b"{half a")
    if not base.startswith("ram://"):
        # Not on ram://: TensorFlow's RAM file system answers exists() by prefix, so
        # there "aux_arrays.npz" would seem to exist beside "aux_arrays.npz.tmp-0123".
        _write_bytes(tf.io.gfile.join(directory, "aux_arrays.npz.tmp-0123"), b"half a file")
    assert not runs.run_complete(directory)
    assert runs.list_runs(base, "0.7") == ([], [0])
    arrays = _arrays(_truth(0))
    assert runs.save_run(directory, arrays, records.RunRecord(seed=2))
    _assert_same_arrays(runs.load_run(directory), arrays)
    assert records.read_run_record(directory) == records.RunRecord(seed=2)
    assert runs.list_runs(base, "0.7") == ([0], [])


def test_remove_leftovers_deletes_only_temporaries(base):
    directory = runs.run_dir(base, "0.7", 5)
    tf.io.gfile.makedirs(tf.io.gfile.join(directory, "checkpoints.tmp-77"))
    _write_bytes(tf.io.gfile.join(directory, "checkpoints.tmp-77", "ckpt-1.index"), b"x")
    _write_bytes(tf.io.gfile.join(directory, "run.json"), b"{}")  # first: ram:// exists()
    _write_bytes(tf.io.gfile.join(directory, "run.json.tmp-01"), b"{half")  # is by prefix
    _write_bytes(tf.io.gfile.join(directory, "aux_arrays.npz.tmp-02"), b"half a file")
    tf.io.gfile.makedirs(tf.io.gfile.join(directory, "checkpoints"))
    assert runs.remove_leftovers(directory) == 3
    assert sorted(e.rstrip("/") for e in tf.io.gfile.listdir(directory)) == [
        "checkpoints", "run.json"]
    assert runs.remove_leftovers(directory) == 0
    assert runs.remove_leftovers(runs.run_dir(base, "0.7", 6)) == 0  # no directory yet


def test_save_run_never_replaces_a_complete_run(base):
    directory = runs.run_dir(base, "0.7", 1)
    first = _arrays(_truth(1))
    assert runs.save_run(directory, first, records.RunRecord(seed=1))
    assert not runs.save_run(directory, _arrays(_truth(2), margins=False),
                             records.RunRecord(seed=2))
    _assert_same_arrays(runs.load_run(directory), first)
    assert records.read_run_record(directory) == records.RunRecord(seed=1)


def test_concurrent_saves_of_one_run_leave_one_complete_valid_run(tmp_path):
    """Case 5 of issue 13: writers of one run (claims off or expired) never crash each
    other, and exactly one of them completes the run."""
    import concurrent.futures
    import threading

    writers = 8
    for attempt in range(10):
        directory = runs.run_dir(str(tmp_path / "exp"), "0.7", attempt)
        candidates = [_arrays(_truth(attempt * writers + w)) for w in range(writers)]
        start = threading.Barrier(writers)

        def save(w, directory=directory, candidates=candidates, start=start):
            variable = tf.Variable([float(w)] * 3)
            start.wait()
            return runs.save_run(directory, candidates[w], records.RunRecord(pid=w),
                                 tf.train.Checkpoint(v=variable), epoch=1)

        with concurrent.futures.ThreadPoolExecutor(writers) as pool:
            completed = list(pool.map(save, range(writers)))  # re-raises any writer's error
        assert sum(completed) == 1, completed
        winner = completed.index(True)
        _assert_same_arrays(runs.load_run(directory), candidates[winner])
        assert isinstance(records.read_run_record(directory).pid, int)
        assert runs.check_run_arrays(runs.load_run(directory), NUM_TRAIN, NUM_TEST) is None
        restored = tf.Variable([0.0] * 3)
        tf.train.Checkpoint(v=restored).restore(
            tf.io.gfile.join(directory, "checkpoints", "ckpt-1")).assert_consumed()
        assert len(set(restored.numpy().tolist())) == 1  # one writer's whole checkpoint
        assert not [n for n in tf.io.gfile.listdir(directory) if ".tmp-" in n]


def test_save_run_with_checkpoint(tmp_path):
    directory = str(tmp_path / "0.7" / "0")
    variable = tf.Variable([1.5, -2.0, 3.25])
    runs.save_run(directory, _arrays(_truth(0)), checkpoint=tf.train.Checkpoint(v=variable),
                  epoch=3)
    checkpoints = tf.io.gfile.join(directory, "checkpoints")
    assert tf.io.gfile.exists(tf.io.gfile.join(checkpoints, "ckpt-3.index"))
    restored = tf.Variable([0.0, 0.0, 0.0])
    tf.train.Checkpoint(v=restored).restore(
        tf.io.gfile.join(checkpoints, "ckpt-3")).assert_consumed()
    assert restored.numpy().tolist() == [1.5, -2.0, 3.25]
    assert not any(".tmp-" in name for name in tf.io.gfile.listdir(directory))
    assert runs.run_complete(directory)


# --- released files and load_experiment ---------------------------------------------------

def test_released_format_file_loads(base):
    rng = np.random.default_rng(0)
    truths = [_truth(r) for r in range(3)]
    files = [_released_file(t, rng) for t in truths]
    for run_id, arrays in enumerate(files):
        _write_npz(runs.run_dir(base, "0.7", run_id), arrays)
    for run_id, arrays in enumerate(files):
        directory = runs.run_dir(base, "0.7", run_id)
        _assert_same_arrays(runs.load_run(directory), arrays)
        assert records.read_run_record(directory) == records.RunRecord()
    experiment = runs.load_experiment(base, "0.7", num_threads=2, progress=False)
    expected = _expected_matrices(truths)
    assert experiment.margin_train is None and experiment.margin_test is None
    assert experiment.run_ids.tolist() == [0, 1, 2] and experiment.num_runs == 3
    for key in ("membership", "correctness_train", "correctness_test"):
        np.testing.assert_array_equal(getattr(experiment, key), expected[key], err_msg=key)
    assert experiment.skipped == ()


def test_load_experiment_in_index_order_from_shuffled_files(base):
    rng = np.random.default_rng(1)
    run_ids = [0, 1, 2, 4, 10]  # numeric order: 10 comes after 4, not after 1
    truths = {r: _truth(r) for r in run_ids}
    for r in run_ids:
        arrays = _released_file(truths[r], rng, margins=True)
        assert not np.all(np.diff(arrays["index_train"]) > 0)  # really shuffled
        _write_npz(runs.run_dir(base, "0.7", r), arrays)
    # Incomplete runs: a folder with only run.json, an empty folder, a temporary file.
    _write_bytes(tf.io.gfile.join(runs.run_dir(base, "0.7", 3), "run.json"), b"{}")
    tf.io.gfile.makedirs(runs.run_dir(base, "0.7", 7))
    _write_bytes(tf.io.gfile.join(runs.run_dir(base, "0.7", 12), "aux_arrays.npz.tmp-ab"),
                 b"partial")
    tf.io.gfile.makedirs(tf.io.gfile.join(base, "0.7", "notes"))

    assert runs.list_runs(base, "0.7") == ([0, 1, 2, 4, 10], [3, 7, 12])
    experiment = runs.load_experiment(base, "0.7", num_threads=3, progress=False)
    assert experiment.run_ids.tolist() == run_ids
    assert experiment.skipped == (3, 7, 12)
    expected = _expected_matrices([truths[r] for r in run_ids])
    for key, value in expected.items():
        got = getattr(experiment, key)
        assert got.shape == value.shape, key
        np.testing.assert_array_equal(got, value, err_msg=key)
    assert experiment.membership.dtype == bool
    assert experiment.margin_train.dtype == np.float32


def test_load_experiment_from_saved_runs_matches_truth(base):
    truths = [_truth(r) for r in range(4)]
    for r, truth in enumerate(truths):
        runs.save_run(runs.run_dir(base, "0.7", r), _arrays(truth, logits=True))
    experiment = runs.load_experiment(base, "0.7", progress=False)
    expected = _expected_matrices(truths)
    for key, value in expected.items():
        np.testing.assert_array_equal(getattr(experiment, key), value, err_msg=key)


def test_load_experiment_margins_none_when_some_run_lacks_them(tmp_path):
    base = str(tmp_path)
    runs.save_run(runs.run_dir(base, "0.7", 0), _arrays(_truth(0), margins=True))
    runs.save_run(runs.run_dir(base, "0.7", 1), _arrays(_truth(1), margins=False))
    experiment = runs.load_experiment(base, "0.7", progress=False)
    assert experiment.margin_train is None and experiment.margin_test is None
    expected = _expected_matrices([_truth(0), _truth(1)])
    np.testing.assert_array_equal(experiment.correctness_train, expected["correctness_train"])


def test_list_subsets_and_list_runs(base):
    runs.save_run(runs.run_dir(base, "0.7", 0), _arrays(_truth(0)))
    runs.save_run(runs.run_dir(base, "full", 2), _arrays(_truth(2)))
    tf.io.gfile.makedirs(runs.run_dir(base, "drop-x", 5))  # incomplete run only
    tf.io.gfile.makedirs(tf.io.gfile.join(base, "empty"))
    tf.io.gfile.makedirs(tf.io.gfile.join(base, "plots", "figures"))
    _write_bytes(tf.io.gfile.join(base, "experiment.json"), b"{}")
    assert runs.list_subsets(base) == ["0.7", "drop-x", "full"]
    assert runs.list_runs(base, "0.7") == ([0], [])
    assert runs.list_runs(base, "full") == ([2], [])
    assert runs.list_runs(base, "drop-x") == ([], [5])
    assert runs.list_runs(base, "missing") == ([], [])
    assert runs.list_subsets(tf.io.gfile.join(base, "nothing-here")) == []


def test_empty_experiment_dir_raises_value_error(base):
    tf.io.gfile.makedirs(base)
    with pytest.raises(ValueError, match="no complete runs"):
        runs.load_experiment(base, "0.7", progress=False)
    tf.io.gfile.makedirs(runs.run_dir(base, "0.7", 0))  # incomplete only
    with pytest.raises(ValueError, match="no complete runs"):
        runs.load_experiment(base, "0.7", progress=False)


def test_runs_of_different_sizes_raise_value_error(tmp_path):
    base = str(tmp_path)
    runs.save_run(runs.run_dir(base, "0.7", 0), _arrays(_truth(0)))
    runs.save_run(runs.run_dir(base, "0.7", 1), _arrays(_truth(1, num_train=NUM_TRAIN + 1)))
    with pytest.raises(ValueError, match=re.escape(runs.run_dir(base, "0.7", 1))):
        runs.load_experiment(base, "0.7", progress=False)


def test_experiment_dir_with_glob_characters(tmp_path):
    base = str(tmp_path / "exp[1]")
    truth = _truth(0)
    runs.save_run(runs.run_dir(base, "0.7", 0), _arrays(truth))
    assert runs.run_complete(runs.run_dir(base, "0.7", 0))
    assert runs.list_runs(base, "0.7") == ([0], [])
    experiment = runs.load_experiment(base, "0.7", progress=False)
    np.testing.assert_array_equal(experiment.membership,
                                  _expected_matrices([truth])["membership"])


# --- damaged files -------------------------------------------------------------------------

def _truncate(directory):
    path = tf.io.gfile.join(directory, "aux_arrays.npz")
    content = _read_bytes(path)
    _write_bytes(path, content[:len(content) // 2])


def _rewrite(directory, change):
    arrays = dict(runs.load_run(directory))
    change(arrays)
    _write_npz(directory, arrays)


def _drop(key):
    return lambda arrays: arrays.pop(key)


def _shorten(key):
    def change(arrays):
        arrays[key] = arrays[key][:-1]
    return change


def _duplicate_train_index(arrays):
    arrays["index_removed"] = arrays["index_removed"].copy()
    arrays["index_removed"][0] = arrays["index_train"][0]


def _duplicate_test_index(arrays):
    arrays["index_test"] = arrays["index_test"].copy()
    arrays["index_test"][1] = arrays["index_test"][0]


def _out_of_range_index(arrays):
    arrays["index_train"] = arrays["index_train"].copy()
    arrays["index_train"][0] = NUM_TRAIN


def _empty_file(directory):
    _write_bytes(tf.io.gfile.join(directory, "aux_arrays.npz"), b"")


DAMAGE_FOUND_BY_LOAD_RUN = {
    "truncated": _truncate,
    "empty_file": _empty_file,
    "missing_index_train": lambda d: _rewrite(d, _drop("index_train")),
    "missing_subsample_idx": lambda d: _rewrite(d, _drop("subsample_idx")),
    "missing_correctness_test": lambda d: _rewrite(d, _drop("correctness_test")),
    "short_correctness_train": lambda d: _rewrite(d, _shorten("correctness_train")),
    "short_index_train": lambda d: _rewrite(d, _shorten("index_train")),
    "short_margin_removed": lambda d: _rewrite(d, _shorten("margin_removed")),
}
DAMAGE_FOUND_BY_LOAD_EXPERIMENT = {
    "duplicate_train_index": lambda d: _rewrite(d, _duplicate_train_index),
    "duplicate_test_index": lambda d: _rewrite(d, _duplicate_test_index),
    "out_of_range_index": lambda d: _rewrite(d, _out_of_range_index),
}


def _experiment_with_damaged_run(base, damaged_run, damage):
    for r in range(3):
        runs.save_run(runs.run_dir(base, "0.7", r), _arrays(_truth(r)))
    directory = runs.run_dir(base, "0.7", damaged_run)
    damage(directory)
    return tf.io.gfile.join(directory, "aux_arrays.npz")


@pytest.mark.parametrize("damaged_run", [0, 2])
@pytest.mark.parametrize("damage", sorted(DAMAGE_FOUND_BY_LOAD_RUN))
def test_damaged_file_raises_run_file_error_naming_path(tmp_path, damage, damaged_run):
    base = str(tmp_path)
    path = _experiment_with_damaged_run(base, damaged_run, DAMAGE_FOUND_BY_LOAD_RUN[damage])
    with pytest.raises(runs.RunFileError, match=re.escape(path)):
        runs.load_run(runs.run_dir(base, "0.7", damaged_run))
    with pytest.raises(runs.RunFileError, match=re.escape(path)):
        runs.load_experiment(base, "0.7", num_threads=2, progress=False)
    # The other runs are still fine.
    for r in {0, 1, 2} - {damaged_run}:
        runs.load_run(runs.run_dir(base, "0.7", r))


@pytest.mark.parametrize("damaged_run", [0, 2])
@pytest.mark.parametrize("damage", sorted(DAMAGE_FOUND_BY_LOAD_EXPERIMENT))
def test_bad_indices_raise_run_file_error_naming_path(tmp_path, damage, damaged_run):
    base = str(tmp_path)
    path = _experiment_with_damaged_run(base, damaged_run,
                                        DAMAGE_FOUND_BY_LOAD_EXPERIMENT[damage])
    with pytest.raises(runs.RunFileError, match=re.escape(path)):
        runs.load_experiment(base, "0.7", num_threads=2, progress=False)


def test_truncated_file_on_each_file_system(base):
    path = _experiment_with_damaged_run(base, 1, _truncate)
    with pytest.raises(runs.RunFileError, match=re.escape(path)):
        runs.load_experiment(base, "0.7", progress=False)


def test_load_run_of_missing_file_raises_run_file_error(tmp_path):
    directory = str(tmp_path / "0.7" / "0")
    with pytest.raises(runs.RunFileError, match=re.escape(directory)):
        runs.load_run(directory)


# --- verify_runs: wrong but readable runs (issue 13, case 3) ----------------------------

def _as_float(key):
    def change(arrays):
        arrays[key] = arrays[key].astype(np.float32) * 0.5
    return change


def _other_subsample(arrays):
    arrays["subsample_idx"] = np.sort(arrays["index_removed"])[:len(arrays["subsample_idx"])]


def _fewer_test_examples(arrays):
    """A run of another data set: a consistent file with one test example fewer."""
    keep = arrays["index_test"] < NUM_TEST - 1
    for prefix in ("correctness_", "index_", "margin_"):
        arrays[prefix + "test"] = arrays[prefix + "test"][keep]


def _nan_margin(arrays):
    arrays["margin_test"] = arrays["margin_test"].copy()
    arrays["margin_test"][1] = np.nan


WRONG_BUT_READABLE = {
    "float_correctness": (_as_float("correctness_train"), "correctness_train has dtype"),
    "float_index": (_as_float("index_test"), "index_test has dtype"),
    "integer_margin": (lambda a: a.update(margin_train=a["margin_train"].astype(np.int64)),
                       "margin_train has dtype int64, expected floats"),
    "subsample_idx_differs": (_other_subsample, "subsample_idx differs from index_train"),
    "fewer_test_examples": (_fewer_test_examples,
                            f"{NUM_TRAIN} training and {NUM_TEST - 1} test examples, "
                            f"expected {NUM_TRAIN} and {NUM_TEST}"),
    "nan_margin": (_nan_margin, "margin_test has 1 non-finite values"),
}


@pytest.mark.parametrize("damage", sorted(WRONG_BUT_READABLE))
def test_verify_names_exactly_the_wrong_but_readable_run(tmp_path, damage):
    change, message = WRONG_BUT_READABLE[damage]
    base = str(tmp_path / "exp")
    path = _experiment_with_damaged_run(base, 1, lambda d: _rewrite(d, change))
    checked, problems = runs.verify_runs(base, num_threads=2)
    assert checked == 3
    assert [d for d, _ in problems] == [runs.run_dir(base, "0.7", 1)]
    assert problems[0][1].startswith(path) and message in problems[0][1], problems
    if damage != "fewer_test_examples":  # a consistent smaller run is a size mismatch
        with pytest.raises(runs.RunFileError, match=re.escape(path)):
            runs.load_experiment(base, "0.7", num_threads=2, progress=False)


def test_verify_checks_sizes_against_experiment_json(tmp_path):
    from heldout.store import files, layout

    base = str(tmp_path / "exp")
    for r in range(2):
        runs.save_run(runs.run_dir(base, "0.7", r), _arrays(_truth(r)))
    assert runs.verify_runs(base) == (2, [])
    files.write_json(layout.ExperimentDir(base).experiment_info,
                     {"data": {"num_train": NUM_TRAIN, "num_test": NUM_TEST + 1}})
    checked, problems = runs.verify_runs(base)
    assert checked == 2 and len(problems) == 2
    assert all(f"expected {NUM_TRAIN} and {NUM_TEST + 1}" in p for _, p in problems)


def test_verify_of_missing_or_empty_directory_raises(tmp_path):
    with pytest.raises(ValueError, match="experiment_dir=.*nowhere: no such directory"):
        runs.verify_runs(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty: no complete runs to verify"):
        runs.verify_runs(str(tmp_path / "empty"))



# What TensorFlow's GCS file system raised for a bucket it could not reach (no network):
# `isdir` answered False, `stat` and `listdir` raised this.
_UNREACHABLE = ("Error executing an HTTP request: libcurl code 6 meaning 'Could not "
                "resolve hostname', error details: Could not resolve host: www.googleapis.com"
                "\n\t when reading metadata of gs://bucket/exp")


def test_list_subsets_reports_an_unreadable_directory_not_no_runs(monkeypatch, tmp_path):
    from heldout.errors import ParameterError

    def unreachable(path):
        raise tf.errors.FailedPreconditionError(None, None, _UNREACHABLE)

    monkeypatch.setattr(tf.io.gfile, "stat", unreachable)
    with pytest.raises(ParameterError) as raised:
        runs.list_subsets("gs://bucket/exp")
    assert raised.value.parameter == "experiment_dir"
    assert str(raised.value) == ("experiment_dir=gs://bucket/exp: cannot be read (Error "
                                 "executing an HTTP request: libcurl code 6 meaning 'Could "
                                 "not resolve hostname', error details: Could not resolve "
                                 "host: www.googleapis.com)")
    monkeypatch.undo()
    runs.save_run(runs.run_dir(str(tmp_path), "0.7", 0), _arrays(_truth(0)))
    assert runs.list_subsets(str(tmp_path)) == ["0.7"]
    monkeypatch.setattr(tf.io.gfile, "listdir", lambda path: (_ for _ in ()).throw(
        tf.errors.PermissionDeniedError(None, None, f"{path}; Permission denied")))
    with pytest.raises(ValueError, match=r"cannot be read \(.*Permission denied\)"):
        runs.list_subsets(str(tmp_path))
    monkeypatch.undo()
    a_file = tmp_path / "0.7" / "0" / "run.json"
    assert runs.list_subsets(str(a_file)) == [] and runs.list_subsets(str(tmp_path / "no")) == []
