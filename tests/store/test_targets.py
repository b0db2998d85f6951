"""Tests of heldout/store/targets.py (choosing, storing, finding, built-in target sets) and of
the targeted designs of heldout/store/designs.py (``full``, ``drop-<name>``).

The built-in CIFAR-10 sets are checked twice: on a hand-made `Dataset` whose original
indices are a known permutation of 0..49999, and through `load_dataset("tfds:cifar10")`
under `tfds.testing.mock_data` with ids ``train_<n>`` in shuffled order, where each
mocked image also encodes its n in its pixels (so the mapping is checked against the
images, not only against the loader's own parse of the ids).
"""

import json

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from heldout.data import sources as data_lib
from heldout.store import designs as subsets
from heldout.store import targets
from heldout.store.targets import TargetSet

PUBLISHED_RANDOM20 = list(range(20))
PUBLISHED_EASY20 = [45114, 47798, 43746, 49106, 47082, 44095, 49524, 41014, 49159, 44279,
                    45927, 40141, 47731, 46440, 49015, 49690, 46836, 43512, 43189, 49320]


# --- choose_targets: random -----------------------------------------------------------


def test_random_targets_seeded_deterministic_sorted_distinct():
    first = targets.choose_targets("random:25", 1000, seed=3, name="r")
    again = targets.choose_targets("random:25", 1000, seed=3, name="r")
    other_seed = targets.choose_targets("random:25", 1000, seed=4, name="r")
    chosen = first.groups["random"]
    assert list(first.groups) == ["random"]
    assert len(chosen) == 25
    assert len(set(chosen)) == 25
    assert list(chosen) == sorted(chosen)
    assert all(0 <= i < 1000 for i in chosen)
    assert all(isinstance(i, int) for i in chosen)
    assert again.groups == first.groups
    assert other_seed.groups["random"] != chosen  # 25 of 1000: a collision is impossible
    assert first.name == "r" and first.drop_subset == "drop-r"
    np.testing.assert_array_equal(first.indices, sorted(chosen))


def test_random_targets_can_take_every_example():
    chosen = targets.choose_targets("random:7", 7, seed=0, name="all").groups["random"]
    assert chosen == tuple(range(7))


def test_random_targets_spread_over_the_training_set():
    """Uniform draws: over many seeds, every example is chosen about equally often."""
    counts = np.zeros(20)
    for seed in range(400):
        counts[list(targets.choose_targets("random:5", 20, seed, "r").groups["random"])] += 1
    # Each example is chosen with probability 1/4, 100 times expected, sd ~8.7.
    assert counts.sum() == 2000
    assert counts.min() > 60 and counts.max() < 140


# --- choose_targets: easy -------------------------------------------------------------


def _pilot(means, runs=6, seed=0):
    """Pilot margins ``[runs, num_train]`` whose column means are exactly `means`."""
    rng = np.random.default_rng(seed)
    noise = rng.normal(size=(runs, len(means)))
    noise -= noise.mean(axis=0)
    return np.asarray(means)[None, :] + noise


def test_easy_targets_are_the_highest_mean_pilot_margins():
    rng = np.random.default_rng(1)
    means = rng.permutation(50).astype(float)  # distinct means 0..49
    pilot = _pilot(means)
    chosen = targets.choose_targets("easy:5", 50, seed=0, name="e", pilot_margins=pilot)
    expected = [int(np.flatnonzero(means == m)[0]) for m in (49, 48, 47, 46, 45)]
    assert set(chosen.groups["easy"]) == set(expected)
    assert chosen.provenance["pilot_runs"] == 6


def test_easy_targets_disjoint_from_random_ones():
    num_train = 40
    random_only = targets.choose_targets("random:6", num_train, seed=9, name="x")
    random_picks = list(random_only.groups["random"])
    # Make the random picks the easiest of all, so that easy must skip them.
    means = np.arange(num_train, dtype=float)
    means[random_picks] = 1000.0 + np.arange(6)
    pilot = _pilot(means)
    both = targets.choose_targets("random:6,easy:4", num_train, seed=9, name="x",
                                  pilot_margins=pilot)
    assert both.groups["random"] == tuple(random_picks)
    others = [i for i in np.argsort(-means) if i not in random_picks]
    assert set(both.groups["easy"]) == {int(i) for i in others[:4]}
    assert not set(both.groups["easy"]) & set(both.groups["random"])
    assert len(both.indices) == 10


