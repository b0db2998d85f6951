"""train.py's front door (`heldout.app.train`): every flag of train.py, read from its absl
definitions, is taken by exactly the jobs that hold it and refused by the others naming
it; float flags refuse NaN and infinity; building a job loads no TensorFlow.

In process and fast: jobs are built, never trained.
"""

import importlib.util
import math
import subprocess
import sys

import pytest
from absl import flags

from heldout.app import cli
from heldout.app import train as train_job
from heldout.errors import ParameterError
from heldout.training.config import TrainConfig
from tests.cli.runner import REPO_ROOT

_MODULE = "_train_py_flags_under_test"


def _train_py_flags() -> dict[str, flags.Flag]:
    """train.py's flags, from its own absl definitions (train.py imported once)."""
    if _MODULE not in sys.modules:
        spec = importlib.util.spec_from_file_location(_MODULE, REPO_ROOT / "train.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[_MODULE] = module
        spec.loader.exec_module(module)
    return {f.name: f for f in flags.FLAGS.get_flags_for_module(_MODULE)}


# The flags given to select each kind of job.
KINDS = {train_job.TrainDesign: {}, train_job.TrainDrop: {"subset": "drop-t"},
         train_job.TrainPreset: {"config": "digits_nsi"}}
_STREAM = {"dataset": "imagenet:train-*,validation-*", "model": "resnet50"}
# flag -> (a valid value other than the default, flags it needs with it).
SAMPLES = {
    "dataset": ("npz:data.npz", {}),
    "data_dir": ("/tmp/tfds", {"dataset": "tfds:mnist"}),
    "experiment_dir": ("/tmp/elsewhere", {}),
    "model": ("cnn", {}),
    "model_width": (0.5, {}),
    "subset_ratio": (0.5, {}),
    "subset": (None, {}),  # the kind's own: see _subset_sample
    "targets": ("random:3", {}),
    "target_indices": ("1,2,3", {}),
    "pilot_runs": (5, {}),
    "config": ("digits_nsi", {}),
    "num_runs": (5, {}),
    "run_ids": ("3,5", {}),
    "seed": (4, {}),
    "epochs": (3, {}),
    "batch_size": (32, {}),
    "learning_rate": (0.05, {}),
    "momentum": (0.5, {}),
    "nesterov": (True, {}),
    "label_smoothing": (0.1, {}),
    "augment": ("flip", {}),
    "weight_decay": (0.01, {}),
    "lr_schedule": ("linear", {}),
    "warmup_epochs": (0.5, {}),
    "models_at_once": (8, {}),
    "concurrent_programs": (1, {}),
    "chunk_models": (4, {}),
    "xla": (False, {}),
    "precision": ("mixed_bfloat16", {"model": "small_inception"}),
    "recipe": ("none", {"model": "small_inception"}),
    "test_time_flip": (True, {"model": "small_inception"}),
    "save_checkpoints": (True, {}),
    "checkpoint_every": (2, {"save_checkpoints": True}),
    "save_logits": (True, {}),
    "retrain_complete": (True, {"save_logits": True}),
    "stream_records": (True, _STREAM),
    "image_size": (64, {"stream_records": True, **_STREAM}),
    "max_classes": (20, {}),
    "num_shards": (2, {}),
    "shard_index": (1, {"num_shards": 2}),
    "claim_runs": (False, {}),
    "lease_seconds": (60.0, {}),
    "verify": (True, {}),
    "progress": (False, {}),
}


def _subset_sample(kind: type) -> str:
    return "drop-other" if kind is train_job.TrainDrop else "full"


def _flag_named(parameter: str) -> str:
    return cli.flag_namer(train_job.FLAGS, train_job.FLAG_OF_PARAMETER)(parameter)


def test_every_flag_of_train_py_is_known_to_the_front_door_and_sampled():
    defined = set(_train_py_flags())
    assert defined == set(train_job.FLAGS)
    assert defined == set(SAMPLES)
    # Flags default to "not given": the library owns every default.
    assert all(f.default is None for f in _train_py_flags().values())


@pytest.mark.parametrize("kind", list(KINDS), ids=lambda k: k.__name__)
def test_each_job_takes_its_flags_and_refuses_every_other_naming_it(kind):
    base = KINDS[kind]
    assert type(train_job.job_from_flags(base)) is kind
    for flag in _train_py_flags():
        if flag == "config" or (flag == "subset" and kind is not train_job.TrainPreset):
            continue  # flags that select the kind: --config makes any job a preset's
        value, needs = SAMPLES[flag]
        if flag == "subset":
            value = _subset_sample(kind)
        if flag in train_job.TAKES[kind]:
            without = train_job.job_from_flags({**base, **needs})
            given = train_job.job_from_flags({**base, **needs, flag: value})
            assert type(given) is kind, flag
            # Taken means held: the value reaches the job (a flag dropped would not).
            assert given != without, f"{kind.__name__} accepts --{flag} but ignores it"
        else:
            with pytest.raises(ParameterError) as raised:
                train_job.job_from_flags({**base, flag: value})
            assert _flag_named(raised.value.parameter) == f"--{flag}", (flag, raised.value)


def test_the_flags_that_select_a_kind():
    assert type(train_job.job_from_flags({"subset": "full"})) is train_job.TrainDesign
    assert train_job.job_from_flags({"subset": "full"}).design == "full"
    drop = train_job.job_from_flags({"subset": "drop-other"})
    assert (type(drop), drop.target_name) == (train_job.TrainDrop, "other")
    assert type(train_job.job_from_flags({"config": "digits_nsi", "epochs": 2})) is \
        train_job.TrainPreset


@pytest.mark.parametrize(("given", "flag"), [
    ({"image_size": 64}, "image_size"),  # without --stream_records
    ({"checkpoint_every": 2}, "checkpoint_every"),  # without --save_checkpoints
    ({"retrain_complete": True}, "retrain_complete"),  # nothing to retrain for
    ({"claim_runs": False, "lease_seconds": 60.0}, "lease_seconds"),
    ({"data_dir": "/tmp/tfds"}, "data_dir"),  # digits: no TFDS directory
    ({"run_ids": "0-3", "num_runs": 4}, "num_runs"),
    ({"subset": "full", "subset_ratio": 0.5}, "subset_ratio"),
    ({"model": "resnet50", "model_width": 0.5}, "model_width"),  # no widths
    ({"model": "small_inception", "models_at_once": 250}, "models_at_once"),
    ({"model": "small_inception", "recipe": "none", "chunk_models": 4}, "chunk_models"),
    ({"stream_records": True, **_STREAM, "augment": "flip"}, "augment"),
    ({"stream_records": True, "dataset": "imagenet:a,b"}, "model"),  # mlp cannot stream
    ({"subset": "drop-t", "targets": "random:2", "target_indices": "1"}, "target_indices"),
    ({"config": "digits_nsi", "dataset": "npz:x.npz"}, "dataset"),
    ({"config": "digits_nsi", "pilot_runs": 3}, "pilot_runs"),
    ({"targets": "random:2"}, "targets"),
    ({"epochs": 0}, "epochs"),
])
def test_settings_a_job_would_ignore_or_cannot_honour_are_refused(given, flag):
    with pytest.raises(ParameterError) as raised:
        train_job.job_from_flags(given)
    assert _flag_named(raised.value.parameter) == f"--{flag}", raised.value


FLOAT_FLAGS = sorted(name for name, f in _train_py_flags().items()
                     if f.flag_type() == "float")


def test_float_flags_are_the_expected_ones():
    assert set(FLOAT_FLAGS) == {"model_width", "subset_ratio", "learning_rate", "momentum",
                                "label_smoothing", "weight_decay", "warmup_epochs",
                                "lease_seconds"}


@pytest.mark.parametrize("flag", FLOAT_FLAGS)
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_float_flags_refuse_nan_and_infinity(flag, value):
    with pytest.raises(ParameterError) as raised:
        train_job.job_from_flags({**SAMPLES[flag][1], flag: value})
    assert _flag_named(raised.value.parameter) == f"--{flag}", raised.value


def test_python_callers_get_the_validation_of_the_command_line():
    """The checks live in the jobs and the config, not in train.py: the same refusals."""
    refusals = [
        (lambda: TrainConfig(model="small_inception", models_at_once=250), "models_at_once"),
        (lambda: TrainConfig(weight_decay=math.nan), "weight_decay"),
        (lambda: train_job.RunSettings(claim_runs=False, lease_seconds=5.0), "lease_seconds"),
        (lambda: train_job.RunSettings(lease_seconds=math.nan), "lease_seconds"),
        (lambda: train_job.DataSource(image_size=64), "image_size"),
        (lambda: train_job.TrainDesign(TrainConfig(checkpoint_every=1)), "checkpoint_every"),
        (lambda: train_job.TrainDesign(design="drop-t"), "design"),
        (lambda: train_job.TrainPreset("digits_nsi", data=train_job.DataSource("npz:x")),
         "dataset"),
    ]
    for build, parameter in refusals:
        with pytest.raises(ParameterError) as raised:
            build()
        assert raised.value.parameter == parameter
    assert _flag_named("design") == "--subset" and _flag_named("preset") == "--config"


def test_flags_given_build_the_same_job_as_python():
    job = train_job.job_from_flags({"subset_ratio": 0.5, "epochs": 3, "run_ids": "0-3",
                                    "model": "small_inception"})
    expected_config = TrainConfig(model="small_inception", epochs=3, batch_size=128,
                                  lr_schedule="linear", warmup_epochs=15.0 * 3 / 80,
                                  augment="crop_flip", models_at_once=1)
    assert job == train_job.TrainDesign(expected_config, "0.5",
                                        runs=train_job.RunSettings(run_ids="0-3"))
    preset = train_job.job_from_flags({"config": "digits_nsi", "num_runs": 10})
    assert preset == train_job.TrainPreset(
        "digits_nsi", TrainConfig(label_smoothing=0.2),
        runs=train_job.RunSettings(num_runs=10))
    assert preset.data == train_job.DataSource("digits")


def test_building_a_job_loads_no_tensorflow_and_a_bad_flag_is_one_line():
    code = ("import sys; from heldout.app import train; "
            "train.job_from_flags({'epochs': 3, 'subset': 'drop-t', 'targets': 'random:2'}); "
            "assert 'tensorflow' not in sys.modules, 'tensorflow imported'")
    checked = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True,
                             text=True, timeout=60)
    assert checked.returncode == 0, checked.stderr
    refused = subprocess.run([sys.executable, "train.py", "--epochs=0"], cwd=REPO_ROOT,
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1
    assert refused.stderr.strip() == "train.py: error: --epochs=0: expected a positive number"


def test_a_bank_design_trains_with_its_loss_weights(tmp_path):
    """``subset=bank-<p>`` is a design of every example's batch slots (not a ratio):
    run 1 drops 10% of the digits as zero weights, stored in its aux arrays."""

    from heldout.store import runs as runs_lib

    job = train_job.TrainDesign(
        TrainConfig(epochs=1, models_at_once=4, batch_size=64), "bank-0.1",
        runs=train_job.RunSettings(experiment_dir=str(tmp_path), run_ids="0-1",
                                   progress=False))
    assert train_job.train(job).summaries[0].trained == (0, 1)
    weights = runs_lib.load_run(runs_lib.run_dir(str(tmp_path), "bank-0.1", 1))[
        runs_lib.EXAMPLE_WEIGHTS]
    assert (weights == 0).sum() == 135 and (weights[weights != 0] == 1).all()
