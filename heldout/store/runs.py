"""The experiment directory on disk: saving, finding and loading runs.

Layout: ``<experiment_dir>/<subset>/<run_id>/aux_arrays.npz`` (+ ``run.json`` and
optional ``checkpoints/ckpt-<epoch>``), the layout of the released Feldman-Zhang runs.
All I/O goes through ``tf.io.gfile``, so ``gs://`` and other TensorFlow file systems
work like local paths.

Completeness: a run is complete exactly when its ``aux_arrays.npz`` exists. Every file
is written under a temporary name and renamed into place, and ``aux_arrays.npz`` is
written last; a single-object rename is atomic on local disks and on GCS (the object
appears whole or not at all), so an interrupted writer never leaves a run that a
reader would take as complete. A directory without ``aux_arrays.npz`` is a leftover;
training the run again overwrites its files, and a worker that claims the run first
deletes the temporaries a killed writer left (`remove_leftovers`). Nothing here deletes
a complete run: ``aux_arrays.npz`` is created only if absent, so concurrent writers of
one run leave exactly one complete run. Paths come from `layout`, files from `files`.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import errno
import hashlib
import os
import shutil
import uuid
from collections import Counter
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from heldout.errors import ParameterError
from heldout.progress import track
from heldout.store import designs as designs_lib
from heldout.store import experiment_info as info_lib
from heldout.store import files, records
from heldout.store import layout as layout_lib
from heldout.store import targets as targets_lib
from heldout.store.layout import AUX_FILENAME
from heldout.store.metrics import METRICS

SPLITS = ("train", "removed", "test")
SUBSET_INDICES = "subsample_idx"
# Keys of the released files; every reader needs these and only these.
RELEASED_KEYS = (SUBSET_INDICES,) + tuple(
    f"{kind}_{split}" for split in SPLITS for kind in ("correctness", "index"))
# Our optional per-split keys: float32 max-margins and log-odds margins, float16 logits.
MARGIN_PREFIX = "margin_"
LOGODDS_PREFIX = "logodds_"
# Float metrics an experiment may hold, by the prefix of their aux keys.
_FLOAT_METRICS = {"margin": MARGIN_PREFIX, "logodds": LOGODDS_PREFIX}
LOGITS_PREFIX = "logits_"
# Loss weights float32 [num_train] a run trained with (bank designs).
EXAMPLE_WEIGHTS = "example_weights"


class RunFileError(files.StoredFileError):
    """A run's files exist but are not a valid run (truncated, wrong keys or lengths)."""


class RunMissingError(RunFileError, files.StoredFileMissing):
    """A run's aux arrays do not exist (not written yet, or removed to be redone)."""


def run_dir(experiment_dir: str, subset: str, run_id: int) -> str:
    """Directory of run `run_id` of design `subset`."""
    return layout_lib.ExperimentDir(experiment_dir).run(subset, run_id).path


def run_complete(directory: str) -> bool:
    """Whether the run in `directory` finished writing (its aux arrays exist).

    Looks the name up in a listing rather than asking `exists`, which some TensorFlow
    file systems (``ram://``) answer by prefix, taking a leftover temporary file for it.
    """
    return (tf.io.gfile.isdir(directory)
            and AUX_FILENAME in (e.rstrip("/") for e in tf.io.gfile.listdir(directory)))


def remove_leftovers(directory: str) -> int:
    """Deletes the temporary files and folders (``*.tmp-*``) an interrupted writer left in
    a run's directory; returns how many.

    Only for a writer that holds the run's claim (`heldout.store.coordination`): no other
    live writer can be writing the run then, so every temporary there is a dead one's.
    """
    if not tf.io.gfile.isdir(directory):
        return 0
    removed = 0
    for entry in tf.io.gfile.listdir(directory):
        name = entry.rstrip("/")
        if files.TEMPORARY_INFIX not in name:
            continue
        path = tf.io.gfile.join(directory, name)
        try:
            if tf.io.gfile.isdir(path):
                tf.io.gfile.rmtree(path)
            else:
                tf.io.gfile.remove(path)
            removed += 1
        except tf.errors.NotFoundError:
            continue
    return removed


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