def test_easy_first_then_random_disjoint():
    means = np.arange(30, dtype=float)
    both = targets.choose_targets("easy:10,random:15", 30, seed=2, name="x",
                                  pilot_margins=_pilot(means))
    assert set(both.groups["easy"]) == set(range(20, 30))
    assert not set(both.groups["easy"]) & set(both.groups["random"])
    assert len(set(both.groups["random"])) == 15
    assert all(i < 20 for i in both.groups["random"])


def test_easy_without_pilot_is_an_error():
    with pytest.raises(ValueError, match="^targets=random:2,easy:3"):
        targets.choose_targets("random:2,easy:3", 50, seed=0, name="e")


@pytest.mark.parametrize("spec", [
    "", "random", "random:", "random:0", "random:-1", "random:x", "random:2.5", "hard:3",
    "random=3", "random:3;easy:2", "random:3,", ",random:3", "RANDOM:3"])
def test_malformed_specs_name_targets(spec):
    pilot = _pilot(np.arange(50, dtype=float))
    with pytest.raises(ValueError, match="^targets="):
        targets.choose_targets(spec, 50, seed=0, name="t", pilot_margins=pilot)


def test_more_targets_than_examples_is_an_error():
    with pytest.raises(ValueError, match="^targets=random:11"):
        targets.choose_targets("random:11", 10, seed=0, name="t")
    with pytest.raises(ValueError, match="^targets="):
        targets.choose_targets("random:6,easy:5", 10, seed=0, name="t",
                               pilot_margins=_pilot(np.arange(10.0)))


def test_repeated_kind_is_an_error_not_silently_dropped():
    with pytest.raises(ValueError, match="^targets=random:3,random:2: random appears twice"):
        targets.choose_targets("random:3,random:2", 100, seed=0, name="t")


# --- storing and finding --------------------------------------------------------------


def test_save_load_round_trip(tmp_path):
    original = TargetSet(name="nsi", groups={"random": (3, 17, 40), "easy": (9, 2)},
                         provenance={"spec": "random:3,easy:2", "seed": 7, "pilot_runs": 4})
    path = targets.save_targets(str(tmp_path), original)
    assert path == str(tmp_path / "targets" / "nsi.json")
    with open(path) as f:
        content = json.load(f)
    assert content["groups"] == {"random": [3, 17, 40], "easy": [9, 2]}
    loaded = targets.load_targets(path)
    assert loaded == original
    assert list(loaded.groups) == ["random", "easy"]  # group order kept
    np.testing.assert_array_equal(loaded.indices, [2, 3, 9, 17, 40])
    assert loaded.group_of() == {3: "random", 17: "random", 40: "random", 9: "easy", 2: "easy"}


def test_save_overwrites_and_leaves_no_temporary_files(tmp_path):
    targets.save_targets(str(tmp_path), TargetSet(name="a", groups={"user": (1,)}))
    targets.save_targets(str(tmp_path), TargetSet(name="a", groups={"user": (2, 3)}))
    assert sorted(p.name for p in (tmp_path / "targets").iterdir()) == ["a.json"]
    assert targets.load_targets(str(tmp_path / "targets" / "a.json")).groups == {
        "user": (2, 3)}


def test_load_targets_errors(tmp_path):
    with pytest.raises(ValueError, match="^targets=.*missing.json: file not found"):
        targets.load_targets(str(tmp_path / "missing.json"))
    for content in ("not json", "[1, 2]", json.dumps({"name": "x"}),
                    json.dumps({"name": "x", "groups": {"g": ["a"]}})):
        path = tmp_path / "bad.json"
        path.write_text(content)
        with pytest.raises(ValueError, match="^targets=.*bad.json: not a target set file"):
            targets.load_targets(str(path))


def test_find_targets_by_name_and_by_path(tmp_path):
    experiment = str(tmp_path / "exp")
    stored = TargetSet(name="alpha", groups={"user": (4, 5)}, provenance={"x": 1})
    path = targets.save_targets(experiment, stored)
    assert targets.find_targets(experiment, "alpha") == stored
    assert targets.find_targets(experiment, path) == stored
    # A file elsewhere, found by its path whatever the experiment directory.
    elsewhere = tmp_path / "elsewhere"
    other = TargetSet(name="beta", groups={"easy": (1,)})
    other_path = targets.save_targets(str(elsewhere), other)
    assert targets.find_targets(experiment, other_path) == other


