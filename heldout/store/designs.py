"""Which training examples each run trains on, derived from seeds alone.

Designs (the names of subset folders):
  * ``"0.7"``: a random subset of that fraction of the training set, new for every run
    (the heldout procedure of Feldman & Zhang);
  * ``"full"``: every training example;
  * ``"drop-<name>"``: every training example except a target set (the other arm of a
    targeted self-influence experiment, `heldout.store.targets`);
  * ``"bank-<p>"`` (``bank-0.01``): the single-model yardstick of metagradients.
    Every run has the same seeds, those of the experiment's base run (initial
    weights, batch order, augmentation: `bank_seeds`, shared by every bank fraction),
    and every training example's batch slots; run 0 is the base run (every loss weight
    1) and run r > 0 drops a random fraction p of the training set as loss weights 0
    (`bank_weights`), stored with the run (``example_weights`` in its aux arrays).

  * ``"<ratio>-reseed<k>"`` (``0.5-reseed1``): the subsets of design ``<ratio>``, run for
    run, trained again with other seeds (initial weights, batch order: replica k >= 1).
    Two trainings of every LDS mask give the noise ceiling of the standard LDS
    protocol (`heldout.estimate.lds.noise_ceiling`).

A run's subset is a pure function of (experiment seed, subset name, run id, number of
training examples), so the same run id trains on the same subset on any machine, and
cluster shards need not coordinate. The derivation uses NumPy's ``SeedSequence`` and
the raw output of ``PCG64``, both of which NumPy keeps stable across releases (unlike
the sampling methods of ``Generator``).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from heldout.errors import ParameterError


def parse_subset_ratio(subset: str) -> float:
    """The training-set fraction of a random-subset design named like ``"0.7"`` (or its
    replica ``"0.7-reseed1"``).

    Raises:
        ParameterError: `subset` is not a number strictly between 0 and 1 (NaN included),
            naming ``subset_ratio``.
    """
    text = str(subset).split(RESEED_INFIX)[0] if RESEED_INFIX in str(subset) else subset
    try:
        ratio = float(text)
    except ValueError:
        raise ParameterError("subset_ratio", "expected a number in (0, 1)",
                             repr(subset)) from None
    if not 0.0 < ratio < 1.0:
        raise ParameterError("subset_ratio", "expected a number in (0, 1)", subset)
    return ratio


FULL = "full"
DROP_PREFIX = "drop-"
BANK_PREFIX = "bank-"
RESEED_INFIX = "-reseed"


def subset_name(ratio: float) -> str:
    """The folder name of a subset ratio, as in the released runs (``0.7``)."""
    return f"{parse_subset_ratio(str(ratio)):g}"


def design_name(subset: str | float) -> str:
    """The canonical folder name of a design: ``"0.7"``, ``"full"`` or ``"drop-<name>"``.

    Raises:
        ParameterError: not a ratio in (0, 1), ``full``, or ``drop-`` followed by a name
            of letters, digits, ``_`` or ``-`` (naming ``subset``).
    """
    text = str(subset)
    if text == FULL:
        return text
    if text.startswith(BANK_PREFIX):
        return f"{BANK_PREFIX}{bank_fraction(text):g}"
    if RESEED_INFIX in text and not text.startswith(DROP_PREFIX):
        base, _, replica = text.partition(RESEED_INFIX)
        if not (replica.isdigit() and int(replica) >= 1):
            raise ParameterError("subset", "expected <ratio>-reseed<k> with a replica k >= 1, "
                                 "e.g. 0.5-reseed1", text)
        return f"{subset_name(parse_subset_ratio(base))}{RESEED_INFIX}{int(replica)}"
    if text.startswith(DROP_PREFIX):
        name = text[len(DROP_PREFIX):]
        if not name or not all(c.isalnum() or c in "_-" for c in name):
            raise ParameterError("subset", "expected drop-<name> with a name of letters, "
                                 "digits, '_' or '-'", text)
        return text
    try:
        return subset_name(float(text))
    except ValueError:
        raise ParameterError("subset", "expected a ratio in (0, 1), 'full', "
                             "'drop-<name>', 'bank-<p>' or '<ratio>-reseed<k>'", text) from None


def drop_target_name(design: str) -> str | None:
    """The target-set name a ``drop-<name>`` design leaves out, or None for any other.

    ``full`` is an arm of a targeted experiment but leaves nothing out, so it has no
    target set (its runs need none); ratio designs have none either. Callers that
    route a design to its trainer use this, never ``design[len("drop-"):]``, which
    reads ``full`` as a drop arm with an empty name.
    """
    design = design_name(design)
    return design[len(DROP_PREFIX):] if design.startswith(DROP_PREFIX) else None


def is_targeted_design(subset: str) -> bool:
    """Whether a design is an arm of a targeted experiment (``full`` or ``drop-<name>``)."""
    return subset == FULL or subset.startswith(DROP_PREFIX)


def is_bank_design(subset: str) -> bool:
    """Whether a design is a metagradient bank (``bank-<p>``)."""
    return subset.startswith(BANK_PREFIX)


def bank_fraction(subset: str) -> float:
    """The dropped fraction p of a bank design ``bank-<p>``.

    Raises:
        ValueError: not ``bank-`` followed by a number in (0, 1).
    """
    try:
        fraction = float(subset[len(BANK_PREFIX):])
    except ValueError:
        fraction = float("nan")
    if not 0.0 < fraction < 1.0:
        raise ParameterError("subset", "expected bank-<p> with a dropped fraction p in "
                             "(0, 1), e.g. bank-0.01", subset)
    return fraction


def bank_weights(num_train: int, subset: str, experiment_seed: int, run_id: int
                 ) -> np.ndarray:
    """Loss weights ``float32 [num_train]`` of run `run_id` of bank design `subset`:
    all 1 for run 0 (the base run), else ``round(p * num_train)`` examples, chosen at
    random for each run, at 0."""
    weights = np.ones(num_train, np.float32)
    if run_id == 0:
        return weights
    size = int(round(bank_fraction(subset) * num_train))
    keys = np.random.PCG64(run_seeds(experiment_seed, subset, run_id).subset).random_raw(num_train)
    weights[np.argsort(keys, kind="stable")[:size]] = 0.0
    return weights


def run_seeds(experiment_seed: int, subset: str, run_id: int) -> RunSeeds:
    """Independent seeds of everything random in one run. The runs of a bank design
    train from its base run's initial weights and batch order (`bank_seeds`): only the
    choice of dropped examples (the ``subset`` seed) is their own."""
    if is_bank_design(subset):
        base = _root_seeds(experiment_seed, BANK_PREFIX, 0)
        return RunSeeds(_root_seeds(experiment_seed, subset, run_id).subset, base.init,
                        base.order)
    if is_reseed_design(subset):  # the ratio design's subset, its own training seeds
        own = _root_seeds(experiment_seed, subset, run_id)
        return RunSeeds(_root_seeds(experiment_seed, reseed_base(subset), run_id).subset,
                        own.init, own.order)
    return _root_seeds(experiment_seed, subset, run_id)


def is_reseed_design(subset: str) -> bool:
    """Whether a design trains another design's subsets again (``0.5-reseed1``)."""
    return RESEED_INFIX in subset and not subset.startswith(DROP_PREFIX)