def save_run(directory: str, arrays: dict[str, np.ndarray],
             record: records.RunRecord | None = None,
             checkpoint: tf.train.Checkpoint | None = None, epoch: int = 0,
             checkpoints: Sequence[tuple[int, tf.train.Checkpoint]] = ()) -> bool:
    """Writes one run unless it is complete: checkpoints, ``run.json``, then the aux arrays.

    The ``run.json`` is `record` (`records.write_run_record`); without one the run has
    none, like the released runs.

    Checkpoints go to ``checkpoints/ckpt-<epoch>``: `checkpoint` at `epoch`, and every
    ``(epoch, checkpoint)`` of `checkpoints` (models saved during training). They are
    written into a folder of this writer's own and moved into place file by file, so
    writers of one run never share a temporary file. Nothing is ever deleted: files an
    interrupted attempt left are overwritten, and a complete run is left as it is.
    The aux arrays are created only if absent, so of concurrent writers of one run
    exactly one completes it and the others return False without error.

    Returns:
        True when this call completed the run; False when it was complete already.
    """
    run = layout_lib.RunDir(directory)
    if run_complete(directory):
        return False
    tf.io.gfile.makedirs(directory)
    all_checkpoints = list(checkpoints) + ([(epoch, checkpoint)] if checkpoint else [])
    if all_checkpoints:
        _save_checkpoints(run, all_checkpoints)
    if run_complete(directory):
        return False
    if record is not None:
        records.write_run_record(directory, record)
    return files.write_npz(run.aux_arrays, arrays, exclusive=True)


def _save_checkpoints(run: layout_lib.RunDir,
                      checkpoints: Sequence[tuple[int, tf.train.Checkpoint]]) -> None:
    """Saves checkpoints in a folder of this writer's own, then puts the folder in place.

    Locally the folder is renamed as a whole (atomic), replacing what an interrupted or
    concurrent writer of this incomplete run left, so ``checkpoints/`` always holds one
    writer's whole set. Elsewhere (``gs://``, no folder rename) the files are renamed one
    by one, data files first, then indexes, then the ``checkpoint`` state file.
    """
    staging = f"{run.checkpoints}{files.TEMPORARY_INFIX}{uuid.uuid4().hex}"
    try:
        for number, saved in checkpoints:
            manager = tf.train.CheckpointManager(saved, staging, max_to_keep=None,
                                                 checkpoint_name=layout_lib.CHECKPOINT_NAME)
            manager.save(checkpoint_number=number)
        if files.is_local(staging):
            _replace_folder(staging.removeprefix("file://"),
                            run.checkpoints.removeprefix("file://"))
            return
        tf.io.gfile.makedirs(run.checkpoints)
        names = sorted((e.rstrip("/") for e in tf.io.gfile.listdir(staging)),
                       key=lambda n: (n == "checkpoint", n.endswith(".index"), n))
        for name in names:
            tf.io.gfile.rename(tf.io.gfile.join(staging, name),
                               tf.io.gfile.join(run.checkpoints, name), overwrite=True)
    finally:
        try:
            tf.io.gfile.rmtree(staging)
        except tf.errors.OpError:
            pass


def _replace_folder(source: str, target: str, attempts: int = 8) -> None:
    """Renames local folder `source` to `target`, moving aside and deleting a `target`
    that exists (what another writer of the same incomplete run put there)."""
    for _ in range(attempts):
        try:
            os.rename(source, target)
            return
        except OSError as e:
            if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
        aside = f"{target}{files.TEMPORARY_INFIX}{uuid.uuid4().hex}"
        try:
            os.rename(target, aside)
        except FileNotFoundError:
            continue  # another writer moved it aside first
        shutil.rmtree(aside, ignore_errors=True)
    raise OSError(f"{target}: could not put checkpoints in place ({attempts} writers "
                  "replaced each other's); train the run again")


