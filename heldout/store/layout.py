"""Every path of an experiment directory, in one place.

```
<experiment_dir>/
  experiment.json                     settings and data fingerprint (experiment_info.py)
  <subset>/                           "0.7", "full" or "drop-<name>"
    <run_id>/aux_arrays.npz           complete exactly when this exists
    <run_id>/run.json
    <run_id>/checkpoints/ckpt-<epoch>.index, .data-*
    .corrupt/<run_id>-<time>.npz      damaged aux arrays moved aside
  targets/<name>.json                 target sets of targeted experiments
  .claims/<subset>/<run_id>.json      which worker trains which run now
  estimates-<subset>.npz              default outputs of estimate.py
  self_influence-<name>.npz
  <method>-<subset>-run<id>.npz
  plots/, tables/                     default folders of figures and CSV tables
```
No other module builds these paths; they ask `ExperimentDir` and `RunDir`. Paths are
joined with ``tf.io.gfile.join`` so ``gs://`` roots work. Every name joined below the
root (a subset, a target set's name, a method) must be one path component
(`check_component`), so a name read from a file or typed by a user (``../../etc``,
``x/../../..``) never reaches outside the experiment.
"""

from __future__ import annotations

import dataclasses
import time

import tensorflow as tf

from heldout.errors import ParameterError

EXPERIMENT_INFO_FILENAME = "experiment.json"
AUX_FILENAME = "aux_arrays.npz"
RUN_INFO_FILENAME = "run.json"
CHECKPOINT_DIRNAME = "checkpoints"
CHECKPOINT_NAME = "ckpt"  # checkpoints are ckpt-<epoch>
CORRUPT_DIRNAME = ".corrupt"
RETRAIN_DIRNAME = ".retrain"  # aux arrays of complete runs set aside while retrained
CLAIMS_DIRNAME = ".claims"
TARGETS_DIRNAME = "targets"
PLOTS_DIRNAME = "plots"
TABLES_DIRNAME = "tables"


_GLOB = "*"


def check_component(name: object, parameter: str, allow_glob: bool = False) -> str:
    """Refuses a name that is not exactly one path component; returns it.

    Refused: empty, ``.``, ``..``, anything with ``/``, ``\\`` or a NUL byte, and
    surrounding spaces. With `allow_glob`, ``"*"`` (every entry) is accepted.

    Raises:
        ParameterError: naming `parameter`.
    """
    if allow_glob and name == _GLOB:
        return name
    if (not isinstance(name, str) or name in ("", ".", "..") or name != name.strip()
            or any(c in name for c in "/\\\0")):
        raise ParameterError(parameter, "expected a single folder or file name (no '/', "
                             "'\\', '..' or empty name), so that it stays inside the "
                             "experiment", name)
    return name


@dataclasses.dataclass(frozen=True)
class RunDir:
    """The paths of one run folder."""

    path: str

    @property
    def aux_arrays(self) -> str:
        return tf.io.gfile.join(self.path, AUX_FILENAME)

    @property
    def run_info(self) -> str:
        return tf.io.gfile.join(self.path, RUN_INFO_FILENAME)

    @property
    def checkpoints(self) -> str:
        """Folder of the run's checkpoints."""
        return tf.io.gfile.join(self.path, CHECKPOINT_DIRNAME)

    def checkpoint(self, epoch: int | str) -> str:
        """Prefix of the checkpoint saved after `epoch` (``"*"`` for a glob)."""
        return tf.io.gfile.join(self.checkpoints, f"{CHECKPOINT_NAME}-{epoch}")

    @property
    def checkpoint_indexes(self) -> str:
        """Glob pattern of every checkpoint's ``.index`` file."""
        return self.checkpoint("*") + ".index"

    @property
    def subset_dir(self) -> str:
        return self.path.rstrip("/").rpartition("/")[0]

    @property
    def run_id(self) -> str:
        return self.path.rstrip("/").rpartition("/")[2]

    @property
    def set_aside(self) -> str:
        """Where ``train.py --retrain_complete`` keeps this run's earlier aux arrays while
        it is retrained: ``<subset>/.retrain/<id>.npz``."""
        return tf.io.gfile.join(self.subset_dir, RETRAIN_DIRNAME, f"{self.run_id}.npz")

    def corrupt(self) -> str:
        """Where damaged aux arrays of this run are moved: ``<subset>/.corrupt/<id>-<time>``."""
        return tf.io.gfile.join(self.subset_dir, CORRUPT_DIRNAME,
                                f"{self.run_id}-{int(time.time())}.npz")


