"""Every flag of estimate.py and demo.py, in every mode: taken, or refused naming it.

The flags are read from the CLIs' own absl definitions (each CLI is loaded with flags of
its own, so a flag added later is covered without editing this file), parsed from a
command line as a user types it, and turned into a job exactly as ``main`` does
(`build`), in process and without TensorFlow. For each mode, the table `TAKES` lists
the flags it uses; every other flag must be refused with a `ParameterError` whose
parameter the CLI shows as that flag. A new flag is therefore refused everywhere
until a mode is made to use it (and listed here), so no flag can be silently ignored.
"""

import dataclasses
import functools
import importlib.util
import pathlib
import sys
import types

import absl
import pytest
from absl import flags

from heldout.app import demo as demo_app
from heldout.app import estimate_jobs as jobs
from heldout.errors import ParameterError

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


def load_cli(script: str) -> types.ModuleType:
    """A fresh copy of a CLI module whose flags live in a private `FlagValues`."""
    private = flags.FlagValues()
    proxy = types.ModuleType("absl.flags")
    proxy.__dict__.update(flags.__dict__)
    for name in dir(flags):
        if name.startswith("DEFINE"):
            setattr(proxy, name, functools.partial(getattr(flags, name),
                                                   flag_values=private))
    proxy.FLAGS = private
    spec = importlib.util.spec_from_file_location(f"_cli_{script[:-3]}", REPO_ROOT / script)
    module = importlib.util.module_from_spec(spec)
    saved = absl.flags
    absl.flags = proxy
    try:
        spec.loader.exec_module(module)
    finally:
        absl.flags = saved
    module.PRIVATE_FLAGS = private
    return module


@functools.cache
def cli(script: str) -> types.ModuleType:
    return load_cli(script)


def cli_flags(script: str) -> list[str]:
    return sorted(h.name for h in vars(cli(script)).values() if isinstance(h, flags.FlagHolder))


def build(script: str, args: list[str]):
    """The job ``python <script> <args>`` builds (or the error it stops with)."""
    module = cli(script)
    module.PRIVATE_FLAGS.unparse_flags()  # nothing given yet
    module.PRIVATE_FLAGS([script, *args])
    return module.build(), module


# A valid value of each flag, as typed; a flag missing here gets one by its type.
SAMPLES = {
    "experiment_dir": "--experiment_dir=e", "fetch_dir": "--fetch_dir=f",
    "fetch_checkpoints": "--fetch_checkpoints=0.7", "fetch_run_ids": "--fetch_run_ids=0-2",
    "md5": "--md5=" + "0" * 32, "estimator": "--estimator=self_influence",
    "subset": "--subset=0.7", "metric": "--metric=margin", "min_runs": "--min_runs=2",
    "test": "--test=welch", "confidence": "--confidence=0.9", "alpha": "--alpha=0.1",
    "fdr": "--fdr", "fdr_untestable": "--fdr_untestable=count",
    "influence_output": "--influence_output=topk", "top_k": "--top_k=3",
    "threshold": "--threshold=0.2", "eval_indices": "--eval_indices=0-9",
    "eval_shard": "--eval_shard=1/4", "targets": "--targets=t", "all": "--all",
    "plan": "--plan", "effect": "--effect=0.3", "power": "--power=0.9",
    "run_id": "--run_id=1", "measurement": "--measurement=margin",
    "damping": "--damping=0.1", "damping_factor": "--damping_factor=0.2",
    "fisher": "--fisher=true", "fisher_seed": "--fisher_seed=3",
    "fisher_draws": "--fisher_draws=2", "layers": "--layers=_layers/0",
    "gradient_batch_size": "--gradient_batch_size=16", "projection_dim": "--projection_dim=32",
    "projection_seed": "--projection_seed=2", "projection": "--projection=gaussian",
    "lambda_reg": "--lambda_reg=0.5,2", "reweighting": "--reweighting=per_model",
    "trak_runs": "--trak_runs=0-1", "factors_path": "--factors_path=f.npz",
    "output": "--output=out.npz", "csv_dir": "--csv_dir=csv", "plot_dir": "--plot_dir=plots",
    "lds_subset": "--lds_subset=0.5", "lds_runs": "--lds_runs=0-3",
    "merge": "--merge=a.npz,b.npz", "compare_to": "--compare_to=pub.npz",
    "dataset": "--dataset=digits", "data_dir": "--data_dir=d", "max_classes": "--max_classes=20",
    "top": "--top=5", "verify": "--verify", "progress": "--noprogress",
    # demo.py
    "run_dir": "--run_dir=r", "arch": "--arch=mlp", "width": "--width=0.5",
    "records": "--records=x-*", "num_classes": "--num_classes=3", "image_size": "--image_size=8",
    "max_examples": "--max_examples=7", "split": "--split=train",
}
# What a flag needs beside it to be taken (it is refused alone in every mode).
NEEDS = {"fetch_run_ids": ["--fetch_checkpoints=0.7"], "lds_runs": ["--lds_subset=0.5"],
         "fdr_untestable": ["--fdr"], "imagenet_index": ["--compare_to=pub.npz"],
         "effect": ["--plan"], "power": ["--plan"]}
