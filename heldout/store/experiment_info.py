"""``experiment.json``: the settings every run of an experiment directory shares.

A directory holds runs of one data set, seed and training configuration; mixing runs of
two settings would silently bias every estimate. So the first worker records the
settings (`ExperimentInfo`; one writer `record_experiment_info`, one reader
`read_experiment_info`), every later one compares, and a difference is an error naming
the keys that differ (``train_config.epochs (stored 2, given 3)``), not a dump of the
config. A first attempt that writes no run (refused, or every run diverged) takes its
record back (`remove_experiment_info`, by `heldout.training.experiment`), so it leaves
nothing that blocks a corrected command; a worker records again (create if absent,
compare) before its first run, so runs never stand without the record.

Racing workers: the file is created only if absent (`files.write_bytes` with
``exclusive``), then read back and compared, so of two workers started at once with
different settings exactly one finds its own settings and proceeds. The record holds a
fingerprint of the data (SHA-256 of the training and test arrays and labels, with their
sizes), so a file replaced behind the same ``npz:<path>`` is refused too, and the sizes
let `runs.verify_runs` check every run against them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from heldout.data.dataset import Dataset
from heldout.store import files
from heldout.store import layout as layout_lib

# What must agree between runs written into one experiment directory.
SHARED_SETTINGS = ("dataset", "seed", "train_config", "data")
_MAX_VALUE_CHARS = 24  # a differing value longer than this is shortened in messages


class SettingsMismatchError(ValueError):
    """The directory holds runs made with other settings (names the differing keys)."""


@dataclasses.dataclass(frozen=True)
class ExperimentInfo:
    """The record in ``experiment.json``: what every run of the directory shares.

    A field is None when unknown (an older record without a fingerprint, or a check made
    before the data is loaded); None fields are neither written nor compared.

    Attributes:
        dataset: the data spec (`heldout.data.sources.load_dataset`).
        seed: the experiment seed.
        train_config: the training settings that change what a run computes (the
            `TrainConfig` fields but the speed-only ones), as JSON values.
        data: the data's fingerprint (`data_fingerprint`, or a streamed set's files').
    """

    dataset: str | None = None
    seed: int | None = None
    train_config: Mapping[str, Any] | None = None
    data: Mapping[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        """The record as written (fields that are None left out)."""
        return {key: (dict(value) if isinstance(value, Mapping) else value)
                for key, value in dataclasses.asdict(self).items() if value is not None}

    @classmethod
    def from_json(cls, value: Any, path: str) -> ExperimentInfo:
        """The record read from `path`; keys it does not know are ignored.

        Raises:
            files.StoredFileError: not an object, or a field of the wrong type (named).
        """
        if not isinstance(value, dict):
            raise files.StoredFileError(f"{path}: expected a JSON object of settings")
        kinds = {"dataset": str, "seed": int, "train_config": dict, "data": dict}
        for key, kind in kinds.items():
            if value.get(key) is not None and not isinstance(value[key], kind):
                raise files.StoredFileError(f"{path}: {key} is {type(value[key]).__name__}, "
                                            f"expected {kind.__name__}")
        return cls(**{key: value.get(key) for key in kinds})


def data_fingerprint(data: Dataset) -> dict[str, Any]:
    """SHA-256 of the data's arrays (dtype, shape and bytes of x/y train/test) and sizes."""
    digest = hashlib.sha256()
    for array in (data.x_train, data.y_train, data.x_test, data.y_test):
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(memoryview(array).cast("B"))
    return {"sha256": digest.hexdigest(), "num_train": int(data.num_train),
            "num_test": int(data.num_test), "num_classes": int(data.num_classes)}


def check_data(experiment_dir: str, data: Dataset) -> dict[str, Any]:
    """Refuses `data` when the experiment recorded a fingerprint of other data.

    Returns:
        The fingerprint of `data` (`data_fingerprint`), for the caller to record.

    A file replaced behind the same ``npz:<path>`` spec (or another TFDS version) would
    otherwise pair the stored runs with the wrong examples.

    Raises:
        ValueError: the fingerprints differ (naming the data set and the experiment).
    """
    found = data_fingerprint(data)
    info = read_experiment_info(experiment_dir)
    stored = info.data if info else None
    if not isinstance(stored, Mapping) or "sha256" not in stored:
        return found  # released runs, or a streamed data set (fingerprinted by its files)
    if found != dict(stored):
        keys = [k for k in found if found.get(k) != stored.get(k)]
        raise ValueError(f"dataset={data.name}: not the data {experiment_dir} was trained on "
                         f"(experiment.json data fingerprint differs in {', '.join(keys)})")
    return found