@dataclasses.dataclass(frozen=True)
class ExperimentDir:
    """The paths of one experiment directory (local or gs://)."""

    root: str

    def __post_init__(self):
        if not str(self.root).strip():
            raise ValueError("experiment_dir: expected a directory, got an empty path")

    @property
    def experiment_info(self) -> str:
        return tf.io.gfile.join(self.root, EXPERIMENT_INFO_FILENAME)

    def subset(self, subset: str) -> str:
        """Folder of the runs of design `subset`."""
        return tf.io.gfile.join(self.root, check_component(subset, "subset"))

    def run(self, subset: str, run_id: int) -> RunDir:
        return RunDir(tf.io.gfile.join(self.subset(subset),
                                       check_component(str(run_id), "run_id")))

    def aux_arrays_glob(self, subset: str) -> str:
        """Glob pattern of the aux arrays of every run of `subset`."""
        return tf.io.gfile.join(self.subset(subset), _GLOB, AUX_FILENAME)

    @property
    def targets_dir(self) -> str:
        return tf.io.gfile.join(self.root, TARGETS_DIRNAME)

    def targets(self, name: str) -> str:
        """File of the target set `name` (``"*"`` for a glob)."""
        return tf.io.gfile.join(self.targets_dir,
                                f"{check_component(name, 'targets', allow_glob=True)}.json")

    def claims(self, subset: str) -> str:
        """Folder of the claim files of the runs of `subset`."""
        return tf.io.gfile.join(self.root, CLAIMS_DIRNAME, check_component(subset, "subset"))

    def estimates(self, subset: str | None, part: str = "") -> str:
        """Default output of ``estimate.py`` (``cscore`` when estimated across subsets);
        a result on part of the test examples names it (`part_name`), so it never takes
        the whole-set name."""
        name = check_component(subset, "subset") if subset else "cscore"
        return tf.io.gfile.join(self.root, f"estimates-{name}{part}.npz")

    def targeted_report(self, targets: str) -> str:
        """Default output of the targeted self-influence report of target set `targets`."""
        return tf.io.gfile.join(self.root,
                                f"self_influence-{check_component(targets, 'targets')}.npz")

    def attribution(self, method: str, subset: str, run_id: int) -> str:
        """Default output of a gradient-based method on one run."""
        name = f"{check_component(method, 'method')}-{check_component(subset, 'subset')}"
        return tf.io.gfile.join(self.root, f"{name}-run{run_id}.npz")

    @property
    def plots(self) -> str:
        """Default folder of figures."""
        return tf.io.gfile.join(self.root, PLOTS_DIRNAME)

    @property
    def tables(self) -> str:
        """Default folder of CSV tables."""
        return tf.io.gfile.join(self.root, TABLES_DIRNAME)


def claim_file(claims_dir: str, run_id: int) -> str:
    """The claim file of `run_id` in a folder of `ExperimentDir.claims`."""
    return tf.io.gfile.join(claims_dir, f"{run_id}.json")


def part_name(eval_indices: str | None = None, shard: tuple[int, int] | None = None) -> str:
    """The suffix of a default output computed on part of the test examples:
    ``-eval<selection>`` for chosen examples (a range list as given, or a file's name),
    ``-shard<i>of<n>`` for the i-th of n shards; empty for the whole test set."""
    part = ""
    if eval_indices:
        selection = eval_indices.rstrip("/").rsplit("/", 1)[-1].removesuffix(".txt")
        part += "-eval" + "".join(c if c.isalnum() or c in "-." else "_" for c in selection)
    if shard is not None:
        part += f"-shard{shard[0]}of{shard[1]}"
    return part


def output_file(directory: str, name: str, extension: str) -> str:
    """``<directory>/<name>.<extension>``: a file of an output folder (tables, figures)."""
    return tf.io.gfile.join(directory, f"{name}.{extension}")