def reseed_base(subset: str) -> str:
    """The ratio design whose subsets a reseed design trains (``0.5-reseed1`` -> ``0.5``)."""
    return subset.split(RESEED_INFIX)[0]


def bank_seeds(experiment_seed: int) -> RunSeeds:
    """The seeds every run of every bank design trains from (the base run's)."""
    return run_seeds(experiment_seed, f"{BANK_PREFIX}0.5", 0)


def _root_seeds(experiment_seed: int, subset: str, run_id: int) -> RunSeeds:
    root = np.random.SeedSequence([experiment_seed, zlib.crc32(subset.encode()), run_id])
    return RunSeeds(*root.spawn(3))


class RunSeeds(NamedTuple):
    """The seeds of one run, one per random choice it makes."""

    subset: np.random.SeedSequence  # which training examples it trains on
    init: np.random.SeedSequence  # initial weights
    order: np.random.SeedSequence  # batch order


def subset_indices(num_train: int, subset: str, experiment_seed: int, run_id: int,
                   dropped: np.ndarray | None = None) -> np.ndarray:
    """Sorted indices of the training examples run `run_id` of design `subset` trains on.

    For a ratio design ``"0.7"`` this is ``round(0.7 * num_train)`` examples chosen
    uniformly at random without replacement, independently for each run. For ``full``
    it is every example, and for ``drop-<name>`` every example but `dropped`. A bank
    design's runs have every example's batch slots (`bank_weights` zeroes the dropped).

    Raises:
        ValueError: a ``drop-`` design without `dropped` indices, or indices out of range.
    """
    if subset == FULL or is_bank_design(subset):
        return np.arange(num_train, dtype=np.int64)
    if subset.startswith(DROP_PREFIX):
        if dropped is None or not len(dropped):
            raise ParameterError("subset", "needs the target indices to drop "
                                 "(target_indices or targets)", subset)
        dropped = np.asarray(dropped, dtype=np.int64)
        if dropped.min() < 0 or dropped.max() >= num_train:
            raise ParameterError("subset", f"target indices must be in [0, {num_train})",
                                 subset)
        keep = np.ones(num_train, dtype=bool)
        keep[dropped] = False
        return np.flatnonzero(keep).astype(np.int64)
    ratio = parse_subset_ratio(subset)
    size = int(round(ratio * num_train))
    keys = np.random.PCG64(run_seeds(experiment_seed, subset, run_id).subset).random_raw(num_train)
    return np.sort(np.argsort(keys, kind="stable")[:size]).astype(np.int64)


