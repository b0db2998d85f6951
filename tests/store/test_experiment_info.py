"""Tests of heldout.store.experiment_info: settings recorded once, compared by every worker."""

import concurrent.futures
import hashlib
import threading
import uuid

import numpy as np
import pytest

from heldout.data.dataset import Dataset
from heldout.store import experiment_info as info_lib
from heldout.store import files, layout


def _data(seed=0, num_train=12, num_test=5):
    rng = np.random.default_rng(seed)
    return Dataset(name="toy", x_train=rng.random((num_train, 4, 4, 1), dtype=np.float32),
                   y_train=rng.integers(0, 3, num_train), num_classes=3,
                   x_test=rng.random((num_test, 4, 4, 1), dtype=np.float32),
                   y_test=rng.integers(0, 3, num_test))


def _settings(epochs=2, data=None):
    return info_lib.ExperimentInfo(
        dataset="npz:toy.npz", seed=0,
        train_config={"epochs": epochs, "learning_rate": 0.1, "model": "mlp"},
        data=info_lib.data_fingerprint(data or _data()))


def test_fingerprint_is_sha256_of_the_arrays_and_changes_with_any_of_them():
    data = _data()
    digest = hashlib.sha256()
    for array in (data.x_train, data.y_train, data.x_test, data.y_test):
        digest.update(f"{array.dtype.str}{array.shape}".encode() + array.tobytes())
    fingerprint = info_lib.data_fingerprint(data)
    assert fingerprint == {"sha256": digest.hexdigest(), "num_train": 12, "num_test": 5,
                           "num_classes": 3}
    fortran = Dataset(name="copy", x_train=np.asfortranarray(data.x_train),
                      y_train=data.y_train.copy(), x_test=data.x_test, y_test=data.y_test,
                      num_classes=3)
    assert info_lib.data_fingerprint(fortran) == fingerprint  # same values, same print
    for field in ("x_train", "y_train", "x_test", "y_test"):
        changed = {name: getattr(data, name).copy()
                   for name in ("x_train", "y_train", "x_test", "y_test")}
        changed[field].flat[0] += 1
        other = Dataset(name="toy", num_classes=3, **changed)
        assert info_lib.data_fingerprint(other)["sha256"] != fingerprint["sha256"], field


def test_first_save_records_and_later_saves_compare(tmp_path):
    directory = str(tmp_path / "exp")
    assert info_lib.read_experiment_info(directory) is None
    assert info_lib.record_experiment_info(directory, _settings())  # created
    assert not info_lib.record_experiment_info(directory, _settings())  # compared
    with pytest.raises(info_lib.SettingsMismatchError) as error:
        info_lib.record_experiment_info(directory, _settings(epochs=3))
    message = str(error.value)
    assert "train_config.epochs (stored 2, given 3)" in message
    assert "learning_rate" not in message and "\n" not in message  # the key, not a dump
    assert info_lib.read_experiment_info(directory) == _settings()


def test_replaced_data_behind_the_same_spec_is_refused(tmp_path):
    directory = str(tmp_path / "exp")
    info_lib.record_experiment_info(directory, _settings())
    with pytest.raises(info_lib.SettingsMismatchError, match=r"data\.sha256 \(stored '"):
        info_lib.record_experiment_info(directory, _settings(data=_data(seed=1)))
    with pytest.raises(info_lib.SettingsMismatchError,
                       match=r"data\.num_test \(stored 5, given 4\)"):
        info_lib.record_experiment_info(directory, _settings(data=_data(num_test=4)))


def test_record_without_fingerprint_is_compared_on_the_other_keys(tmp_path):
    directory = str(tmp_path / "exp")
    old = {key: value for key, value in _settings().to_json().items() if key != "data"}
    files.write_json(layout.ExperimentDir(directory).experiment_info, old)
    assert not info_lib.record_experiment_info(directory, _settings())
    assert info_lib.read_experiment_info(directory).to_json() == old
    with pytest.raises(info_lib.SettingsMismatchError, match="train_config.epochs"):
        info_lib.record_experiment_info(directory, _settings(epochs=5))


@pytest.mark.parametrize("file_system", ["local", "ram"])
def test_racing_writers_with_different_settings_one_proceeds(tmp_path, file_system):
    """Case 1 of issue 13, 20 times: exactly one of two racing workers proceeds and the
    record holds its settings."""
    for attempt in range(20):
        directory = (str(tmp_path / f"exp{attempt}") if file_system == "local"
                     else f"ram://heldout-tests/{uuid.uuid4().hex}/exp")
        start = threading.Barrier(2)

        def save(epochs, directory=directory, start=start):
            start.wait()
            try:
                info_lib.record_experiment_info(directory, _settings(epochs),
                                                settle_seconds=0.05)
            except info_lib.SettingsMismatchError as e:
                return str(e)
            return None

        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            outcomes = list(pool.map(save, (2, 3)))
        assert sum(o is None for o in outcomes) == 1, outcomes
        winner = 2 if outcomes[0] is None else 3
        assert info_lib.read_experiment_info(directory) == _settings(winner)
        assert "train_config.epochs" in next(o for o in outcomes if o is not None)


def test_invalid_record_names_the_file(tmp_path):
    path = tmp_path / "experiment.json"
    path.write_text("{broken")
    with pytest.raises(files.StoredFileError, match="experiment.json: not a valid JSON"):
        info_lib.read_experiment_info(str(tmp_path))
    path.write_text("[1, 2]")
    with pytest.raises(files.StoredFileError, match="expected a JSON object"):
        info_lib.read_experiment_info(str(tmp_path))
    path.write_text('{"seed": "zero"}')
    with pytest.raises(files.StoredFileError, match="experiment.json: seed is str, expected int"):
        info_lib.read_experiment_info(str(tmp_path))


def test_check_data_refuses_other_data_and_accepts_the_recorded_data(tmp_path):
    """The fingerprint in experiment.json is checked when estimates load the data."""
    from heldout.data.dataset import Dataset
    from heldout.store import experiment_info as info_lib

    rng = np.random.default_rng(0)

    def data(shift: float) -> Dataset:
        return Dataset(name="npz:x.npz", x_train=rng.random((6, 3), np.float32) * 0 + shift,
                       y_train=np.arange(6) % 2, x_test=np.zeros((2, 3), np.float32),
                       y_test=np.array([0, 1]), num_classes=2)

    directory = str(tmp_path / "exp")
    recorded = data(0.5)
    info_lib.record_experiment_info(
        directory, info_lib.ExperimentInfo(data=info_lib.data_fingerprint(recorded)))
    info_lib.check_data(directory, recorded)  # the same arrays: accepted
    with pytest.raises(ValueError, match="dataset=npz:x.npz: not the data .* sha256"):
        info_lib.check_data(directory, data(0.25))
    info_lib.check_data(str(tmp_path / "released"), recorded)  # no experiment.json: no check
