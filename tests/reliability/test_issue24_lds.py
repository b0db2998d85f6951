"""Issue 24, item 8: LDS judges the overlap of fit and evaluation runs by what they
trained on (not by run id of one folder), and says over how many eval examples it is
averaged when some have no value.
"""

import numpy as np
import pytest
import scipy.stats

from heldout.errors import ParameterError
from heldout.estimate import lds


def _runs(rng, k, num_train):
    return rng.random((k, num_train)) < 0.5


def test_runs_copied_into_another_folder_are_refused_by_membership():
    rng = np.random.default_rng(0)
    fit = _runs(rng, 30, 50)
    fresh = _runs(rng, 20, 50)
    lds.check_disjoint_membership(fit, fresh)  # other runs: accepted
    copied = np.concatenate([fresh[:15], fit[[3, 7, 11, 20, 29]]])  # 5 fit runs copied over
    names = [f"0.5/{i}" for i in range(20)]
    lds.check_disjoint(range(30), range(100, 120))  # ids alone do not see it
    with pytest.raises(ParameterError, match=r"5 of the 20 evaluation runs \(0.5/15, 0.5/16, "
                                             r"0.5/17, 0.5/18, 0.5/19\)") as info:
        lds.check_disjoint_membership(fit, copied, names)
    assert info.value.parameter == "lds_subset"


def test_lds_says_over_how_many_eval_examples_it_is_averaged():
    rng = np.random.default_rng(1)
    k, num_train, num_eval = 12, 30, 9
    masks = _runs(rng, k, num_train)
    scores = rng.normal(size=(num_train, num_eval))
    outputs = masks @ scores + rng.normal(scale=2.0, size=(k, num_eval))
    outputs[:, [1, 4, 5, 8]] = 0.5  # constant outputs: LDS undefined there
    result = lds.lds(scores, masks, outputs, num_bootstrap=0)
    expected = [scipy.stats.spearmanr(outputs[:, j], masks @ scores[:, j])[0]
                if j not in (1, 4, 5, 8) else np.nan for j in range(num_eval)]
    np.testing.assert_allclose(result.per_example, expected, equal_nan=True)
    assert (result.num_finite, result.num_eval) == (5, 9)
    assert result.mean == pytest.approx(np.nanmean(expected))
    assert "over 5 of 9 eval examples" in result.summary()
    full = lds.lds(scores, masks, masks @ scores + rng.normal(size=(k, num_eval)),
                   num_bootstrap=0)
    assert full.num_finite == full.num_eval == 9
    assert full.summary().endswith("over 9 eval examples")
