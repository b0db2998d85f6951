"""heldout/store/checks.py: output locations checked before work (one-line errors:
tests/app/test_cli.py)."""

import subprocess

import pytest

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
