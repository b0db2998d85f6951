"""The experiment the CLI tests share: 6 digits runs trained by ``train.py`` once."""

import pytest

from tests.cli.runner import TINY, run_cli


@pytest.fixture(scope="session")
def experiment(tmp_path_factory) -> str:
    directory = str(tmp_path_factory.mktemp("cli") / "digits")
    result = run_cli("train.py", f"--experiment_dir={directory}", *TINY,
                     "--save_checkpoints", "--checkpoint_every=1")
    assert result.returncode == 0, result.stderr
    assert "trained 6 runs, 0 were already complete" in result.stdout
    return directory