def test_find_targets_unknown_lists_stored_names(tmp_path):
    experiment = str(tmp_path / "exp")
    targets.save_targets(experiment, TargetSet(name="alpha", groups={"user": (1,)}))
    targets.save_targets(experiment, TargetSet(name="beta_2", groups={"user": (2,)}))
    with pytest.raises(ValueError) as info:
        targets.find_targets(experiment, "gamma")
    message = str(info.value)
    assert message.startswith("targets=gamma:")
    assert "alpha" in message and "beta_2" in message
    with pytest.raises(ValueError, match=r"^targets=gamma:.*\(stored: none\)"):
        targets.find_targets(str(tmp_path / "empty"), "gamma")


# --- built-in CIFAR-10 sets -----------------------------------------------------------


def test_published_lists():
    assert list(targets.CIFAR10_ORIGINAL_TARGETS["random20"]) == PUBLISHED_RANDOM20
    assert list(targets.CIFAR10_ORIGINAL_TARGETS["easy20"]) == PUBLISHED_EASY20


def _permuted_cifar_like(seed=0):
    """A 50000-example Dataset whose position p holds original CIFAR-10 example perm[p]."""
    perm = np.random.default_rng(seed).permutation(50000)
    dataset = data_lib.Dataset(
        name="permuted", x_train=perm.astype(np.float32)[:, None],
        y_train=(perm % 10).astype(np.int64), x_test=np.zeros((2, 1), np.float32),
        y_test=np.zeros(2, np.int64), num_classes=10,
        original_index_train=perm.astype(np.int64))
    return dataset, perm


@pytest.mark.parametrize("name, groups", [
    ("random20", {"random": PUBLISHED_RANDOM20}),
    ("easy20", {"easy": PUBLISHED_EASY20}),
    ("cifar10_nsi", {"random": PUBLISHED_RANDOM20, "easy": PUBLISHED_EASY20})])
def test_builtin_targets_map_through_original_index(name, groups):
    dataset, perm = _permuted_cifar_like()
    position_of = np.argsort(perm)  # inverse permutation, computed independently
    chosen = targets.builtin_targets(name, dataset)
    assert chosen.name == name
    assert list(chosen.groups) == list(groups)
    for group, originals in groups.items():
        positions = np.array(chosen.groups[group])
        np.testing.assert_array_equal(positions, position_of[originals])
        np.testing.assert_array_equal(perm[positions], originals)
        np.testing.assert_array_equal(dataset.x_train[positions, 0], originals)
    # The identity order (positions = originals) would be a wrong answer here.
    assert any(chosen.groups[g] != tuple(o) for g, o in groups.items())


def test_builtin_targets_errors():
    dataset, _ = _permuted_cifar_like()
    with pytest.raises(ValueError, match="^target_indices=nope: not a built-in set"):
        targets.builtin_targets("nope", dataset)
    without = data_lib.Dataset(
        name="npz:x.npz", x_train=np.zeros((50, 1), np.float32), y_train=np.zeros(50, np.int64),
        x_test=np.zeros((2, 1), np.float32), y_test=np.zeros(2, np.int64), num_classes=10)
    with pytest.raises(ValueError, match="^target_indices=random20: .*no original indices"):
        targets.builtin_targets("random20", without)
    # Original indices that do not cover the published ones (digits: 0..1796).
    digits = data_lib.load_digits()
    assert targets.builtin_targets("random20", digits).groups["random"]  # 0..19 are there
    with pytest.raises(ValueError, match="^target_indices=easy20: original indices"):
        targets.builtin_targets("easy20", digits)


# The mocked CIFAR-10 train split: every published target plus some others, shuffled.
_MOCK_TRAIN = [int(n) for n in np.random.default_rng(5).permutation(
    PUBLISHED_RANDOM20 + PUBLISHED_EASY20 + [20, 21, 999, 30000, 45113, 49999])]
_MOCK_TEST = [7, 0, 9999]