def read_experiment_info(experiment_dir: str) -> ExperimentInfo | None:
    """The settings an experiment directory's runs share, or None (no runs written yet,
    or released runs).

    Raises:
        files.StoredFileError: ``experiment.json`` is not a valid record (named by path).
    """
    path = layout_lib.ExperimentDir(experiment_dir).experiment_info
    try:
        value = files.read_json(path)
    except files.StoredFileMissing:
        return None
    return ExperimentInfo.from_json(value, path)


def record_experiment_info(experiment_dir: str, info: ExperimentInfo,
                           settle_seconds: float = 1.0) -> bool:
    """Records `info` unless the directory has a record already; then compares.

    The file is created only if absent and read back; on file systems without an
    exclusive create (``gs://``) the read-back waits `settle_seconds` first, so that
    racing writers all read the one file that stayed.

    Returns:
        Whether this call created the record (it may take it back while the directory
        holds no runs: `remove_experiment_info`).

    Raises:
        SettingsMismatchError: the stored settings differ from `info` in a shared key.
    """
    path = layout_lib.ExperimentDir(experiment_dir).experiment_info
    created = files.write_json(path, info.to_json(), exclusive=True)
    if not files.is_local(path):
        time.sleep(settle_seconds)
    check_settings(experiment_dir, read_experiment_info(experiment_dir), info)
    return created


def remove_experiment_info(experiment_dir: str) -> None:
    """Takes back the record of an experiment none of whose runs was written (a first
    attempt refused or diverged), so that a corrected command is not refused for the
    settings of one that failed. The caller checks that the directory holds no runs."""
    files.remove_quietly(layout_lib.ExperimentDir(experiment_dir).experiment_info)


def check_settings(experiment_dir: str, stored: ExperimentInfo | None, given: ExperimentInfo,
                   keys: Sequence[str] = SHARED_SETTINGS) -> None:
    """Raises unless `given` agrees with `stored` on every key of `keys` both know.

    Raises:
        SettingsMismatchError: naming each differing key with both values (shortened).
    """
    differing = settings_differences(stored, given, keys)
    if differing:
        listed = ", ".join(f"{key} (stored {_short(old)}, given {_short(new)})"
                           for key, old, new in differing)
        raise SettingsMismatchError(
            f"experiment_dir={experiment_dir} holds runs made with other settings: "
            f"{listed}; use a new experiment_dir or the same settings")


def settings_differences(stored: ExperimentInfo | None, given: ExperimentInfo,
                         keys: Sequence[str] = SHARED_SETTINGS
                         ) -> list[tuple[str, Any, Any]]:
    """(dotted key, stored value, given value) of every leaf that differs.

    Only `keys` known on both sides are compared: an old record without ``data`` (or a
    check made before the data is loaded) skips the fingerprint.
    """
    if stored is None:
        return []
    differing = []
    for key in keys:
        old, new = getattr(stored, key), getattr(given, key)
        if old is not None and new is not None:
            old, new = _flatten(old, key), _flatten(new, key)
            for leaf in sorted(set(old) | set(new)):
                if old.get(leaf) != new.get(leaf):
                    differing.append((leaf, old.get(leaf), new.get(leaf)))
    return differing


def _flatten(value: Any, prefix: str) -> dict[str, Any]:
    if isinstance(value, Mapping):
        flat = {}
        for key, item in value.items():
            flat.update(_flatten(item, f"{prefix}.{key}"))
        return flat
    if isinstance(value, tuple):
        value = list(value)  # JSON reads tuples back as lists
    return {prefix: value}


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _MAX_VALUE_CHARS else text[:_MAX_VALUE_CHARS - 3] + "..."