def load_run(directory: str) -> dict[str, np.ndarray]:
    """The aux arrays of a complete run, checked for the released keys and consistent lengths.

    Raises:
        RunFileError: the file is unreadable, lacks a released key, or its arrays
            disagree in length.
    """
    path = layout_lib.RunDir(directory).aux_arrays
    try:
        arrays = files.read_npz(path)
    except files.StoredFileMissing:
        raise RunMissingError(f"{path}: file not found") from None
    except files.StoredFileError as e:
        raise RunFileError(str(e)) from None
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


def list_subsets(experiment_dir: str) -> list[str]:
    """Names of the subset folders of an experiment that hold at least one run folder.

    A directory that does not exist (or a file) holds none.

    Raises:
        ParameterError: (``experiment_dir``) the directory cannot be read: an unreachable
            or forbidden ``gs://`` bucket, a folder without read permission. TensorFlow's
            ``isdir`` answers False for those, which read as "no runs".
    """
    try:
        if not tf.io.gfile.isdir(experiment_dir):
            tf.io.gfile.stat(experiment_dir)  # NotFoundError if missing, else why not
            return []
        names = []
        for entry in sorted(tf.io.gfile.listdir(experiment_dir)):
            entry = entry.rstrip("/")
            try:
                folder = layout_lib.ExperimentDir(experiment_dir).subset(entry)
            except ValueError:
                continue  # a name no subset can have (surrounding spaces, say): not a subset
            if tf.io.gfile.isdir(folder) and any(
                    e.rstrip("/").isdigit() for e in tf.io.gfile.listdir(folder)):
                names.append(entry)
        return names
    except tf.errors.NotFoundError:
        return []
    except tf.errors.OpError as e:
        reason = (e.message or type(e).__name__).strip().splitlines()[0]
        raise ParameterError("experiment_dir", f"cannot be read ({reason})",
                             experiment_dir) from None


def list_runs(experiment_dir: str, subset: str) -> tuple[list[int], list[int]]:
    """Run ids of a subset folder: (complete, incomplete), each sorted."""
    folder = layout_lib.ExperimentDir(experiment_dir).subset(subset)
    if not tf.io.gfile.isdir(folder):
        return [], []
    ids = sorted(int(e.rstrip("/")) for e in tf.io.gfile.listdir(folder)
                 if e.rstrip("/").isdigit())
    complete = set(_complete_run_ids(folder, ids))
    return [i for i in ids if i in complete], [i for i in ids if i not in complete]


def experiment_sizes(experiment_dir: str, subset: str | None = None) -> tuple[int, int]:
    """(num_train, num_test) of an experiment's data, without loading its runs: from
    ``experiment.json`` when it records them, else from one complete run (of `subset`,
    or of the first subset holding one). For checks made before any work, such as
    whether a published file fits (`heldout.estimate.compare.check_comparable`).

    Raises:
        ValueError: no record and no complete run.
    """
    try:
        info = info_lib.read_experiment_info(experiment_dir)
    except files.StoredFileError:
        info = None
    recorded = dict(info.data) if info is not None and info.data else {}
    if all(
            isinstance(recorded.get(k), int) for k in ("num_train", "num_test")):
        return recorded["num_train"], recorded["num_test"]
    for name in [subset] if subset else list_subsets(experiment_dir):
        complete = list_runs(experiment_dir, name)[0]
        if complete:
            run = load_run(run_dir(experiment_dir, name, complete[0]))
            return (len(run["index_train"]) + len(run["index_removed"]),
                    len(run["index_test"]))
    raise ValueError(f"experiment_dir={experiment_dir}: no complete runs to take the data "
                     "sizes from")


