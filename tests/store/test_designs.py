"""Tests of heldout.store.designs: seed-derived run subsets and flag parsing."""

import itertools

import numpy as np
import pytest

from heldout.store import designs as subsets


@pytest.mark.parametrize("num_train, subset", [(20, "0.7"), (37, "0.5"), (100, "0.25"),
                                              (1000, "0.7"), (45, "0.7"), (7, "0.1")])
def test_subset_indices_deterministic_sorted_unique_sized(num_train, subset):
    for run_id in range(5):
        first = subsets.subset_indices(num_train, subset, 3, run_id)
        second = subsets.subset_indices(num_train, subset, 3, run_id)
        np.testing.assert_array_equal(first, second)
        assert first.dtype == np.int64
        as_list = first.tolist()
        assert as_list == sorted(set(as_list)), "sorted and unique"
        assert all(0 <= i < num_train for i in as_list)
        assert len(as_list) == round(float(subset) * num_train)


def test_subset_size_rounds_like_python_round_over_many_sizes():
    for subset in ("0.1", "0.3", "0.5", "0.7", "0.9"):
        for num_train in range(0, 60):
            size = len(subsets.subset_indices(num_train, subset, 0, 0))
            assert size == round(float(subset) * num_train), (subset, num_train)


def test_subsets_distinct_across_run_ids():
    drawn = [tuple(subsets.subset_indices(100, "0.7", 0, r).tolist()) for r in range(50)]
    assert len(set(drawn)) == len(drawn)


def test_subsets_distinct_across_experiment_seeds():
    for run_id in range(10):
        drawn = [tuple(subsets.subset_indices(100, "0.7", seed, run_id).tolist())
                 for seed in range(10)]
        assert len(set(drawn)) == len(drawn)


def test_subsets_distinct_across_subset_names():
    # Same ratio, different folder names: different seeds, so different subsets.
    for run_id in range(10):
        a = subsets.subset_indices(100, "0.7", 0, run_id)
        b = subsets.subset_indices(100, "0.70", 0, run_id)
        assert len(a) == len(b) == 70
        assert not np.array_equal(a, b)


def test_subsets_of_different_ratios_are_not_nested():
    # Independent designs: the 0.5 subset of a run is not drawn as a prefix of its 0.7
    # subset (if it were, it would always be contained in it).
    contained = 0
    for run_id in range(20):
        small = set(subsets.subset_indices(100, "0.5", 0, run_id).tolist())
        large = set(subsets.subset_indices(100, "0.7", 0, run_id).tolist())
        contained += small <= large
    assert contained == 0


def test_inclusion_frequency_close_to_ratio():
    num_train, num_runs, ratio = 50, 2000, 0.7
    counts = np.zeros(num_train)
    for run_id in range(num_runs):
        counts[subsets.subset_indices(num_train, "0.7", 11, run_id)] += 1
    # Every run keeps exactly 35 of 50, so the total is exact.
    assert counts.sum() == num_runs * round(ratio * num_train)
    # Per example: Binomial(2000, 0.7), sd ~ 20.5; 6 sd = 123 runs, a frequency of 0.061.
    bound = 6 * np.sqrt(num_runs * ratio * (1 - ratio))
    assert np.abs(counts - num_runs * ratio).max() < bound
    # Pairs of examples are included together about ratio * (35-1)/(50-1) of the time.
    together = np.zeros((num_train, num_train))
    for run_id in range(300):
        chosen = np.zeros(num_train)
        chosen[subsets.subset_indices(num_train, "0.7", 11, run_id)] = 1
        together += np.outer(chosen, chosen)
    p_pair = ratio * 34 / 49
    pair_bound = 6 * np.sqrt(300 * p_pair * (1 - p_pair))
    off_diagonal = together[~np.eye(num_train, dtype=bool)]
    assert np.abs(off_diagonal - 300 * p_pair).max() < pair_bound


def test_known_answer_subset_indices():
    # Pinned when written: guards cross-machine and cross-version stability of subsets.
    expected = [0, 2, 3, 4, 5, 7, 8, 9, 10, 11, 13, 14, 17, 18]
    assert subsets.subset_indices(20, "0.7", 0, 1).tolist() == expected


def test_run_seeds_are_independent_per_purpose():
    seeds = subsets.run_seeds(0, "0.7", 1)
    draws = [tuple(np.random.PCG64(s).random_raw(4).tolist()) for s in seeds]
    assert len(set(draws)) == 3
    again = subsets.run_seeds(0, "0.7", 1)
    for a, b in zip(seeds, again, strict=True):
        assert a.generate_state(4).tolist() == b.generate_state(4).tolist()


@pytest.mark.parametrize("text, expected", [("0.7", 0.7), ("0.5", 0.5), ("0.25", 0.25),
                                            ("1e-3", 0.001)])
