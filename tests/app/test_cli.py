"""heldout/app/cli.py: one line per error, a parameter shown as its flag by the
ParameterError's field (never by rewriting prose)."""

import pytest
import tensorflow as tf

from heldout.app import cli
from heldout.errors import ParameterError

FLAG_OF = cli.flag_namer({"damping": None, "estimator": None, "experiment_dir": None},
                         {"estimators": "estimator", "batch_size": "gradient_batch_size"})


@pytest.mark.parametrize("error, expected", [
    (ParameterError("damping", "expected >= 0", -1.0), "--damping=-1.0: expected >= 0"),
    (ParameterError("batch_size", "expected a positive number\nsecond line", 0),
     "--gradient_batch_size=0: expected a positive number"),
    (ParameterError("estimators", "expected one of x, y", "z"),
     "--estimator=z: expected one of x, y"),
    (ParameterError("seed", "not a flag of this CLI"), "seed: not a flag of this CLI"),
    # Prose is never rewritten: only the parameter the error carries becomes a flag.
    (ValueError("damping=1: experiment_dir of the data"), "damping=1: experiment_dir of the data"),
])
def test_one_line_shows_the_parameter_as_its_flag(error, expected):
    assert cli.one_line(error, FLAG_OF) == expected


def test_one_line_of_file_system_errors_and_interrupts(tmp_path):
    try:
        tf.io.gfile.GFile(str(tmp_path / "missing" / "f"), "rb").read()
    except tf.errors.OpError as e:
        line = cli.one_line(e, FLAG_OF)
    assert str(tmp_path / "missing" / "f") in line and "\n" not in line
    try:
        open(tmp_path / "nope")  # noqa: SIM115
    except OSError as e:
        assert cli.one_line(e, FLAG_OF) == f"{tmp_path / 'nope'}: No such file or directory"
    assert "interrupted" in cli.one_line(KeyboardInterrupt(), FLAG_OF)


def test_given_values_are_the_flags_present_by_parameter():
    from absl import flags

    values = flags.FlagValues()
    holders = [flags.DEFINE_list("estimator", None, "", flag_values=values),
               flags.DEFINE_integer("top", None, "", flag_values=values),
               flags.DEFINE_bool("all", None, "", flag_values=values)]
    values(["prog", "--estimator=a,b", "--noall"])
    assert cli.given_values(holders, {"estimators": "estimator", "show_all": "all"}) == \
        {"estimators": ("a", "b"), "show_all": False}