# Run ids are below this bound, so a typo such as 0-3000000000 is refused, not expanded.
MAX_RUN_ID = 1_000_000


def parse_run_ids(text: str, flag: str = "run_ids") -> list[int]:
    """Ids from ``"0-99"``, ``"3,5,8"`` or a mix (``"0-9,20"``), in increasing order.

    Raises:
        ParameterError: the text is not a comma list of ids and inclusive ranges, or an
            id is not below `MAX_RUN_ID` (naming the parameter `flag`).
    """
    ids: set[int] = set()
    try:
        for part in text.split(","):
            first, sep, last = part.strip().partition("-")
            if sep:
                start, stop = int(first), int(last)
                if stop < start:
                    raise ValueError
                _check_run_id_bound(stop, text, flag)
                ids.update(range(start, stop + 1))
            else:
                ids.add(_check_run_id_bound(int(first), text, flag))
    except _RunIdBoundError as e:
        raise ParameterError(flag, str(e), repr(text)) from None
    except ValueError:
        raise ParameterError(flag, "expected non-negative ids and ranges like '0-99' or "
                             "'3,5,8'", repr(text)) from None
    if not ids or min(ids) < 0:
        raise ParameterError(flag, "expected non-negative ids", repr(text))
    return sorted(ids)


class _RunIdBoundError(Exception):
    pass


def _check_run_id_bound(run_id: int, text: str, flag: str) -> int:
    if run_id >= MAX_RUN_ID:
        raise _RunIdBoundError(f"run ids must be below {MAX_RUN_ID:,}")
    return run_id


def format_run_ids(ids: Sequence[int]) -> str:
    """Ids as compact ranges (``"0-3,7"``), the inverse of `parse_run_ids`."""
    ids = sorted(set(ids))
    parts, start = [], None
    for position, value in enumerate(ids):
        if start is None:
            start = value
        if position + 1 == len(ids) or ids[position + 1] != value + 1:
            parts.append(str(start) if start == value else f"{start}-{value}")
            start = None
    return ",".join(parts)


def read_indices(spec: str, flag: str) -> list[int]:
    """Indices from a range list (``"0-99,120"``) or from a file of indices.

    A file (local or gs://) holds integers separated by whitespace or commas; lines
    starting with ``#`` are comments.
    """
    from heldout.store import files  # TensorFlow's file system: only when reading one

    try:
        text = files.read_bytes(spec).decode()
    except files.StoredFileMissing:
        return parse_run_ids(spec, flag)
    except UnicodeDecodeError:
        raise ParameterError(flag, "expected a text file of integer indices", spec) from None
    lines = [line.split("#", 1)[0] for line in text.splitlines()]
    tokens = " ".join(lines).replace(",", " ").split()
    try:
        indices = [int(t) for t in tokens]
    except ValueError:
        raise ParameterError(flag, "expected a file of integer indices", spec) from None
    if not indices or min(indices) < 0:
        raise ParameterError(flag, "expected non-negative indices", spec)
    return indices


def parse_shard(text: str, parameter: str) -> tuple[int, int]:
    """``"i/n"`` as (i, n) with 0 <= i < n (errors name `parameter`)."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise ParameterError(parameter, "expected i/n, e.g. 0/8", repr(text)) from None
    if not 0 <= index < count:
        raise ParameterError(parameter, "expected i/n with 0 <= i < n", text)
    return index, count