def test_parse_subset_ratio_accepts(text, expected):
    assert subsets.parse_subset_ratio(text) == expected


@pytest.mark.parametrize("text", ["0", "1", "1.5", "abc", "-0.3", "", "full", "nan"])
def test_parse_subset_ratio_rejects(text):
    with pytest.raises(ValueError, match="^subset_ratio="):
        subsets.parse_subset_ratio(text)


def test_subset_indices_rejects_non_design_subset():
    with pytest.raises(ValueError, match="^subset_ratio="):
        subsets.subset_indices(10, "most", 0, 0)


@pytest.mark.parametrize("ratio, name", [(0.7, "0.7"), (0.5, "0.5"), (0.25, "0.25")])
def test_subset_name(ratio, name):
    assert subsets.subset_name(ratio) == name


@pytest.mark.parametrize("text, expected", [
    ("0-3,7", [0, 1, 2, 3, 7]),
    ("5", [5]),
    ("3,5,8", [3, 5, 8]),
    ("8,3,3", [3, 8]),
    ("0-2, 1-4", [0, 1, 2, 3, 4]),
    ("4-4", [4]),
])
def test_parse_run_ids_accepts(text, expected):
    assert subsets.parse_run_ids(text) == expected


@pytest.mark.parametrize("text", ["3-1", "a", "-1", "", "1,,2", "0-x", "1.5"])
def test_parse_run_ids_rejects(text):
    with pytest.raises(ValueError, match="^run_ids="):
        subsets.parse_run_ids(text)


def test_parse_run_ids_large_range():
    assert subsets.parse_run_ids("0-99") == list(range(100))
    assert list(itertools.islice(subsets.parse_run_ids("10-20,0"), 3)) == [0, 10, 11]


def test_bank_designs():
    assert subsets.design_name("bank-0.010") == "bank-0.01"
    for bad in ("bank-0", "bank-1", "bank-x"):
        with pytest.raises(ValueError, match=f"^subset={bad}:"):
            subsets.design_name(bad)
    # Every run of every bank fraction trains from the base run's seeds.
    base = subsets.bank_seeds(3)
    for design, run_id in (("bank-0.01", 0), ("bank-0.05", 7)):
        seeds = subsets.run_seeds(3, design, run_id)
        assert seeds.init.entropy == base.init.entropy
        assert seeds.init.spawn_key == base.init.spawn_key
        assert seeds.order.spawn_key == base.order.spawn_key
    assert (subsets.bank_weights(200, "bank-0.05", 3, 0) == 1).all()
    first, second = (subsets.bank_weights(200, "bank-0.05", 3, r) for r in (1, 2))
    assert (first == 0).sum() == (second == 0).sum() == 10
    assert not np.array_equal(first, second)
    np.testing.assert_array_equal(first, subsets.bank_weights(200, "bank-0.05", 3, 1))
    assert len(subsets.subset_indices(200, "bank-0.05", 3, 1)) == 200


@pytest.mark.parametrize("design, name", [("full", None), ("drop-nsi", "nsi"),
                                          ("drop-a-b_1", "a-b_1"), ("0.7", None),
                                          ("0.50", None)])
def test_drop_target_name_full_is_no_drop_arm(design, name):
    """``full`` is not a drop arm with an empty name (it was, and --subset=full failed)."""
    assert subsets.drop_target_name(design) == name


@pytest.mark.parametrize("design", ["drop-", "drop-a/b", "most"])
def test_drop_target_name_refuses_non_designs(design):
    with pytest.raises(ValueError) as raised:
        subsets.drop_target_name(design)
    assert raised.value.parameter == "subset"


def test_reseed_design_trains_the_ratio_designs_subsets_with_its_own_seeds():
    assert subsets.design_name("0.50-reseed01") == "0.5-reseed1"
    assert subsets.parse_subset_ratio("0.5-reseed2") == 0.5
    assert subsets.is_reseed_design("0.5-reseed1") and not subsets.is_reseed_design("0.5")
    assert not subsets.is_reseed_design("drop-a-reseed1")
    for run_id in (0, 3, 11):
        base = subsets.subset_indices(50, "0.5", 7, run_id)
        np.testing.assert_array_equal(subsets.subset_indices(50, "0.5-reseed1", 7, run_id),
                                      base)
        seeds = [subsets.run_seeds(7, name, run_id)
                 for name in ("0.5", "0.5-reseed1", "0.5-reseed2")]
        for part in ("init", "order"):
            states = {tuple(getattr(s, part).generate_state(2)) for s in seeds}
            assert len(states) == 3, part  # three independent trainings of one subset
    for bad in ("0.5-reseed0", "0.5-reseedx", "0.5-reseed"):
        with pytest.raises(ValueError, match=f"^subset={bad}:"):
            subsets.design_name(bad)
    with pytest.raises(ValueError, match="^subset_ratio=1.5"):
        subsets.design_name("1.5-reseed1")