def load_membership(experiment_dir: str, subset: str, run_ids: Sequence[int],
                    num_train: int, num_threads: int = 16) -> np.ndarray:
    """bool ``[len(run_ids), num_train]``: which examples each run trained on (its
    ``subsample_idx``), without building the prediction matrices; e.g. the fit runs of
    an attribution, to judge LDS evaluation runs by membership
    (`heldout.estimate.lds.check_disjoint_membership`).

    Raises:
        RunFileError: a run is missing or damaged, or its indices are outside
            ``[0, num_train)`` (named by path).
    """
    directories = [run_dir(experiment_dir, subset, r) for r in run_ids]
    masks = np.zeros((len(directories), num_train), dtype=bool)
    with concurrent.futures.ThreadPoolExecutor(num_threads) as pool:
        for r, run in enumerate(pool.map(load_run, directories)):
            chosen = run[SUBSET_INDICES]
            if len(chosen) and (chosen.min() < 0 or chosen.max() >= num_train):
                _raise_on_problem(directories[r], f"{SUBSET_INDICES} holds indices outside "
                                                  f"[0, {num_train})")
            masks[r, chosen] = True
    return masks


def _complete_run_ids(folder: str, ids: Sequence[int], num_threads: int = 16) -> list[int]:
    """Ids among `ids` whose aux arrays exist.

    One glob answers for all runs (thousands of runs on gs:// would otherwise cost a
    request each); a folder whose path has glob characters is checked run by run.
    """
    if any(c in folder for c in "*?[]"):
        with concurrent.futures.ThreadPoolExecutor(num_threads) as pool:
            complete = pool.map(lambda i: run_complete(run_dir(*folder.rsplit("/", 1), i)), ids)
            return [i for i, done in zip(ids, complete, strict=True) if done]
    experiment_dir, _, subset = folder.rstrip("/").rpartition("/")
    found = tf.io.gfile.glob(layout_lib.ExperimentDir(experiment_dir).aux_arrays_glob(subset))
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
            raise ParameterError("metric", f"expected one of {', '.join(METRICS)}", name)
        values = getattr(self, f"{name}_{split}")
        if values is None:
            raise ParameterError("metric", f"these runs have no {name}_* arrays (released "
                                 "runs record only correctness); use correctness", name)
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
        where = layout_lib.ExperimentDir(experiment_dir).subset(subset)
        raise ParameterError("experiment_dir", f"no complete runs in {where} (expected "
                             f"<run_id>/{AUX_FILENAME} folders)", experiment_dir)
    directories = [run_dir(experiment_dir, subset, i) for i in complete]
    seed = _recorded_seed(experiment_dir)
    dropped = _dropped(experiment_dir, subset)
    matrices: dict[str, np.ndarray] = {}
    present = dict.fromkeys(_FLOAT_METRICS, True)  # metric -> recorded by every run so far
    vanished = []  # complete when listed, gone when read: being redone by a writer
    used = np.zeros(len(directories), dtype=bool)
    with concurrent.futures.ThreadPoolExecutor(num_threads) as pool:
        loaded = pool.map(_load_run_unless_vanished, directories)
        for r, run in enumerate(track(loaded, len(directories),
                                                   f"reading {subset}", enabled=progress)):
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
            _raise_on_problem(directories[r], check_run_arrays(run, num_train, num_test))
            _raise_on_problem(directories[r], design_problem(
                subset, complete[r], run[SUBSET_INDICES], num_train, seed, dropped,
                derive=False))
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
        raise ParameterError("experiment_dir", f"the runs of {subset} vanished while being "
                             "read", experiment_dir)
    if not used.all():
        matrices = {key: value[used] for key, value in matrices.items()}
    floats = {f"{metric}_{kind}": matrices[f"{metric}_{kind}"] if present[metric] else None
              for metric in _FLOAT_METRICS for kind in ("train", "test")}
    # Bits hashed per run; the float metrics confirm a candidate copy.
    rows = [matrices["membership"], matrices["correctness_train"], matrices["correctness_test"]]
    kept = [d for d, u in zip(directories, used, strict=True) if u]
    # Runs of full/drop designs all train on the same examples: without float metrics,
    # equal 0/1 predictions alone do not show a copy.
    comparable = not designs_lib.is_targeted_design(subset) or any(
        v is not None for v in floats.values())
    for copy, original in (duplicate_runs(rows) if comparable else {}).items():
        if any(not np.array_equal(v[copy], v[original]) for v in floats.values()
               if v is not None):
            continue
        raise RunFileError(f"{layout_lib.RunDir(kept[copy]).aux_arrays}: the same training "
                           f"subset and predictions as {kept[original]} (a run copied under "
                           "another id); remove the copy")
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
    """Reads every complete run and checks its aux arrays (`check_run_arrays`), its
    subset against its folder's design (`design_problem`, with the experiment seed of
    ``experiment.json`` when recorded) and finds runs copied under another id (the same
    training subset and the same arrays as a run of a lower id, in any subset folder).

    Sizes are checked against ``num_train``/``num_test`` of ``experiment.json``; for
    released runs, which have none, against the sizes most runs agree on.

    Returns:
        (number of complete runs checked, [(run directory, problem)] for the damaged ones).

    Raises:
        ValueError: `experiment_dir` is missing, unreachable or holds no complete runs.
    """
    try:
        reachable = tf.io.gfile.isdir(experiment_dir)
    except tf.errors.OpError as e:
        raise ValueError(f"experiment_dir={experiment_dir}: not reachable ({e.message})") \
            from None
    if not reachable:
        raise ValueError(f"experiment_dir={experiment_dir}: no such directory")
    subsets = list(subsets) if subsets is not None else list_subsets(experiment_dir)
    located = [(subset, i) for subset in subsets for i in list_runs(experiment_dir, subset)[0]]
    directories = [run_dir(experiment_dir, subset, i) for subset, i in located]
    if not directories:
        raise ValueError(f"experiment_dir={experiment_dir}: no complete runs to verify "
                         f"(expected <subset>/<run_id>/{AUX_FILENAME})")
    info = info_lib.read_experiment_info(experiment_dir)
    recorded = dict(info.data) if info and info.data else {}
    seed = _recorded_seed(experiment_dir, info)
    expected = (recorded.get("num_train"), recorded.get("num_test"))
    expected = (None, None) if None in expected else tuple(int(n) for n in expected)
    dropped = {subset: _dropped(experiment_dir, subset) for subset in subsets}
    fingerprints: list[bytes | None] = [None] * len(directories)

    def check(position: int) -> tuple[tuple[int, int] | None, str | None]:
        subset, run_id = located[position]
        try:
            run = load_run(directories[position])
        except RunFileError as e:
            return None, str(e)
        sizes = (len(run["index_train"]) + len(run["index_removed"]), len(run["index_test"]))
        if None not in expected and sizes != expected:
            return sizes, None  # named below, with the sizes
        problem = check_run_arrays(run, *sizes) or design_problem(
            subset, run_id, run[SUBSET_INDICES], sizes[0], seed, dropped[subset])
        if problem is None and (not designs_lib.is_targeted_design(subset) or any(
                key.startswith(tuple(_FLOAT_METRICS.values())) for key in run)):
            fingerprints[position] = _run_fingerprint(run)  # see load_experiment
        return sizes, problem

    with concurrent.futures.ThreadPoolExecutor(num_threads) as pool:
        checked = list(pool.map(check, range(len(directories))))
    if None in expected:  # no record: the sizes most runs have
        expected = Counter(s for s, _ in checked if s is not None).most_common(1)[0][0]
    first: dict[bytes, str] = {}
    for position, fingerprint in enumerate(fingerprints):
        if fingerprint is None:
            continue
        if fingerprint in first:
            checked[position] = (checked[position][0], (
                f"the same training subset and arrays as {first[fingerprint]} (a run copied "
                "under another id)"))
        else:
            first[fingerprint] = directories[position]
    problems = []
    for directory, (sizes, problem) in zip(directories, checked, strict=True):
        if problem is None and sizes != tuple(expected):
            problem = (f"{sizes[0]} training and {sizes[1]} test examples, expected "
                       f"{expected[0]} and {expected[1]}")
        if problem is not None:
            if not problem.startswith(directory):
                problem = f"{layout_lib.RunDir(directory).aux_arrays}: {problem}"
            problems.append((directory, problem))
    return len(directories), problems


