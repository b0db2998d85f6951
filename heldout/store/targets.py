"""Target sets of targeted self-influence experiments: choosing, naming, storing them.

A targeted experiment trains one arm on the full training set (``full``) and one on
the training set minus a target set (``drop-<name>``), then asks, per target example,
whether including it raised or lowered its own margin. A target set has named groups
(``random``, ``easy``, or the user's own), so the report can compare them.

Target sets are stored as ``<experiment_dir>/targets/<name>.json`` (training indices of
the data set as loaded, i.e. positions in TFDS file order) so an experiment can be
re-run and cited.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

from heldout.data.dataset import Dataset
from heldout.errors import ParameterError
from heldout.store import designs as subsets_lib
from heldout.store import files
from heldout.store import layout as layout_lib

# The target sets of the published negative-self-influence experiment on CIFAR-10, in
# the original CIFAR-10 training order (data_batch_1..5, as torchvision loads it).
CIFAR10_ORIGINAL_TARGETS = {
    "random20": tuple(range(20)),
    "easy20": (45114, 47798, 43746, 49106, 47082, 44095, 49524, 41014, 49159, 44279,
               45927, 40141, 47731, 46440, 49015, 49690, 46836, 43512, 43189, 49320),
}
# Named built-in sets: name -> groups of original CIFAR-10 indices.
BUILTIN_TARGETS = {
    "random20": {"random": CIFAR10_ORIGINAL_TARGETS["random20"]},
    "easy20": {"easy": CIFAR10_ORIGINAL_TARGETS["easy20"]},
    "cifar10_nsi": {"random": CIFAR10_ORIGINAL_TARGETS["random20"],
                    "easy": CIFAR10_ORIGINAL_TARGETS["easy20"]},
}
CHOOSERS = ("random", "easy")


@dataclasses.dataclass(frozen=True)
class TargetSet:
    """Training examples to drop, in named groups.

    Attributes:
        name: the set's name; its drop arm is the subset folder ``drop-<name>``.
        groups: group name -> training indices (positions in the loaded data set).
        provenance: how the set was chosen (for citing and re-running).
    """

    name: str
    groups: dict[str, tuple[int, ...]]
    provenance: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        # The name becomes a file (targets/<name>.json) and a folder (drop-<name>): a name
        # read from a file must not lead outside the experiment.
        layout_lib.check_component(self.name, "name")
        if not all(c.isalnum() or c in "_-" for c in self.name):
            raise ParameterError("name", "expected letters, digits, '_' or '-' (it "
                                 "names the folder drop-<name>)", self.name)

    @property
    def indices(self) -> np.ndarray:
        """Every target index, sorted, each once."""
        return np.unique(np.concatenate([np.asarray(g, np.int64) for g in self.groups.values()]))

    @property
    def drop_subset(self) -> str:
        return f"{subsets_lib.DROP_PREFIX}{self.name}"

    def group_of(self) -> dict[int, str]:
        """Index -> the first group it belongs to."""
        owner: dict[int, str] = {}
        for group, indices in self.groups.items():
            for index in indices:
                owner.setdefault(int(index), group)
        return owner


def targets_path(experiment_dir: str, name: str) -> str:
    """The file of target set `name` of an experiment (``"*"`` for a glob)."""
    return layout_lib.ExperimentDir(experiment_dir).targets(name)


def save_targets(experiment_dir: str, targets: TargetSet) -> str:
    """Writes the target set beside the runs (atomically); returns its path."""
    path = targets_path(experiment_dir, targets.name)
    content = {"name": targets.name, "provenance": targets.provenance,
               "groups": {g: [int(i) for i in v] for g, v in targets.groups.items()}}
    files.write_json(path, content, sort_keys=False)  # groups keep their order
    return path


def load_targets(path: str) -> TargetSet:
    """Reads a target set file written by `save_targets`.

    Raises:
        ValueError: the file is missing or not a target set.
    """
    try:
        content = files.read_json(path)
        groups = {str(g): tuple(int(i) for i in v) for g, v in content["groups"].items()}
        return TargetSet(name=str(content["name"]), groups=groups,
                         provenance=content.get("provenance", {}))
    except files.StoredFileMissing:
        raise ParameterError("targets", "file not found", path) from None
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ParameterError("targets", f"not a target set file ({e})", path) from None


def find_targets(experiment_dir: str, spec: str) -> TargetSet:
    """A stored target set by file path or by name (``<experiment_dir>/targets/<name>.json``).

    Raises:
        ValueError: no such file.
    """
    if tf.io.gfile.exists(spec):
        return load_targets(spec)
    path = targets_path(experiment_dir, spec)
    if tf.io.gfile.exists(path):
        return load_targets(path)
    stored = tf.io.gfile.glob(targets_path(experiment_dir, "*"))
    names = ", ".join(p.rsplit("/", 1)[1][:-len(".json")] for p in stored) or "none"
    raise ParameterError("targets", f"neither a file nor a target set of {experiment_dir} "
                         f"(stored: {names})", spec)


def builtin_targets(name: str, data: Dataset) -> TargetSet:
    """A built-in CIFAR-10 target set mapped to positions of the loaded data set.

    The published indices are in the original CIFAR-10 order; TFDS stores CIFAR-10 in
    another order and gives each example's original position in its ``id`` feature
    (``train_<original index>``), exposed as ``Dataset.original_index_train``.

    Raises:
        ValueError: unknown name, or the data set has no original indices / lacks some.
    """
    if name not in BUILTIN_TARGETS:
        raise ParameterError("target_indices", f"not a built-in set "
                             f"({', '.join(BUILTIN_TARGETS)})", name)
    if data.original_index_train is None:
        raise ParameterError("target_indices", "the built-in sets are CIFAR-10 indices in "
                             f"the original order; {data.name} has no original indices", name)
    position = {int(o): p for p, o in enumerate(data.original_index_train)}
    groups = {}
    for group, originals in BUILTIN_TARGETS[name].items():
        missing = [o for o in originals if o not in position]
        if missing:
            raise ParameterError("target_indices", f"original indices {missing[:5]} are not "
                                 f"in {data.name}", name)
        groups[group] = tuple(position[o] for o in originals)
    return TargetSet(name=name, groups=groups,
                     provenance={"builtin": name, "original_indices": {
                         g: list(v) for g, v in BUILTIN_TARGETS[name].items()}})


def parse_index_list(spec: str, flag: str = "target_indices") -> list[int]:
    """Indices from a comma list / ranges (``"3,5,10-12"``) or a file of indices."""
    return subsets_lib.read_indices(spec, flag)


def choose_targets(spec: str, num_train: int, seed: int, name: str,
                   pilot_margins: np.ndarray | None = None) -> TargetSet:
    """Chooses target groups from ``"random:20,easy:20"``.

    ``random:n`` draws n training examples uniformly (seeded by the experiment seed);
    ``easy:n`` takes the n with the highest mean margin over the pilot runs
    (`pilot_margins`, ``[runs, num_train]``), excluding examples already chosen.

    Raises:
        ValueError: a malformed spec, or ``easy`` without pilot margins.
    """
    chosen: dict[str, tuple[int, ...]] = {}
    taken: set[int] = set()
    provenance: dict = {"spec": spec, "seed": seed}
    for part in spec.split(","):
        kind, _, count_text = part.strip().partition(":")
        if kind not in CHOOSERS or not count_text.isdigit() or int(count_text) < 1:
            raise ParameterError("targets", "expected parts like random:20 or easy:20", spec)
        count = int(count_text)
        if kind in chosen:
            raise ParameterError("targets", f"{kind} appears twice; give each kind once", spec)
        available = np.array([i for i in range(num_train) if i not in taken])
        if count > len(available):
            raise ParameterError("targets", f"{count} {kind} examples requested, "
                                 f"{len(available)} available", spec)
        if kind == "random":
            rng = np.random.default_rng(np.random.SeedSequence([seed, 0x7A26E7]))
            picked = np.sort(rng.choice(available, size=count, replace=False))
        else:
            if pilot_margins is None:
                raise ParameterError("targets", "easy examples need pilot runs with margins "
                                     "(train some first, or give pilot_runs)", spec)
            mean_margin = np.asarray(pilot_margins, np.float64).mean(axis=0)[available]
            picked = available[np.argsort(-mean_margin, kind="stable")[:count]]
            provenance["pilot_runs"] = int(np.shape(pilot_margins)[0])
        chosen[kind] = tuple(int(i) for i in picked)
        taken.update(chosen[kind])
    return TargetSet(name=name, groups=chosen, provenance=provenance)
