"""The settings of the gradient-based methods, each with its one default.

`TracInConfig`, `InfluenceConfig`, `TRAKConfig` and `MetagradientConfig` are frozen and
validated on construction; their errors are `ParameterError`s naming the field. This module imports
no TensorFlow, so the front doors check a user's settings before TensorFlow loads;
`method_config` builds the config of a method from settings named by its parameters.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import numpy as np

from heldout.errors import ParameterError

# What is measured on a query: its loss, its margin, or its log-odds margin.
MEASUREMENTS = ("loss", "margin", "logodds")
DEFAULT_BATCH_SIZE = 128  # examples per compiled call of per-example gradients
# Bounds of sizes a user sets, checked before anything is allocated: per-example gradients
# of a batch (batch x parameters floats) and projections (parameters x d floats) beyond
# these do not fit a machine (a typo like batch_size=10**9 would die in a MemoryError).
MAX_BATCH_SIZE = 1 << 16
MAX_PROJECTION_DIM = 1 << 17
DEFAULT_PROJECTION_DIM = 1024  # TRAK's d when a projection is used and projection_dim is unset
STRATEGIES = ("identity", "diagonal", "kfac", "ekfac")  # approximations of the Fisher
FISHERS = ("true", "empirical", "expected")  # labels of the Fisher
PROJECTIONS = ("rademacher", "gaussian", "none")
REWEIGHTINGS = ("published", "per_model", "none")
# Gradient methods scored on one run's checkpoints (TRAK scores an ensemble of runs).
METHODS = ("tracin",) + tuple(f"if_{strategy}" for strategy in STRATEGIES)
# Arithmetic metagradients are exact in (16-bit training is not differentiated).
METAGRADIENT_PRECISIONS = ("float32", "float64")


@dataclasses.dataclass(frozen=True)
class TracInConfig:
    """How TracIn scores are computed."""

    measurement: str = "loss"  # of the query: one of MEASUREMENTS
    layers: tuple[str, ...] | None = None  # attribute paths; None: all layers
    projection_dim: int | None = None  # Gaussian projection of gradients; None: exact
    projection_seed: int = 0
    batch_size: int = DEFAULT_BATCH_SIZE  # examples per batch of per-example gradients

    def __post_init__(self):
        _check_choice("measurement", self.measurement, MEASUREMENTS)
        if self.projection_dim is not None:
            check_size("projection_dim", self.projection_dim, MAX_PROJECTION_DIM)
        check_size("batch_size", self.batch_size, MAX_BATCH_SIZE)


@dataclasses.dataclass(frozen=True)
class InfluenceConfig:
    """How the Fisher is approximated and the influence-function scores computed."""

    strategy: str = "ekfac"  # one of STRATEGIES
    damping: float | None = None  # absolute, per layer; None: damping_factor heuristic
    damping_factor: float = 0.1  # x the layer's mean eigenvalue
    fisher: str = "true"  # labels of the Fisher, one of FISHERS
    measurement: str = "loss"  # of the queries: one of MEASUREMENTS
    layers: tuple[str, ...] | None = None  # attribute paths; None: all layers
    batch_size: int = DEFAULT_BATCH_SIZE  # examples per batch of per-example gradients
    fisher_seed: int = 0  # of the sampled labels of the true Fisher
    fisher_draws: int = 1  # sampled labels per example (true Fisher only)

    def __post_init__(self):
        _check_choice("strategy", self.strategy, STRATEGIES)
        _check_choice("fisher", self.fisher, FISHERS)
        _check_choice("measurement", self.measurement, MEASUREMENTS)
        if self.damping is not None and not (math.isfinite(self.damping)
                                             and self.damping >= 0):
            raise ParameterError("damping", "expected a finite number >= 0 (or None, for "
                                 "damping_factor x mean eigenvalue)", self.damping)
        if not (math.isfinite(self.damping_factor) and self.damping_factor > 0):
            raise ParameterError("damping_factor", "expected a positive number",
                                 self.damping_factor)
        check_size("batch_size", self.batch_size, MAX_BATCH_SIZE)
        _check_positive("fisher_draws", self.fisher_draws)
        if self.fisher_draws > 1 and self.fisher != "true":
            raise ParameterError("fisher_draws", f"only fisher='true' samples labels; "
                                 f"fisher={self.fisher!r} takes exactly 1 draw",
                                 self.fisher_draws)


@dataclasses.dataclass(frozen=True)
class TRAKConfig:
    """How TRAK features and scores are computed."""

    # d; None: DEFAULT_PROJECTION_DIM with a projection, unused without one (given with
    # projection="none", it is refused: d is then the number of parameters).
    projection_dim: int | None = None
    projection: str = "rademacher"  # one of PROJECTIONS; "none": raw gradients, d = #params
    seed: int = 0  # of the projections: model m uses (seed, m)
    # x mean eigenvalue of Phi^T Phi; a tuple is a grid, chosen by LDS on selection runs.
    # 1.0: the choice on digits (benchmarks/attribution_lds.py); elsewhere, choose.
    lambda_reg: float | tuple[float, ...] = 1.0
    reweighting: str = "published"  # where 1 - p enters: one of REWEIGHTINGS
    layers: tuple[str, ...] | None = None  # attribute paths; None: every Linear/Conv2D layer
    batch_size: int = DEFAULT_BATCH_SIZE  # examples per compiled call

    def __post_init__(self):
        _check_choice("projection", self.projection, PROJECTIONS)
        if self.projection == "none":
            if self.projection_dim is not None:
                raise ParameterError("projection_dim", "not used with projection='none' (d "
                                     "is the number of parameters); leave it unset",
                                     self.projection_dim)
        elif self.projection_dim is not None:
            check_size("projection_dim", self.projection_dim, MAX_PROJECTION_DIM)
        grid = self.lambda_grid
        if not grid or not all(math.isfinite(v) and v >= 0 for v in grid):
            raise ParameterError("lambda_reg", "expected a number >= 0 or a non-empty tuple "
                                 "of them", self.lambda_reg)
        _check_choice("reweighting", self.reweighting, REWEIGHTINGS)
        check_size("batch_size", self.batch_size, MAX_BATCH_SIZE)

    @property
    def dim(self) -> int | None:
        """The projection's d: `projection_dim`, `DEFAULT_PROJECTION_DIM` when unset, None
        without a projection."""
        if self.projection == "none":
            return None
        return DEFAULT_PROJECTION_DIM if self.projection_dim is None else self.projection_dim

    @property
    def lambda_grid(self) -> tuple[float, ...]:
        """The candidate values of `lambda_reg` (one value: no selection)."""
        if isinstance(self.lambda_reg, tuple | list):
            return tuple(float(v) for v in self.lambda_reg)
        return (float(self.lambda_reg),)


@dataclasses.dataclass(frozen=True)
class MetagradientConfig:
    """How metagradients are computed (none of it changes the numbers but `precision`)."""

    precision: str = "float32"  # arithmetic of replay and backward pass: float32 | float64
    target_batch: int = 512  # targets per backward program (the ensemble axis J)
    checkpoint_interval: int = 0  # keep every c-th state; 1: all; 0: auto (budget)
    memory_budget_bytes: int = 1 << 30  # auto: keep every state when they fit in this
    xla: bool = True  # compile the forward and backward steps with XLA
    progress: bool = True  # progress bar with rate and time left

    def __post_init__(self):
        if self.precision not in METAGRADIENT_PRECISIONS:
            raise ParameterError("precision", "metagradients are exact in float32 or float64 "
                                 "only (16-bit training is not differentiated)",
                                 self.precision)
        for name in ("target_batch", "memory_budget_bytes"):
            if not getattr(self, name) > 0:
                raise ParameterError(name, "expected a positive number", getattr(self, name))
        if self.checkpoint_interval < 0:
            raise ParameterError("checkpoint_interval", "expected 0 (auto) or a positive "
                                 "number of steps", self.checkpoint_interval)


def method_config(method: str, settings: Mapping[str, object]
                  ) -> TracInConfig | InfluenceConfig | TRAKConfig:
    """The config of a gradient method (``tracin``, ``if_<strategy>``, ``trak``) from
    settings named by its parameters; the rest keep the config's defaults.

    TRAK's projection seed is its config's ``seed``; it is given as ``projection_seed``,
    as for TracIn.

    Raises:
        ParameterError: a setting the method's config does not have (naming it), or an
            invalid value.
    """
    settings = dict(settings)
    if method == "trak":
        if "projection_seed" in settings:
            settings["seed"] = settings.pop("projection_seed")
        kind, fixed = TRAKConfig, {}
    elif method == "tracin":
        kind, fixed = TracInConfig, {}
    elif method in METHODS:
        kind, fixed = InfluenceConfig, {"strategy": method[len("if_"):]}
    else:
        raise ParameterError("estimators", f"not a gradient method; expected one of "
                             f"{', '.join(METHODS + ('trak',))}", method)
    known = {f.name for f in dataclasses.fields(kind)} - set(fixed)
    for name in settings:
        if name not in known:
            shown = "projection_seed" if name == "seed" else name
            raise ParameterError(shown, f"not a setting of estimators={method}")
    return kind(**fixed, **settings)


def check_size(parameter: str, value: int, maximum: int) -> None:
    """Refuses a size that is not a whole number in ``[1, maximum]``.

    Raises:
        ParameterError: naming `parameter`, with the bound.
    """
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or not (
            1 <= value <= maximum):
        raise ParameterError(parameter, f"expected a whole number from 1 to {maximum:,}",
                             value)


def _check_choice(parameter: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ParameterError(parameter, f"expected one of {', '.join(allowed)}", repr(value))


def _check_positive(parameter: str, value: int) -> None:
    if value < 1:
        raise ParameterError(parameter, "expected a positive number", value)