# Flags that choose the mode: added to another mode's command, they change it, and the
# refusal may name the other mode's flag.
MODE_FLAGS = {"verify", "targets", "plan", "merge", "estimator", "records"}

SOURCE = {"experiment_dir", "fetch_dir", "fetch_checkpoints", "fetch_run_ids", "md5",
          "progress"}
SCORES = {"subset", "eval_indices", "eval_shard", "output", "lds_subset", "lds_runs"}
DATA = {"dataset", "data_dir", "max_classes"}
GRADIENT = SOURCE | SCORES | DATA | {"run_id", "top", "measurement", "layers",
                                     "gradient_batch_size"}
REPORT = {"output", "csv_dir", "plot_dir", "top", "compare_to", "imagenet_index"}

# mode -> (script, command choosing it, job type, flags it takes besides that command).
TAKES = {
    "verify": ("estimate.py", ["--verify"], jobs.VerifyJob, SOURCE),
    "targeted": ("estimate.py", ["--targets=t"], jobs.TargetedJob, SOURCE | DATA | {
        "estimator", "metric", "test", "confidence", "alpha", "min_runs", "all", "plan",
        "effect", "power", "output", "csv_dir", "plot_dir"}),
    "plan": ("estimate.py", ["--plan"], jobs.PlanJob, SOURCE | {"metric", "alpha",
                                                                 "effect", "power"}),
    "merge": ("estimate.py", ["--merge=a.npz,b.npz"], jobs.MergeJob,
              DATA | {"output", "csv_dir", "top", "compare_to", "imagenet_index"}),
    "estimates": ("estimate.py", ["--estimator=all"], jobs.EstimatesJob,
                  SOURCE | SCORES | DATA | REPORT | {
                      "metric", "min_runs", "test", "confidence", "alpha", "fdr",
                      "fdr_untestable", "influence_output", "top_k", "threshold"}),
    "memorization": ("estimate.py", ["--estimator=memorization"], jobs.EstimatesJob,
                     SOURCE | DATA | REPORT | {"subset", "min_runs", "test", "confidence",
                                               "alpha", "fdr", "fdr_untestable"}),
    "cscore": ("estimate.py", ["--estimator=cscore"], jobs.EstimatesJob,
               SOURCE | DATA | REPORT | {"subset", "min_runs"}),
    "datamodels": ("estimate.py", ["--estimator=datamodel"], jobs.DatamodelsJob,
                   SOURCE | SCORES | {"metric", "influence_output"}),
    "datamodels_topk": ("estimate.py", ["--estimator=datamodel", "--influence_output=topk"],
                        jobs.DatamodelsJob,
                        SOURCE | (SCORES - {"lds_subset", "lds_runs"}) | {"metric", "top_k"}),
    "tracin": ("estimate.py", ["--estimator=tracin"], jobs.GradientJob,
               GRADIENT | {"projection_dim", "projection_seed"}),
    "influence_functions": ("estimate.py", ["--estimator=if_ekfac"], jobs.GradientJob,
                            GRADIENT | {"damping", "damping_factor", "fisher", "fisher_seed",
                                        "fisher_draws", "factors_path"}),
    "trak": ("estimate.py", ["--estimator=trak"], jobs.TRAKJob,
             SOURCE | SCORES | DATA | {"run_id", "trak_runs", "projection_dim",
                                       "projection_seed", "projection", "lambda_reg",
                                       "reweighting", "layers", "gradient_batch_size"}),
    "metagradient": ("estimate.py", ["--estimator=metagradient"], jobs.MetagradientJob,
                     SOURCE | SCORES | DATA | {"run_id", "checkpoint_interval"}),
    "demo": ("demo.py", ["--run_dir=r"], demo_app.DemoJob,
             {"arch", "width", "split"} | DATA),
    "demo_streamed": ("demo.py", ["--run_dir=r", "--records=x-*"], demo_app.StreamingDemoJob,
                      {"arch", "width", "split", "num_classes", "image_size", "max_examples",
                       "progress"}),
}
# Taken only together with another flag of the mode's command.
NEEDS_IN_MODE = {("merge", "plot_dir"): ["--compare_to=pub.npz"],
                 ("trak", "run_id"): []}
