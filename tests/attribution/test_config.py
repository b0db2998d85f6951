"""heldout/attribution/config.py: the gradient methods' settings, built from settings
named by their parameters; a setting a method lacks is refused naming it."""

import pytest

from heldout.attribution import config
from heldout.errors import ParameterError


def test_gradient_method_settings_build_their_configs():
    built = config.method_config(
        "if_kfac", {"fisher": "true", "fisher_seed": 3, "fisher_draws": 2, "batch_size": 7,
                    "damping": 0.5, "layers": ("_layers/0",)})
    assert built == config.InfluenceConfig(
        strategy="kfac", fisher="true", fisher_seed=3, fisher_draws=2, batch_size=7,
        damping=0.5, layers=("_layers/0",))
    assert config.method_config("tracin", {"projection_dim": 16}) == \
        config.TracInConfig(projection_dim=16)
    assert config.method_config("trak", {"projection_seed": 4}) == config.TRAKConfig(seed=4)


def test_trak_without_projection_needs_no_dimension():
    """Issue 24: projection='none' alone is TRAK on raw gradients (d = #parameters)."""
    assert config.method_config("trak", {"projection": "none"}) == \
        config.TRAKConfig(projection="none", projection_dim=None)
    assert config.TRAKConfig(projection="none").dim is None
    assert config.TRAKConfig().dim == config.DEFAULT_PROJECTION_DIM
    with pytest.raises(ParameterError, match="not used with projection='none'"):
        config.method_config("trak", {"projection": "none", "projection_dim": 8})


@pytest.mark.parametrize("method, settings, parameter", [
    ("tracin", {"fisher": "empirical"}, "fisher"),
    ("tracin", {"damping": 0.1}, "damping"),
    ("if_ekfac", {"projection_dim": 4}, "projection_dim"),
    ("if_ekfac", {"strategy": "kfac"}, "strategy"),  # fixed by the method
    ("trak", {"fisher_seed": 1}, "fisher_seed"),
])
def test_settings_a_method_lacks_are_refused(method, settings, parameter):
    with pytest.raises(ParameterError, match=f"not a setting of estimators={method}") as error:
        config.method_config(method, settings)
    assert error.value.parameter == parameter


@pytest.mark.parametrize("kind, settings, parameter", [
    (config.TracInConfig, {"batch_size": 0}, "batch_size"),
    (config.InfluenceConfig, {"damping": float("nan")}, "damping"),
    (config.InfluenceConfig, {"fisher": "empirical", "fisher_draws": 2}, "fisher_draws"),
    (config.TRAKConfig, {"lambda_reg": (1.0, -1.0)}, "lambda_reg"),
    (config.TRAKConfig, {"reweighting": "x"}, "reweighting"),
])
def test_invalid_values_name_their_parameter(kind, settings, parameter):
    with pytest.raises(ParameterError) as error:
        kind(**settings)
    assert error.value.parameter == parameter