def check_run_arrays(run: dict[str, np.ndarray], num_train: int, num_test: int) -> str | None:
    """What is wrong with one run's aux arrays, or None.

    Checks dtypes (correctness bool, indices integers, margins and logits floats),
    ``subsample_idx`` equal to ``index_train`` as sets, train and removed indices
    covering ``0..num_train-1`` and test indices ``0..num_test-1`` exactly once, and
    finite margins and log-odds.
    """
    for key, value in run.items():
        if key.startswith("correctness_") and value.dtype != bool:
            return f"{key} has dtype {value.dtype}, expected bool"
        if (key.startswith("index_") or key == SUBSET_INDICES) and \
                not np.issubdtype(value.dtype, np.integer):
            return f"{key} has dtype {value.dtype}, expected integers"
        if key.startswith((MARGIN_PREFIX, LOGODDS_PREFIX, LOGITS_PREFIX)):
            if not np.issubdtype(value.dtype, np.floating):
                return f"{key} has dtype {value.dtype}, expected floats"
            if not key.startswith(LOGITS_PREFIX) and not np.isfinite(value).all():
                return f"{key} has {int((~np.isfinite(value)).sum())} non-finite values"
    weights = run.get(EXAMPLE_WEIGHTS)
    if weights is not None and (weights.shape != (num_train,)
                                or not np.issubdtype(weights.dtype, np.floating)
                                or not np.isfinite(weights).all()):
        return f"{EXAMPLE_WEIGHTS} is not {num_train} finite floats"
    if not np.array_equal(np.unique(run[SUBSET_INDICES]), np.unique(run["index_train"])) \
            or len(run[SUBSET_INDICES]) != len(run["index_train"]):
        return f"{SUBSET_INDICES} differs from index_train"
    train = np.concatenate([run["index_train"], run["index_removed"]])
    if not (np.array_equal(np.sort(train), np.arange(num_train))
            and np.array_equal(np.sort(run["index_test"]), np.arange(num_test))):
        return (f"indices do not cover each of {num_train} training and {num_test} test "
                "examples exactly once")
    return None