# A mode flag that turns a command into another valid mode: -> that mode's job type.
SWITCHES = {("plan", "targets"): jobs.TargetedJob,  # the targeted report with its plan
            ("demo", "records"): demo_app.StreamingDemoJob}


def _sample(script: str, flag: str) -> str:
    if flag in SAMPLES:
        return SAMPLES[flag]
    if isinstance(cli(script).PRIVATE_FLAGS[flag], flags.BooleanFlag):
        return f"--{flag}"
    return f"--{flag}=2"


CASES = [(mode, flag) for mode, (script, base, _, _) in TAKES.items()
         for flag in cli_flags(script) if f"--{flag}" not in {b.split("=")[0] for b in base}]


@pytest.mark.parametrize("mode, flag", CASES)
def test_every_flag_is_taken_or_refused_by_name(mode, flag):
    script, base, job_type, takes = TAKES[mode]
    sample = _sample(script, flag)
    if (mode, flag) in SWITCHES:
        job, _ = build(script, [*base, sample])
        assert type(job) is SWITCHES[mode, flag], job
        return
    if flag in takes:
        extra = NEEDS_IN_MODE.get((mode, flag), NEEDS.get(flag, []))
        job, _ = build(script, [*base, sample, *extra])
        assert type(job) is job_type, job
        return
    with pytest.raises(ParameterError) as error:
        build(script, [*base, sample])
    shown = cli(script).FLAG_OF(error.value.parameter)
    named = {f"--{flag}"} | ({b.split("=")[0] for b in base} if flag in MODE_FLAGS else set())
    assert shown in named, f"{mode}: {sample} refused as {shown}: {error.value}"


def test_every_flag_has_a_mode_that_takes_it():
    """The table is not vacuous: each flag of each CLI is used by some mode."""
    for script in ("estimate.py", "demo.py"):
        taken = set().union(*(takes | {b[2:].split("=")[0] for b in base}
                              for s, base, _, takes in TAKES.values() if s == script))
        assert set(cli_flags(script)) - {"run_dir"} <= taken, script


def test_a_flag_the_mode_ignores_would_fail_this_test(monkeypatch):
    """If the targeted report took --fdr silently, the refusal check above fails."""
    original = jobs._targeted

    def lenient(settings, source):
        settings.pop("fdr")
        return original(settings, source)

    monkeypatch.setattr(jobs, "_targeted", lenient)
    with pytest.raises(pytest.fail.Exception, match="DID NOT RAISE"):
        test_every_flag_is_taken_or_refused_by_name("targeted", "fdr")


