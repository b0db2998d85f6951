"""Estimates computed in shards of the test set, merged into the one-machine result.

``estimate.py --eval_shard=i/n`` computes influence for the i-th of n parts of the test
examples (`EstimateConfig.eval_shard`), so n machines share the work; memorization,
self-influence and C-scores do not depend on the test examples, so every part holds them
whole. `merge_estimates` checks that the parts belong together (same experiment, subset,
runs and settings; the same memorization and C-scores) and cover every test example
exactly once, then joins the influence arrays in test order; `merge_estimate_files`
does the same for the parts' files. The result is what a single
``estimate.py`` run writes: with the correctness metric the block products are sums of
0/1 values, exact in float32, so the merged file is equal to it bit for bit (tested).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from heldout.estimate import estimators as estimators_lib
from heldout.estimate.pipeline import Estimates, InfluenceResult, highest_pairs
from heldout.store import files

# Results that do not depend on the test examples: every part must hold the same.
_WHOLE_RESULTS = ("memorization", "self_influence", "cscore")


def merge_estimates(parts: Sequence[Estimates], names: Sequence[str] | None = None
                    ) -> Estimates:
    """Joins the `parts` of a sharded estimate (``eval_shard`` 0/n .. n-1/n) into one.

    Args:
        parts: the estimates of each shard, in any order.
        names: what to call each part in messages (e.g. its file); default ``part <i>``.

    Returns:
        The `Estimates` a single run with the same settings and no ``eval_shard`` gives.

    Raises:
        ValueError: no parts; parts from different experiments, subsets, runs or
            settings (names the first part that differs and how); a part without
            ``eval_shard`` or influence; a shard missing, given twice, or test examples
            covered twice (named).
    """
    if not parts:
        raise ValueError("parts: nothing to merge")
    names = list(names) if names is not None else [f"part {i}" for i in range(len(parts))]
    if len(names) != len(parts):
        raise ValueError(f"names has {len(names)} entries for {len(parts)} parts")
    first, first_name = parts[0], names[0]
    for part, name in zip(parts, names, strict=True):
        check_values(part, name)
        if part.config.eval_shard is None:
            raise ValueError(f"{name}: not a shard (computed without eval_shard)")
        if part.influence is None:
            raise ValueError(f"{name}: has no influence estimate to merge")
        _check_same(first, first_name, part, name)
    count = first.config.eval_shard[1]
    by_shard: dict[int, tuple[Estimates, str]] = {}
    for part, name in zip(parts, names, strict=True):
        index, n = part.config.eval_shard
        if n != count:
            raise ValueError(f"{name}: is shard {index}/{n}, {first_name} is one of {count}")
        if index in by_shard:
            raise ValueError(f"{name} and {by_shard[index][1]}: both are shard {index}/{n}")
        by_shard[index] = (part, name)
    missing = [i for i in range(count) if i not in by_shard]
    if missing:
        raise ValueError(f"parts: shard(s) {', '.join(f'{i}/{count}' for i in missing)} "
                         "missing")
    ordered = [by_shard[i] for i in range(count)]
    _check_coverage(ordered, first.config.eval_indices)
    influence = _merge_influence([p.influence for p, _ in ordered], first.config.num_pairs)
    seconds = dict(first.seconds)
    seconds["influence"] = sum(p.seconds.get("influence", 0.0) for p, _ in ordered)
    return dataclasses.replace(first, influence=influence, seconds=seconds,
                               config=dataclasses.replace(first.config, eval_shard=None))


def merge_estimate_files(paths: Sequence[str]) -> Estimates:
    """`merge_estimates` of the estimate files at `paths` (written by ``estimate.py
    --eval_shard=i/n``), named by their paths in messages.

    Raises:
        ValueError: a file cannot be read as estimates, or the parts do not merge (see
            `merge_estimates`).
    """
    from heldout.estimate import export  # the save/load pair of estimate files

    parts = []
    for path in paths:
        try:
            parts.append(export.load_estimates(path))
        except files.StoredFileError as e:
            raise ValueError(str(e).splitlines()[0]) from None
        except Exception as e:  # noqa: BLE001 (a malformed part: missing keys, bad meta)
            raise ValueError(f"{path}: not a readable estimates part ({type(e).__name__}: "
                             f"{str(e).splitlines()[0] if str(e) else 'malformed'})") from None
    return merge_estimates(parts, names=list(paths))


def check_values(estimates: Estimates, name: str) -> None:
    """Refuses estimates whose values no computation of ours can give.

    NaN is what an estimate is where too few runs trained on, or held out, an example;
    it is accepted there (for influence: whole rows of the dense matrix, one per
    training example, since the in/out counts depend on the training example only; in
    the top-k, ``-inf`` marks "no score"). Infinite values, NaN entries of a top-k list
    or scattered in a row, and, with the correctness metric (0/1 values), influence or
    self-influence outside ``[-1, 1]`` and C-scores outside ``[0, 1]`` are refused.

    Raises:
        ValueError: one line naming `name`, the array and the first bad entry.
    """
    bounded = estimates.config.metric == "correctness"

    def check(array: np.ndarray | None, what: str, low: float, high: float,
              allow_nan: bool = True) -> None:
        if array is None:
            return
        values = np.asarray(array, np.float64)
        bad = np.isinf(values) if allow_nan else ~np.isfinite(values)
        if bounded:
            with np.errstate(invalid="ignore"):
                bad |= (values < low - 1e-6) | (values > high + 1e-6)
        if bad.any():
            position = np.unravel_index(np.flatnonzero(bad)[0], values.shape)
            where = ", ".join(map(str, position))
            raise ValueError(f"{name}: {what}[{where}] is {values[position]}, impossible "
                             f"for {estimates.config.metric} estimates (a damaged or edited "
                             "part?)")

    for result in ("memorization", "self_influence"):
        estimate = getattr(estimates, result)
        if estimate is not None:
            check(estimate.score, f"{result} score", -1.0, 1.0)
    if estimates.cscore is not None:
        check(estimates.cscore.train, "cscore train", 0.0, 1.0)
        check(estimates.cscore.test, "cscore test", 0.0, 1.0)
    influence = estimates.influence
    if influence is None:
        return
    scored = influence.top.train >= 0
    top = np.where(scored, influence.top.score, 0.0)
    check(top, "influence top-k score", -1.0, 1.0, allow_nan=False)
    if influence.matrix is not None:
        matrix = influence.matrix
        check(matrix, "influence matrix", -1.0, 1.0)
        undefined = np.isnan(matrix)
        partial = undefined.any(axis=1) & ~undefined.all(axis=1)
        if partial.any():
            row = int(np.flatnonzero(partial)[0])
            raise ValueError(f"{name}: influence matrix row {row} is NaN for some test "
                             "examples only (a training example's influence is undefined "
                             "for all of them or none; a damaged or edited part?)")


def _check_same(first: Estimates, first_name: str, part: Estimates, name: str) -> None:
    """Raises naming the first way `part` does not belong with `first`."""
    for field in ("experiment_dir", "subset", "skipped_runs"):
        if getattr(part, field) != getattr(first, field):
            raise ValueError(f"{name}: {field} {getattr(part, field)!r} differs from "
                             f"{first_name}'s {getattr(first, field)!r}")
    if not np.array_equal(part.run_ids, first.run_ids):
        raise ValueError(f"{name}: estimated from other runs than {first_name} "
                         f"({len(part.run_ids)} vs {len(first.run_ids)} runs)")
    mine = dataclasses.replace(part.config, eval_shard=None)
    theirs = dataclasses.replace(first.config, eval_shard=None)
    if mine != theirs:
        differ = [f.name for f in dataclasses.fields(mine)
                  if getattr(mine, f.name) != getattr(theirs, f.name)]
        raise ValueError(f"{name}: settings differ from {first_name}'s: "
                         + ", ".join(f"{k}={getattr(mine, k)!r} vs {getattr(theirs, k)!r}"
                                     for k in differ))
    for result in _WHOLE_RESULTS:
        a, b = getattr(part, result), getattr(first, result)
        if (a is None) != (b is None) or (a is not None and not all(
                np.array_equal(getattr(a, f.name), getattr(b, f.name), equal_nan=True)
                for f in dataclasses.fields(a))):
            raise ValueError(f"{name}: its {result} differs from {first_name}'s (not "
                             "the same runs' files?)")
    if not np.array_equal(part.test_accuracy, first.test_accuracy):
        raise ValueError(f"{name}: test accuracies of the runs differ from {first_name}'s")


def _check_coverage(ordered: Sequence[tuple[Estimates, str]],
                    eval_indices: tuple[int, ...] | None) -> None:
    """Every chosen test example exactly once, in the order the shards split them."""
    seen: dict[int, str] = {}
    for part, name in ordered:
        for index in part.influence.eval_indices.tolist():
            if index in seen:
                raise ValueError(f"{name} and {seen[index]}: both cover test example {index}")
            seen[index] = name
    joined = np.concatenate([p.influence.eval_indices for p, _ in ordered])
    expected = (np.arange(len(joined)) if eval_indices is None
                else np.asarray(eval_indices, np.int64))
    if not np.array_equal(joined, expected):
        absent = np.setdiff1d(expected, joined)
        what = (f"test example(s) {', '.join(map(str, absent[:5]))} not covered" if len(absent)
                else "the parts do not split the test examples in order")
        raise ValueError(f"parts: {what}")


def _merge_influence(parts: Sequence[InfluenceResult], num_pairs: int) -> InfluenceResult:
    """Influence arrays joined along the test axis; the overall top pairs re-selected."""
    offsets = np.cumsum([0] + [len(p.eval_indices) for p in parts])[:-1]
    eval_indices = np.concatenate([p.eval_indices for p in parts])
    above = None
    if parts[0].top.above_threshold is not None:
        above = tuple(np.concatenate(arrays) for arrays in zip(*[
            (p.top.above_threshold[0], p.top.above_threshold[1] + offset,
             p.top.above_threshold[2]) for p, offset in zip(parts, offsets, strict=True)],
            strict=True))
    dense = (np.concatenate([p.top.dense for p in parts], axis=1)
             if parts[0].top.dense is not None else None)
    top = estimators_lib.TopInfluences(
        train=np.concatenate([p.top.train for p in parts]),
        score=np.concatenate([p.top.score for p in parts]), above_threshold=above,
        dense=dense)
    top_stats = estimators_lib.InfluencePairs(**{
        f.name: np.concatenate([getattr(p.top_stats, f.name) + (offset if f.name == "eval"
                                                                 else 0)
                                for p, offset in zip(parts, offsets, strict=True)])
        for f in dataclasses.fields(estimators_lib.InfluencePairs)})
    matrix = dense if parts[0].matrix is not None else None  # one array, as in pipeline
    return InfluenceResult(eval_indices=eval_indices, top=top, top_stats=top_stats,
                           pairs=highest_pairs(top.score, top_stats, eval_indices, num_pairs),
                           matrix=matrix)
