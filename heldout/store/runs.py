"""The experiment directory on disk (SPEC §3): saving, finding and loading runs.

Layout: ``<experiment_dir>/<subset>/<run_id>/aux_arrays.npz`` (+ ``run.json`` and
optional ``checkpoints/ckpt-<epoch>``), the layout of the released Feldman-Zhang runs.
All I/O goes through ``tf.io.gfile``, so ``gs://`` and other TensorFlow file systems
work like local paths.

Completeness: a run is complete exactly when its ``aux_arrays.npz`` exists. Every file
is written under a temporary name and renamed into place, and ``aux_arrays.npz`` is
written last; a single-object rename is atomic on local disks and on GCS (the object
appears whole or not at all), so an interrupted writer never leaves a run that a
reader would take as complete. A directory without ``aux_arrays.npz`` is a leftover
and is cleared before the run is trained again.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import io
import json
import time
import uuid
from collections.abc import Iterable, Sequence

import numpy as np
import tensorflow as tf

AUX_FILENAME = "aux_arrays.npz"
RUN_INFO_FILENAME = "run.json"
CHECKPOINT_DIRNAME = "checkpoints"
CORRUPT_DIRNAME = ".corrupt"  # damaged aux arrays moved aside by `quarantine_run`
SPLITS = ("train", "removed", "test")
SUBSET_INDICES = "subsample_idx"
# Keys of the released files; every reader needs these and only these.
RELEASED_KEYS = (SUBSET_INDICES,) + tuple(
    f"{kind}_{split}" for split in SPLITS for kind in ("correctness", "index"))
# Our optional per-split keys: float32 max-margins and log-odds margins, float16 logits.
MARGIN_PREFIX = "margin_"
LOGODDS_PREFIX = "logodds_"
METRICS = ("correctness", "margin", "logodds")
# Float metrics an experiment may hold, by the prefix of their aux keys.
_FLOAT_METRICS = {"margin": MARGIN_PREFIX, "logodds": LOGODDS_PREFIX}
LOGITS_PREFIX = "logits_"


class RunFileError(ValueError):
    """A run's files exist but are not a valid run (truncated, wrong keys or lengths)."""


class RunMissingError(RunFileError):
    """A run's aux arrays do not exist (not written yet, or removed to be redone)."""


def run_dir(experiment_dir: str, subset: str, run_id: int) -> str:
    """Directory of run `run_id` of design `subset`."""
    return tf.io.gfile.join(experiment_dir, subset, str(run_id))


def run_complete(directory: str) -> bool:
    """Whether the run in `directory` finished writing (its aux arrays exist).

    Looks the name up in a listing rather than asking `exists`, which some TensorFlow
    file systems (``ram://``) answer by prefix, taking a leftover temporary file for it.
    """
    return (tf.io.gfile.isdir(directory)
            and AUX_FILENAME in (e.rstrip("/") for e in tf.io.gfile.listdir(directory)))


