"""``experiment.json``: the settings every run of an experiment directory shares.

A directory holds runs of one data set, seed and training configuration; mixing runs of
two settings would silently bias every estimate. So the first worker records the
settings, every later one compares, and a difference is an error naming the keys that
differ (``train_config.epochs (stored 2, given 3)``), not a dump of the config.

Racing workers: the file is created only if absent (`files.write_bytes` with
``exclusive``), then read back and compared, so of two workers started at once with
different settings exactly one finds its own settings and proceeds. The record holds a
fingerprint of the data (SHA-256 of the training and test arrays and labels, with their
sizes), so a file replaced behind the same ``npz:<path>`` is refused too, and the sizes
let `runs.verify_runs` check every run against them.
"""

from __future__ import annotations

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
    stored = read_experiment_info(experiment_dir).get("data")
    if not isinstance(stored, dict) or "sha256" not in stored:
        return found  # released runs, or a streamed data set (fingerprinted by its files)
    if found != stored:
        keys = [k for k in found if found.get(k) != stored.get(k)]
        raise ValueError(f"dataset={data.name}: not the data {experiment_dir} was trained on "
                         f"(experiment.json data fingerprint differs in {', '.join(keys)})")
    return found


def read_experiment_info(experiment_dir: str) -> dict:
    """The settings an experiment directory was created with, or {} (released runs).

    Raises:
        files.StoredFileError: ``experiment.json`` is not valid JSON (named by path).
    """
    path = layout_lib.ExperimentDir(experiment_dir).experiment_info
    try:
        info = files.read_json(path)
    except files.StoredFileMissing:
        return {}
    if not isinstance(info, dict):
        raise files.StoredFileError(f"{path}: expected a JSON object of settings")
    return info


def save_experiment_info(experiment_dir: str, settings: Mapping[str, Any],
                         settle_seconds: float = 1.0) -> dict:
    """Records `settings` unless the directory has settings already; then compares.

    The file is created only if absent and read back; on file systems without an
    exclusive create (``gs://``) the read-back waits `settle_seconds` first, so that
    racing writers all read the one file that stayed.

    Returns:
        The stored settings.

    Raises:
        SettingsMismatchError: the stored settings differ from `settings` in a shared key.
    """
    path = layout_lib.ExperimentDir(experiment_dir).experiment_info
    files.write_json(path, dict(settings), exclusive=True)
    if not files.is_local(path):
        time.sleep(settle_seconds)
    stored = read_experiment_info(experiment_dir)
    check_settings(experiment_dir, stored, settings)
    return stored


def check_settings(experiment_dir: str, stored: Mapping[str, Any],
                   settings: Mapping[str, Any],
                   keys: Sequence[str] = SHARED_SETTINGS) -> None:
    """Raises unless `settings` agree with `stored` on every key of `keys` both have.

    Raises:
        SettingsMismatchError: naming each differing key with both values (shortened).
    """
    differing = settings_differences(stored, settings, keys)
    if differing:
        listed = ", ".join(f"{key} (stored {_short(old)}, given {_short(new)})"
                           for key, old, new in differing)
        raise SettingsMismatchError(
            f"experiment_dir={experiment_dir} holds runs made with other settings: "
            f"{listed}; use a new experiment_dir or the same settings")


def settings_differences(stored: Mapping[str, Any], settings: Mapping[str, Any],
                         keys: Sequence[str] = SHARED_SETTINGS
                         ) -> list[tuple[str, Any, Any]]:
    """(dotted key, stored value, given value) of every leaf that differs.

    Only top-level `keys` present on both sides are compared: an old record without
    ``data`` (or a check made before the data is loaded) skips the fingerprint.
    """
    differing = []
    for key in keys:
        if key in stored and key in settings:
            old, new = _flatten(stored[key], key), _flatten(settings[key], key)
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