def design_problem(subset: str, run_id: int, subset_indices: np.ndarray, num_train: int,
                   seed: int | None = None, dropped: np.ndarray | None = None,
                   derive: bool = True) -> str | None:
    """What is wrong with a run's training subset for the design of its folder, or None.

    ``full`` trains on every example, ``drop-<name>`` on all but its target set
    (`dropped`, when known; at least one example left out otherwise). A ratio design
    (``0.7``) never trains on every example, and its size must fit the ratio: with the
    experiment `seed` recorded (our trainer draws exactly ``round(ratio * num_train)``)
    within one example; without it (released runs, subsets drawn elsewhere, perhaps
    example by example) within four binomial standard deviations. With the `seed` and
    `derive`, the subset must be exactly the one the design derives for `run_id`
    (`designs.subset_indices`), which also finds a run copied from another id or
    another experiment. Folders that are not design names are not checked.
    """
    try:
        if designs_lib.design_name(subset) != subset:
            return None
    except ValueError:
        return None
    chosen = np.asarray(subset_indices)  # each index once (`check_run_arrays`)
    size = len(chosen)
    if subset == designs_lib.FULL:
        expected, text = num_train, "every"
    elif subset.startswith(designs_lib.DROP_PREFIX):
        if dropped is None:
            if size < num_train:
                return None
            return (f"trains on all {num_train} examples, but design {subset} leaves its "
                    "target set out")
        expected = num_train - len(np.unique(dropped))
        text = f"{expected} (all but the target set) of the"
        if np.isin(dropped, chosen).any():
            first = int(np.asarray(dropped)[np.isin(dropped, chosen)][0])
            return (f"trains on target example {first}, which design {subset} leaves out")
    else:
        ratio = designs_lib.parse_subset_ratio(subset)
        slack = 1.0 if seed is not None else max(
            1.0, 4.0 * np.sqrt(num_train * ratio * (1.0 - ratio)))
        if size >= num_train or abs(size - ratio * num_train) > slack:
            return (f"trains on {size} of {num_train} examples, but design {subset} takes "
                    f"{int(round(ratio * num_train))} (a run of another design?)")
        expected = size
        text = ""
    if size != expected:
        return (f"trains on {size} of {num_train} examples, but design {subset} takes "
                f"{text} {num_train} examples".replace("  ", " "))
    if seed is not None and derive:
        derived = designs_lib.subset_indices(num_train, subset, seed, run_id, dropped)
        if not np.array_equal(np.sort(chosen), derived):
            return (f"trains on other examples than run {run_id} of design {subset} with "
                    f"experiment seed {seed} (copied from another run or experiment?)")
    return None