def _cifar_as_dataset(self, split, **kwargs):
    """Mocked `_as_dataset`: ids ``<split>_<n>``, pixels (0,0) = (n // 256, n % 256)."""
    del kwargs
    height, width, channels = self.info.features["image"].shape
    order = _MOCK_TRAIN if split == "train" else _MOCK_TEST

    def examples():
        for n in order:
            image = np.zeros((height, width, channels), np.uint8)
            image[0, 0, 0], image[0, 0, 1] = n // 256, n % 256
            yield {"id": f"{split}_{n}", "image": image, "label": n % 10}

    return tf.data.Dataset.from_generator(examples, output_signature={
        "id": tf.TensorSpec([], tf.string),
        "image": tf.TensorSpec([height, width, channels], tf.uint8),
        "label": tf.TensorSpec([], tf.int64)})


def test_builtin_targets_on_mocked_tfds_cifar10():
    with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE,
                                as_dataset_fn=_cifar_as_dataset):
        dataset = data_lib.load_dataset("tfds:cifar10")
    assert dataset.num_train == len(_MOCK_TRAIN)
    # What each position holds, read from its pixels.
    pixels = np.rint(dataset.x_train[:, 0, 0, :2] * 255).astype(np.int64)
    held = pixels[:, 0] * 256 + pixels[:, 1]
    np.testing.assert_array_equal(held, _MOCK_TRAIN)
    chosen = targets.builtin_targets("cifar10_nsi", dataset)
    assert list(chosen.groups) == ["random", "easy"]
    for group, originals in (("random", PUBLISHED_RANDOM20), ("easy", PUBLISHED_EASY20)):
        positions = list(chosen.groups[group])
        assert positions == [_MOCK_TRAIN.index(o) for o in originals]
        np.testing.assert_array_equal(held[positions], originals)
        np.testing.assert_array_equal(dataset.y_train[positions], np.array(originals) % 10)
    assert chosen.provenance["builtin"] == "cifar10_nsi"
    assert len(chosen.indices) == 40


# --- subsets: full and drop-<name> ----------------------------------------------------


def test_full_subset_is_every_example():
    for run_id in (0, 1, 17):
        np.testing.assert_array_equal(subsets.subset_indices(13, "full", 5, run_id),
                                      np.arange(13))
    assert subsets.subset_indices(13, "full", 5, 0).dtype == np.int64


def test_drop_subset_is_every_example_but_the_dropped():
    dropped = np.array([11, 0, 4, 4])
    got = subsets.subset_indices(12, "drop-x", 0, 3, dropped)
    np.testing.assert_array_equal(got, [1, 2, 3, 5, 6, 7, 8, 9, 10])
    assert got.dtype == np.int64
    np.testing.assert_array_equal(subsets.subset_indices(12, "drop-x", 1, 8, dropped), got)


@pytest.mark.parametrize("dropped", [None, np.array([], np.int64), []])
def test_drop_subset_without_dropped_is_an_error(dropped):
    with pytest.raises(ValueError, match="^subset=drop-x: needs the target indices"):
        subsets.subset_indices(12, "drop-x", 0, 0, dropped)


@pytest.mark.parametrize("dropped", [[12], [-1], [0, 3, 100]])
def test_drop_subset_out_of_range_is_an_error(dropped):
    with pytest.raises(ValueError, match=r"^subset=drop-x: .*\[0, 12\)"):
        subsets.subset_indices(12, "drop-x", 0, 0, np.array(dropped))


@pytest.mark.parametrize("text, expected", [
    ("full", "full"), ("drop-nsi", "drop-nsi"), ("drop-a_b-3", "drop-a_b-3"),
    ("0.7", "0.7"), ("0.70", "0.7"), (0.5, "0.5")])
def test_design_name_accepts(text, expected):
    assert subsets.design_name(text) == expected


@pytest.mark.parametrize("text", [
    "drop-", "drop-a b", "drop-a/b", "drop-../x", "drop-a.b", "Full", "fulll", "1.5", "0",
    "", "nonsense"])
def test_design_name_rejects(text):
    with pytest.raises(ValueError, match="^subset="):
        subsets.design_name(text)


def test_is_targeted_design():
    assert subsets.is_targeted_design("full")
    assert subsets.is_targeted_design("drop-t")
    assert not subsets.is_targeted_design("0.7")
