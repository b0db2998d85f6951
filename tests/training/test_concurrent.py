"""Programs trained side by side (`heldout.training.concurrent`) change speed only.

Each run is trained by a program of K runs whatever the number of programs, so its
arrays must be bit-identical with one program and with two; the epoch callback must
fire once per epoch; more runs than the programs hold are refused.
"""

import dataclasses

import numpy as np
import pytest

from heldout.data import sources
from heldout.store import designs
from heldout.training import concurrent, select
from heldout.training.config import TrainConfig
from heldout.training.ensemble import EnsembleTrainer

CONFIG = TrainConfig(epochs=2, models_at_once=4)
NUM_RUNS = 7  # two programs of 4: the second holds 3 runs, padded


def _data():
    digits = sources.load_digits()
    return dataclasses.replace(digits, x_test=digits.x_test[:50], y_test=digits.y_test[:50])


def _runs(num_runs=NUM_RUNS):
    seeds = [designs.run_seeds(0, "0.5", r) for r in range(num_runs)]
    subsets = [designs.subset_indices(_data().num_train, "0.5", 0, r) for r in range(num_runs)]
    return subsets, [s.init for s in seeds], [s.order for s in seeds]


def _arrays(results):
    return [a for run in results for split in (run.train, run.test)
            for a in (split.correctness, split.margin, split.logodds)]


def test_two_programs_give_the_arrays_of_one():
    data = _data()
    subsets, inits, orders = _runs()
    one = EnsembleTrainer(data, CONFIG)
    sequential = (one.train(subsets[:4], inits[:4], orders[:4])
                  + one.train(subsets[4:], inits[4:], orders[4:]))
    trainer = select.make_trainer(data, dataclasses.replace(CONFIG, concurrent_programs=2))
    assert isinstance(trainer, concurrent.ConcurrentTrainer) and trainer.num_models == 8
    epochs = []
    side_by_side = trainer.train(subsets, inits, orders, on_epoch=epochs.append)
    assert len(side_by_side) == NUM_RUNS
    assert len(epochs) == CONFIG.epochs  # once per epoch, not once per program
    for before, after in zip(_arrays(sequential), _arrays(side_by_side), strict=True):
        np.testing.assert_array_equal(before, after)
    # The runs really differ from each other (a mix-up of the parts would show).
    assert not np.array_equal(side_by_side[0].test.margin, side_by_side[4].test.margin)


def test_auto_is_two_programs_for_small_models_and_one_for_the_others():
    assert TrainConfig().programs == 2
    assert TrainConfig(concurrent_programs=3).programs == 3
    assert TrainConfig(model="small_inception", models_at_once=1).programs == 1


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(concurrent_programs=-1), "^concurrent_programs=-1: "),
    (dict(model="airbench", concurrent_programs=2), "^concurrent_programs=2: "),
])
def test_bad_values_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**kwargs)


def test_more_runs_than_the_programs_hold_are_refused():
    trainer = select.make_trainer(_data(), dataclasses.replace(CONFIG, concurrent_programs=2))
    subsets, inits, orders = _runs(9)
    with pytest.raises(ValueError, match="1 to 8 runs"):
        trainer.train(subsets, inits, orders)
