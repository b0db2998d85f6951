"""heldout/store/checks.py: output locations checked before work; one-line errors."""

import subprocess

import pytest
import tensorflow as tf

from heldout.store import checks


def test_writable_directory_is_created_and_left_clean(tmp_path):
    target = tmp_path / "a" / "b"
    checks.check_writable(str(target), "plot_dir")
    assert target.is_dir() and list(target.iterdir()) == []  # the probe is removed
    checks.check_writable(str(tmp_path / "c" / "out.npz"), "output", is_file=True)
    assert (tmp_path / "c").is_dir() and not (tmp_path / "c" / "out.npz").exists()


def test_path_under_a_regular_file_is_refused(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ValueError, match=rf"output={blocker}/o\.npz: not writable \("):
        checks.check_writable(str(blocker / "o.npz"), "output", is_file=True)
    with pytest.raises(ValueError, match="plot_dir: empty"):
        checks.check_writable("", "plot_dir")
    with pytest.raises(ValueError, match="csv_dir=foo://x: not writable"):
        checks.check_writable("foo://x", "csv_dir")


def test_immutable_directory_is_refused_even_for_root(tmp_path):
    """A directory marked immutable (chattr +i) refuses writes to every user, root too."""
    directory = tmp_path / "frozen"
    directory.mkdir()
    if subprocess.run(["chattr", "+i", str(directory)], capture_output=True).returncode:
        pytest.skip("chattr +i is not available here")
    try:
        with pytest.raises(ValueError, match="output=.*frozen/e.npz: not writable"):
            checks.check_writable(str(directory / "e.npz"), "output", is_file=True)
    finally:
        subprocess.run(["chattr", "-i", str(directory)], check=True)


@pytest.mark.parametrize("message, expected", [
    ("damping=-1.0: expected >= 0", "--damping=-1.0: expected >= 0"),
    ("batch_size=0: expected a positive number\nsecond line",
     "--gradient_batch_size=0: expected a positive number"),
    ("fisher: not a setting of estimators=tracin", "--fisher: not a setting of --estimator=tracin"),
    # Compound names anywhere; not inside paths, flags or placeholders.
    ("x: use a new experiment_dir, or add retrain_complete to /a/experiment_dir/b",
     "x: use a new --experiment_dir, or add --retrain_complete to /a/experiment_dir/b"),
    ("no runs (expected <subset>/<run_id>/aux_arrays.npz)",
     "no runs (expected <subset>/<run_id>/aux_arrays.npz)"),
    ("--damping=1: already a flag", "--damping=1: already a flag"),
    # Single words that are not at the start and carry no value stay prose.
    ("npz:/d.npz: damping of the data", "npz:/d.npz: damping of the data"),
])
def test_one_line_error_maps_parameters_to_flags(message, expected):
    table = {"damping": "--damping", "batch_size": "--gradient_batch_size", "fisher": "--fisher",
             "estimators": "--estimator", "experiment_dir": "--experiment_dir",
             "retrain_complete": "--retrain_complete", "run_id": "--run_id"}
    assert checks.one_line_error(ValueError(message), table) == expected


def test_one_line_error_of_file_system_errors(tmp_path):
    try:
        tf.io.gfile.GFile(str(tmp_path / "missing" / "f"), "rb").read()
    except tf.errors.OpError as e:
        line = checks.one_line_error(e)
    assert str(tmp_path / "missing" / "f") in line and "\n" not in line
    try:
        open(tmp_path / "nope")  # noqa: SIM115
    except OSError as e:
        assert checks.one_line_error(e) == f"{tmp_path / 'nope'}: No such file or directory"
    assert "interrupted" in checks.one_line_error(KeyboardInterrupt())
    assert set(checks.cli_errors()) == {ValueError, tf.errors.OpError, OSError,
                                        KeyboardInterrupt}
