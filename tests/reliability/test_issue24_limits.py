"""Issue 24, items 3, 4 and 10 (sizes): an MD5 is honoured or refused for every kind of
source, TRAK without a projection is reachable with its defaults, and huge sizes
(batch_size, top_k, projection_dim) are refused with their bound before anything is
allocated.
"""

import hashlib

import numpy as np
import pytest

from heldout.attribution import config as attribution_config
from heldout.attribution import projection, tracin
from heldout.errors import ParameterError
from heldout.estimate import datamodels
from heldout.estimate.pipeline import EstimateConfig
from heldout.store import released


def test_md5_is_honoured_or_refused_for_every_source(tmp_path):
    content = b"published bytes\n" * 1000
    (tmp_path / "f.npz").write_bytes(content)
    path = str(tmp_path / "f.npz")
    digest = hashlib.md5(content).hexdigest()
    assert released.verify_md5(path, digest.upper()) == digest
    assert released.verify_md5(path, None) is None
    with pytest.raises(ParameterError, match=f"{path} has MD5 {digest}") as info:
        released.verify_md5(path, "0" * 32)
    assert info.value.parameter == "md5"
    with pytest.raises(ParameterError, match="is a directory, which has no MD5"):
        released.verify_md5(str(tmp_path), digest)
    with pytest.raises(ParameterError, match="32 hexadecimal"):
        released.verify_md5(path, "abc")
    with pytest.raises(ParameterError, match="cannot read"):
        released.verify_md5(str(tmp_path / "missing.npz"), digest)


def test_trak_without_projection_reachable_with_defaults():
    config = attribution_config.TRAKConfig(projection="none")
    assert config.projection_dim is None and config.dim is None
    assert attribution_config.TRAKConfig().dim == attribution_config.DEFAULT_PROJECTION_DIM == 1024
    assert attribution_config.TRAKConfig(projection_dim=64).dim == 64
    # The front door's settings, as a user gives them (no projection_dim).
    assert attribution_config.method_config("trak", {"projection": "none"}).dim is None
    with pytest.raises(ParameterError, match="projection_dim=1024: not used with "
                                             "projection='none'"):
        attribution_config.TRAKConfig(projection="none", projection_dim=1024)


@pytest.mark.parametrize(("make", "parameter"), [
    (lambda: attribution_config.TRAKConfig(batch_size=10**12), "batch_size"),
    (lambda: attribution_config.TRAKConfig(projection_dim=10**9), "projection_dim"),
    (lambda: tracin.TracInConfig(batch_size=10**12), "batch_size"),
    (lambda: tracin.TracInConfig(projection_dim=10**9), "projection_dim"),
    (lambda: attribution_config.InfluenceConfig(batch_size=10**12), "batch_size"),
    (lambda: EstimateConfig(top_k=10**12), "top_k"),
    (lambda: projection.RandomProjection([10**7], 100_000), "projection_dim"),
    (lambda: datamodels.fit_datamodels(np.eye(4, 6), np.zeros((4, 2)), top_k=10**9),
     "top_k"),
])
def test_huge_sizes_refused_with_their_bound(make, parameter):
    with pytest.raises(ParameterError) as info:
        make()
    assert info.value.parameter == parameter
    message = str(info.value)
    assert "\n" not in message and ("from 1 to" in message or "GiB" in message), message


def test_sizes_within_bounds_still_work():
    limit = attribution_config.MAX_BATCH_SIZE
    attribution_config.check_size("batch_size", limit, limit)
    assert EstimateConfig(top_k=1000).top_k == 1000
    p = projection.RandomProjection([10, 5], 3, seed=0)
    assert p.matrix().shape == (15, 3)