def aux_arrays(subset_indices: np.ndarray, correctness_train: np.ndarray,
               correctness_test: np.ndarray, margin_train: np.ndarray | None = None,
               margin_test: np.ndarray | None = None, logits_train: np.ndarray | None = None,
               logits_test: np.ndarray | None = None, logodds_train: np.ndarray | None = None,
               logodds_test: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The aux arrays of one run from its predictions on the *whole* train and test splits.

    Args:
        subset_indices: sorted indices of the training examples the run trained on.
        correctness_train, margin_train, logodds_train, logits_train: predictions on
            every training example, ``[num_train(, num_classes)]``, in index order.
        correctness_test, margin_test, logodds_test, logits_test: the same on the test
            split.

    Returns:
        Arrays under the released keys (training examples split into the ones the run
        saw, ``*_train``, and the held-out ones, ``*_removed``), plus ``margin_*``,
        ``logodds_*`` and ``logits_*`` where given.
    """
    num_train = len(correctness_train)
    in_subset = np.zeros(num_train, dtype=bool)
    in_subset[subset_indices] = True
    rows = {"train": np.flatnonzero(in_subset), "removed": np.flatnonzero(~in_subset),
            "test": np.arange(len(correctness_test))}
    per_split = {  # prefix -> (dtype, array over the training split, over the test split)
        "correctness_": (bool, correctness_train, correctness_test),
        MARGIN_PREFIX: (np.float32, margin_train, margin_test),
        LOGODDS_PREFIX: (np.float32, logodds_train, logodds_test),
        LOGITS_PREFIX: (np.float16, logits_train, logits_test),
    }
    arrays = {SUBSET_INDICES: np.asarray(subset_indices, dtype=np.int64)}
    for split in SPLITS:
        arrays[f"index_{split}"] = rows[split].astype(np.int64)
        for prefix, (dtype, train, test) in per_split.items():
            source = test if split == "test" else train
            if source is not None:
                arrays[prefix + split] = np.asarray(source[rows[split]], dtype=dtype)
    return arrays


def save_run(directory: str, arrays: dict[str, np.ndarray], info: dict,
             checkpoint: tf.train.Checkpoint | None = None, epoch: int = 0,
             checkpoints: Sequence[tuple[int, tf.train.Checkpoint]] = ()) -> None:
    """Writes one run: checkpoints and ``run.json`` first, ``aux_arrays.npz`` last.

    Checkpoints go to ``checkpoints/ckpt-<epoch>``: `checkpoint` at `epoch`, and every
    ``(epoch, checkpoint)`` of `checkpoints` (models saved during training).
    Whatever an earlier, interrupted attempt left in `directory` is removed first.
    """
    if tf.io.gfile.exists(directory):
        tf.io.gfile.rmtree(directory)
    tf.io.gfile.makedirs(directory)
    all_checkpoints = list(checkpoints) + ([(epoch, checkpoint)] if checkpoint else [])
    for number, saved in all_checkpoints:
        manager = tf.train.CheckpointManager(
            saved, tf.io.gfile.join(directory, CHECKPOINT_DIRNAME), max_to_keep=None,
            checkpoint_name="ckpt")
        manager.save(checkpoint_number=number)
    write_atomically(tf.io.gfile.join(directory, RUN_INFO_FILENAME),
                     json.dumps(info, indent=2, sort_keys=True).encode())
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    write_atomically(tf.io.gfile.join(directory, AUX_FILENAME), buffer.getvalue())


def load_run(directory: str) -> dict[str, np.ndarray]:
    """The aux arrays of a complete run, checked for the released keys and consistent lengths.

    Raises:
        RunFileError: the file is unreadable, lacks a released key, or its arrays
            disagree in length.
    """
    path = tf.io.gfile.join(directory, AUX_FILENAME)
    try:
        with tf.io.gfile.GFile(path, "rb") as f:
            with np.load(io.BytesIO(f.read()), allow_pickle=False) as npz:
                arrays = {key: npz[key] for key in npz.files}
    except tf.errors.NotFoundError:
        raise RunMissingError(f"{path}: file not found") from None
    except Exception as e:  # zipfile/np.load raise many types for a damaged file.
        raise RunFileError(f"{path}: not a readable .npz file ({type(e).__name__}: {e})") from e
    missing = [key for key in RELEASED_KEYS if key not in arrays]
    if missing:
        raise RunFileError(f"{path}: missing key(s) {', '.join(missing)}")
    for split in SPLITS:
        expected = len(arrays[f"index_{split}"])
        for prefix in ("correctness_", MARGIN_PREFIX, LOGODDS_PREFIX, LOGITS_PREFIX):
            key = prefix + split
            if key in arrays and len(arrays[key]) != expected:
                raise RunFileError(f"{path}: {key} has {len(arrays[key])} entries but "
                                   f"index_{split} has {expected}")
    return arrays


def read_run_info(directory: str) -> dict:
    """The ``run.json`` of a run, or an empty dict for released runs that have none."""
    path = tf.io.gfile.join(directory, RUN_INFO_FILENAME)
    if not tf.io.gfile.exists(path):
        return {}
    with tf.io.gfile.GFile(path, "r") as f:
        return json.load(f)


def list_subsets(experiment_dir: str) -> list[str]:
    """Names of the subset folders of an experiment that hold at least one run folder."""
    if not tf.io.gfile.isdir(experiment_dir):
        return []
    names = []
    for entry in sorted(tf.io.gfile.listdir(experiment_dir)):
        entry = entry.rstrip("/")
        folder = tf.io.gfile.join(experiment_dir, entry)
        if tf.io.gfile.isdir(folder) and any(
                e.rstrip("/").isdigit() for e in tf.io.gfile.listdir(folder)):
            names.append(entry)
    return names


def list_runs(experiment_dir: str, subset: str) -> tuple[list[int], list[int]]:
    """Run ids of a subset folder: (complete, incomplete), each sorted."""
    folder = tf.io.gfile.join(experiment_dir, subset)
    if not tf.io.gfile.isdir(folder):
        return [], []
    ids = sorted(int(e.rstrip("/")) for e in tf.io.gfile.listdir(folder)
                 if e.rstrip("/").isdigit())
    complete = set(_complete_run_ids(folder, ids))
    return [i for i in ids if i in complete], [i for i in ids if i not in complete]


def _complete_run_ids(folder: str, ids: Sequence[int], num_threads: int = 16) -> list[int]:
    """Ids among `ids` whose aux arrays exist.

    One glob answers for all runs (thousands of runs on gs:// would otherwise cost a
    request each); a folder whose path has glob characters is checked run by run.
    """
    if any(c in folder for c in "*?[]"):
        with concurrent.futures.ThreadPoolExecutor(num_threads) as pool:
            complete = pool.map(lambda i: run_complete(tf.io.gfile.join(folder, str(i))), ids)
            return [i for i, done in zip(ids, complete, strict=True) if done]
    found = tf.io.gfile.glob(tf.io.gfile.join(folder, "*", AUX_FILENAME))
    present = {path.rstrip("/").split("/")[-2] for path in found}
    return [i for i in ids if str(i) in present]


@dataclasses.dataclass(frozen=True)
class Experiment:
    """All complete runs of one subset design, as matrices over examples in index order.

    Attributes:
        run_ids: ``[num_runs]`` ids of the runs, in the order of the matrix rows.
        membership: bool ``[num_runs, num_train]``: run r trained on example i.
        correctness_train: bool ``[num_runs, num_train]``, train and removed merged.
        correctness_test: bool ``[num_runs, num_test]``.
        margin_train, margin_test: float32 like the above, or None when the runs lack
            margins (released files).
        logodds_train, logodds_test: float32 log-odds margins, or None likewise.
        skipped: ids of run folders that were not complete and were not used.
    """

    run_ids: np.ndarray
    membership: np.ndarray
    correctness_train: np.ndarray
    correctness_test: np.ndarray
    margin_train: np.ndarray | None
    margin_test: np.ndarray | None
    logodds_train: np.ndarray | None = None
    logodds_test: np.ndarray | None = None
    skipped: tuple[int, ...] = ()

    @property
    def num_runs(self) -> int:
        return len(self.run_ids)

    def metric(self, name: str, split: str) -> np.ndarray:
        """Per-run metric ``[num_runs, num_examples]`` of a split (``train`` or ``test``).

        Raises:
            ValueError: `name` is not a metric, or the runs did not record it.
        """
        if name not in METRICS:
            raise ValueError(f"--metric={name!r}: expected one of {', '.join(METRICS)}")
        values = getattr(self, f"{name}_{split}")
        if values is None:
            raise ValueError(
                f"--metric={name}: these runs have no {name}_* arrays (released runs "
                "record only correctness); use --metric=correctness")
        return values if name != "correctness" else values.astype(np.float32)


def load_experiment(experiment_dir: str, subset: str, num_threads: int = 16,
                    progress: bool = True) -> Experiment:
    """Reads every complete run of `subset` into an `Experiment`.

    Runs are read by parallel threads (through tf.io.gfile, so gs:// too) and folded
    into the matrices as they arrive, so memory holds the matrices plus a few runs.

    Raises:
        ValueError: there are no complete runs, or the runs disagree about the
            number of examples.
        RunFileError: a run's aux arrays are damaged (named by path).
    """
    complete, incomplete = list_runs(experiment_dir, subset)
    if not complete:
        where = tf.io.gfile.join(experiment_dir, subset)
        raise ValueError(f"--experiment_dir={experiment_dir}: no complete runs in {where} "
                         f"(expected <run_id>/{AUX_FILENAME} folders)")
    directories = [run_dir(experiment_dir, subset, i) for i in complete]
    matrices: dict[str, np.ndarray] = {}
    present = dict.fromkeys(_FLOAT_METRICS, True)  # metric -> recorded by every run so far
    vanished = []  # complete when listed, gone when read: being redone by a writer
    used = np.zeros(len(directories), dtype=bool)
    with concurrent.futures.ThreadPoolExecutor(num_threads) as pool:
        loaded = pool.map(_load_run_unless_vanished, directories)
        for r, run in enumerate(_progress(loaded, len(directories), f"reading {subset}",
                                          progress)):
            if run is None:
                vanished.append(complete[r])
                continue
            used[r] = True
            sizes = (len(run["index_train"]) + len(run["index_removed"]),
                     len(run["index_test"]))
            if not matrices:
                matrices = _empty_matrices(len(directories), *sizes)
            num_train = matrices["membership"].shape[1]
            num_test = matrices["correctness_test"].shape[1]
            if sizes != (num_train, num_test):
                raise ValueError(f"{directories[r]}: {sizes[0]} training and {sizes[1]} test "
                                 f"examples, but {directories[0]} has {num_train} and "
                                 f"{num_test}")
            _check_indices(directories[r], run, num_train, num_test)
            matrices["membership"][r, run["index_train"]] = True
            for metric, prefix in _FLOAT_METRICS.items():
                present[metric] &= all(prefix + split in run for split in SPLITS)
            for split in SPLITS:
                kind = "test" if split == "test" else "train"
                rows = run[f"index_{split}"]
                matrices[f"correctness_{kind}"][r, rows] = run[f"correctness_{split}"]
                for metric, prefix in _FLOAT_METRICS.items():
                    if present[metric]:
                        matrices[f"{metric}_{kind}"][r, rows] = run[prefix + split]
    if not used.any():
        raise ValueError(f"--experiment_dir={experiment_dir}: the runs of {subset} vanished "
                         "while being read")
    if not used.all():
        matrices = {key: value[used] for key, value in matrices.items()}
    floats = {f"{metric}_{kind}": matrices[f"{metric}_{kind}"] if present[metric] else None
              for metric in _FLOAT_METRICS for kind in ("train", "test")}
    return Experiment(run_ids=np.asarray(complete)[used], membership=matrices["membership"],
                      correctness_train=matrices["correctness_train"],
                      correctness_test=matrices["correctness_test"], **floats,
                      skipped=tuple(sorted(incomplete + vanished)))


def _load_run_unless_vanished(directory: str) -> dict[str, np.ndarray] | None:
    """`load_run`, or None when the aux arrays disappeared since the listing."""
    try:
        return load_run(directory)
    except RunMissingError:
        return None


def verify_runs(experiment_dir: str, subsets: Sequence[str] | None = None,
                num_threads: int = 16) -> tuple[int, list[tuple[str, str]]]:
    """Reads every complete run and checks its aux arrays.

    Returns:
        (number of complete runs checked, [(run directory, problem)] for the damaged ones).
    """
    subsets = list(subsets) if subsets is not None else list_subsets(experiment_dir)
    directories = [run_dir(experiment_dir, subset, i) for subset in subsets
                   for i in list_runs(experiment_dir, subset)[0]]

    def check(directory: str) -> str | None:
        try:
            run = load_run(directory)
            num_train = len(run["index_train"]) + len(run["index_removed"])
            _check_indices(directory, run, num_train, len(run["index_test"]))
        except RunFileError as e:
            return str(e)
        return None

    with concurrent.futures.ThreadPoolExecutor(num_threads) as pool:
        problems = list(pool.map(check, directories))
    return len(directories), [(d, p) for d, p in zip(directories, problems, strict=True) if p]


def quarantine_run(directory: str) -> str:
    """Moves a damaged ``aux_arrays.npz`` out of its run, so the run is redone.

    It goes to ``<subset>/.corrupt/<run_id>-<time>.npz`` (beside the run folders, where
    readers do not look and redoing the run does not delete it), for inspection.
    """
    parent, run_id = directory.rstrip("/").rsplit("/", 1)
    quarantine = tf.io.gfile.join(parent, CORRUPT_DIRNAME)
    tf.io.gfile.makedirs(quarantine)
    target = tf.io.gfile.join(quarantine, f"{run_id}-{int(time.time())}.npz")
    tf.io.gfile.rename(tf.io.gfile.join(directory, AUX_FILENAME), target, overwrite=True)
    return target


def _empty_matrices(num_runs: int, num_train: int, num_test: int) -> dict[str, np.ndarray]:
    return {"membership": np.zeros((num_runs, num_train), dtype=bool),
            "correctness_train": np.zeros((num_runs, num_train), dtype=bool),
            "correctness_test": np.zeros((num_runs, num_test), dtype=bool),
            **{f"{metric}_train": np.zeros((num_runs, num_train), np.float32)
               for metric in _FLOAT_METRICS},
            **{f"{metric}_test": np.zeros((num_runs, num_test), np.float32)
               for metric in _FLOAT_METRICS}}


def _check_indices(directory: str, run: dict[str, np.ndarray], num_train: int,
                   num_test: int) -> None:
    """Raises RunFileError unless train+removed cover 0..num_train-1 and test 0..num_test-1."""
    train = np.concatenate([run["index_train"], run["index_removed"]])
    if not (np.array_equal(np.sort(train), np.arange(num_train))
            and np.array_equal(np.sort(run["index_test"]), np.arange(num_test))):
        path = tf.io.gfile.join(directory, AUX_FILENAME)
        raise RunFileError(f"{path}: indices do not cover each example exactly once")


def _progress(items: Iterable, total: int, description: str, enabled: bool) -> Iterable:
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, total=total, desc=description, unit="run", mininterval=1.0)


def write_atomically(path: str, content: bytes) -> None:
    """Writes `content` to a temporary name beside `path`, then renames it to `path`."""
    temporary = f"{path}.tmp-{uuid.uuid4().hex}"
    with tf.io.gfile.GFile(temporary, "wb") as f:
        f.write(content)
    tf.io.gfile.rename(temporary, path, overwrite=True)