def duplicate_runs(matrices: Sequence[np.ndarray]) -> dict[int, int]:
    """Rows that repeat an earlier row in every one of `matrices`: copy -> original.

    Args:
        matrices: ``[num_runs, ...]`` arrays of the same runs (membership, predictions);
            two runs are duplicates when their rows are equal in all of them.
    """
    seen: dict[bytes, int] = {}
    copies = {}
    for r in range(len(matrices[0]) if matrices else 0):
        digest = hashlib.sha256()
        for matrix in matrices:
            digest.update(np.ascontiguousarray(matrix[r]).tobytes())
        key = digest.digest()
        if key in seen:
            copies[r] = seen[key]
        else:
            seen[key] = r
    return copies


def _run_fingerprint(run: dict[str, np.ndarray]) -> bytes:
    """SHA-256 of a run's arrays in index order (the same whatever order they were
    stored in): two runs with equal fingerprints trained on the same subset and
    predicted the same."""
    digest = hashlib.sha256()
    for key in sorted(run):
        if key.startswith("index_"):
            continue
        split = key.rpartition("_")[2]
        values = run[key]
        if key != SUBSET_INDICES and f"index_{split}" in run:
            values = values[np.argsort(run[f"index_{split}"], kind="stable")]
        elif key == SUBSET_INDICES:
            values = np.sort(values)
        digest.update(key.encode())
        digest.update(np.ascontiguousarray(values).tobytes())
    return digest.digest()


def _recorded_seed(experiment_dir: str, info: info_lib.ExperimentInfo | None = None
                   ) -> int | None:
    """The experiment seed of ``experiment.json``, or None (released runs)."""
    if info is None:
        try:
            info = info_lib.read_experiment_info(experiment_dir)
        except files.StoredFileError:
            return None
    seed = info.seed if info is not None else None
    return seed if isinstance(seed, int) and not isinstance(seed, bool) else None


def _dropped(experiment_dir: str, subset: str) -> np.ndarray | None:
    """The target set of a ``drop-<name>`` design, if stored; else None."""
    if not subset.startswith(designs_lib.DROP_PREFIX):
        return None
    try:
        name = subset[len(designs_lib.DROP_PREFIX):]
        return targets_lib.load_targets(targets_lib.targets_path(experiment_dir, name)).indices
    except ValueError:
        return None


def quarantine_run(directory: str) -> str:
    """Moves a damaged ``aux_arrays.npz`` out of its run, so the run is redone.

    It goes to ``<subset>/.corrupt/<run_id>-<time>.npz`` (beside the run folders, where
    readers do not look and redoing the run does not delete it), for inspection.
    """
    run = layout_lib.RunDir(directory)
    target = run.corrupt()
    tf.io.gfile.makedirs(target.rpartition("/")[0])
    tf.io.gfile.rename(run.aux_arrays, target, overwrite=True)
    return target


def _empty_matrices(num_runs: int, num_train: int, num_test: int) -> dict[str, np.ndarray]:
    return {"membership": np.zeros((num_runs, num_train), dtype=bool),
            "correctness_train": np.zeros((num_runs, num_train), dtype=bool),
            "correctness_test": np.zeros((num_runs, num_test), dtype=bool),
            **{f"{metric}_train": np.zeros((num_runs, num_train), np.float32)
               for metric in _FLOAT_METRICS},
            **{f"{metric}_test": np.zeros((num_runs, num_test), np.float32)
               for metric in _FLOAT_METRICS}}


def _raise_on_problem(directory: str, problem: str | None) -> None:
    if problem is not None:
        raise RunFileError(f"{layout_lib.RunDir(directory).aux_arrays}: {problem}")