def test_defaults_have_one_owner_the_configs():
    """Nothing given: every setting is its config's default (targeted report: the
    published log-odds, z test, alpha 0.01, 99%; estimates: correctness, Welch, 0.05,
    95%)."""
    from heldout.estimate.config import EstimateConfig, TargetedConfig

    assert jobs.estimate_job({}).config == EstimateConfig()
    targeted = jobs.estimate_job({"targets": "t"})
    assert targeted.config == TargetedConfig()
    assert (targeted.config.metric, targeted.config.test, targeted.config.alpha,
            targeted.config.confidence) == ("logodds", "z", 0.01, 0.99)
    given = jobs.estimate_job({"targets": "t", "metric": "margin", "alpha": 0.2,
                               "confidence": 0.5, "plan": True})
    assert (given.config.metric, given.config.alpha, given.config.confidence) == \
        ("margin", 0.2, 0.5)
    assert (given.plan.metric, given.plan.alpha) == ("margin", 0.2)  # the report's


def test_a_python_caller_gets_the_cli_validation():
    """The same refusals name parameters for a Python caller (flags for the CLI)."""
    with pytest.raises(ParameterError, match="not a setting of estimators=memorization") \
            as error:
        jobs.estimate_job({"damping": 1.0})
    assert error.value.parameter == "damping"
    with pytest.raises(ParameterError) as error:
        jobs.estimate_job({"min_runs": -1})
    assert error.value.parameter == "min_runs"
    job, module = build("estimate.py", ["--estimator=trak", "--projection=none"])
    assert job.config.projection_dim is None  # TRAK without projection is reachable
    assert module.FLAG_OF("batch_size") == "--gradient_batch_size"


def test_the_estimator_error_lists_every_valid_value():
    with pytest.raises(ParameterError) as error:
        build("estimate.py", ["--estimator=nope"])
    for value in jobs.ESTIMATOR_CHOICES:
        assert value in error.value.message


def test_jobs_are_frozen():
    job = jobs.estimate_job({"estimators": ("tracin",), "measurement": "margin"})
    assert job.config.measurement == "margin"
    with pytest.raises(dataclasses.FrozenInstanceError):
        job.run_id = 3


def test_building_a_job_imports_no_tensorflow():
    """Flags are checked before TensorFlow loads (errors within a second)."""
    import subprocess

    code = ("import sys; sys.argv = ['estimate.py', '--estimator=trak', '--lambda_reg=1,2']; "
            "from absl import flags; import estimate; flags.FLAGS(sys.argv); estimate.build(); "
            "import heldout.app.demo; print('tensorflow' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.stdout.strip() == "False", result.stderr


@pytest.mark.parametrize("script", ["estimate.py", "demo.py"])
def test_help_cites_only_files_that_ship(script):
    """Issue 25: --help named a missing heldout/analysis.py and a SPEC that does not ship."""
    import re

    module = cli(script)
    text = module.__doc__ + "\n".join(module.PRIVATE_FLAGS[name].help
                                      for name in cli_flags(script))
    assert "SPEC" not in text
    for path in re.findall(r"heldout/[\w/]+\.py", text):
        assert (REPO_ROOT / path).is_file(), path


@pytest.mark.parametrize("given, parameter", [
    ({"estimators": ("influence",), "lds_subset": "../../etc"}, "lds_subset"),
    ({"estimators": ("trak",), "lds_subset": "0.5/.."}, "lds_subset"),
    ({"subsets": ("0.7", "../x")}, "subsets"),
    ({"estimators": ("datamodel",), "subsets": ("..",)}, "subsets"),
])
def test_folders_read_stay_inside_the_experiment(given, parameter):
    """Issue 24: --lds_subset=../../etc read outside the experiment; it is refused by
    name before anything is read."""
    with pytest.raises(ParameterError) as error:
        jobs.estimate_job(given)
    assert error.value.parameter == parameter
