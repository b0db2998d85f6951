"""The jobs of ``estimate.py``: one small frozen type per mode, built from the settings a
user gave, refusing every setting the chosen mode does not take.

Modes (chosen in this order): `VerifyJob` (``verify``), `TargetedJob` (``targets``, with
an optional power plan), `PlanJob` (``plan`` alone), `MergeJob` (``merge``),
`DatamodelsJob` (``estimators=("datamodel",)``), `TRAKJob` (``("trak",)``),
`GradientJob` (one of ``tracin``, ``if_<strategy>``), `MetagradientJob`
(``("metagradient",)``), and `EstimatesJob` (the retraining estimates, the default). A
job holds the lower layers' configs (`EstimateConfig`, `TargetedConfig`, `PlanConfig`,
`DatamodelConfig`, `TracInConfig`, `InfluenceConfig`, `TRAKConfig`,
`MetagradientConfig`); their defaults are the only defaults. `estimate_job` imports no
TensorFlow, so a bad setting is reported within a second; `heldout.app.estimate.run`
executes a job.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping

from heldout.attribution import config as attribution_config
from heldout.attribution.config import (
    InfluenceConfig,
    MetagradientConfig,
    TracInConfig,
    TRAKConfig,
)
from heldout.data.dataset import DEFAULT_MAX_CLASSES
from heldout.errors import ParameterError
from heldout.estimate.config import (
    DEFAULT_TOP,
    ESTIMATORS,
    INFLUENCE_OUTPUTS,
    DatamodelConfig,
    EstimateConfig,
    PlanConfig,
    TargetedConfig,
)
from heldout.store import designs
from heldout.training.presets import DEFAULT_EXPERIMENT_DIR

DATAMODEL = "datamodel"
TRAK = "trak"
METAGRADIENT = "metagradient"
# Every value `estimators` takes: the retraining estimators (several, or "all"), or one of
# datamodels, a gradient method on one run, TRAK, metagradients of one run.
ESTIMATOR_CHOICES = (ESTIMATORS + ("all", DATAMODEL) + attribution_config.METHODS
                     + (TRAK, METAGRADIENT))
# Settings of the gradient methods' configs, as `estimate_job` takes them.
GRADIENT_SETTINGS = ("measurement", "damping", "damping_factor", "fisher", "fisher_seed",
                     "fisher_draws", "layers", "batch_size", "projection_dim",
                     "projection_seed", "projection", "lambda_reg", "reweighting")
# Every setting `estimate_job` takes (a mode takes some of them).
PARAMETERS = (
    "experiment_dir", "fetch_dir", "fetch_checkpoints", "fetch_run_ids", "md5", "progress",
    "verify", "estimators", "subsets", "metric", "min_runs", "test", "confidence", "alpha",
    "fdr", "fdr_untestable", "influence_output", "top_k", "threshold", "eval_indices",
    "eval_shard", "targets", "show_all", "plan", "effect", "power", "run_id",
    *GRADIENT_SETTINGS, "trak_runs", "checkpoint_interval", "factors_path", "output",
    "csv_dir", "plot_dir", "lds_subset", "lds_runs", "merge", "compare_to",
    "imagenet_index", "dataset", "data_dir", "max_classes", "top")


@dataclasses.dataclass(frozen=True)
class Fetch:
    """A published tarball to fetch first (the experiment directory names one)."""

    destination: str | None = None  # None: ./experiments/<tarball name>
    checkpoint_subsets: tuple[str, ...] | None = None  # also extract their checkpoints
    checkpoint_run_ids: tuple[int, ...] | None = None  # only of these runs
    md5: str | None = None  # None: the published one, for known releases


@dataclasses.dataclass(frozen=True)
class Source:
    """The experiment every mode reads."""

    experiment_dir: str = DEFAULT_EXPERIMENT_DIR  # local, gs://, or a tarball/release
    fetch: Fetch = Fetch()
    progress: bool = True  # progress bars


@dataclasses.dataclass(frozen=True)
class Data:
    """The data set, for labels and images (None: the experiment's, if recorded)."""

    dataset: str | None = None
    data_dir: str | None = None  # TFDS data directory
    max_classes: int = DEFAULT_MAX_CLASSES


@dataclasses.dataclass(frozen=True)
class Outputs:
    """Where results go; `output` None: the experiment's default name for this result."""

    output: str | None = None
    csv_dir: str | None = None
    plot_dir: str | None = None


@dataclasses.dataclass(frozen=True)
class Examples:
    """The test examples scored: `indices` (a range list or a file, read when the job
    runs; None: all), then the `shard` (i, n) part of them."""

    indices: str | None = None
    shard: tuple[int, int] | None = None


@dataclasses.dataclass(frozen=True)
class LDSCheck:
    """Judge a score matrix by its LDS on the runs of `subset` (SPEC §9)."""

    subset: str
    run_ids: tuple[int, ...] | None = None  # None: every complete run there


@dataclasses.dataclass(frozen=True)
class VerifyJob:
    """Check every complete run's arrays; name the damaged ones."""

    source: Source


@dataclasses.dataclass(frozen=True)
class PlanJob:
    """Runs per arm needed to detect an effect, from the full arm's pilot runs."""

    source: Source
    plan: PlanConfig


@dataclasses.dataclass(frozen=True)
class TargetedJob:
    """The targeted self-influence report of a target set (full vs drop-<name> arms)."""

    source: Source
    targets: str  # a stored target set's name, or a file
    config: TargetedConfig
    show_all: bool = False  # every target row, not only the significant ones
    plan: PlanConfig | None = None  # also the power plan on the targets
    outputs: Outputs = Outputs()
    data: Data = Data()


@dataclasses.dataclass(frozen=True)
class MergeJob:
    """The estimate files of the parts of a sharded job merged into one (the parts name
    the experiment they were estimated from)."""

    parts: tuple[str, ...]
    outputs: Outputs = Outputs()
    top: int = DEFAULT_TOP
    compare_to: str | None = None
    data: Data = Data()
    imagenet_index: str | None = None  # the published imagenet_index.npz, for compare_to


@dataclasses.dataclass(frozen=True)
class EstimatesJob:
    """Memorization, self-influence, influence and C-scores from retraining."""

    source: Source
    config: EstimateConfig
    eval_indices: str | None = None  # read when the job runs, into config.eval_indices
    outputs: Outputs = Outputs()
    top: int = DEFAULT_TOP
    compare_to: str | None = None
    data: Data = Data()
    lds: LDSCheck | None = None
    imagenet_index: str | None = None  # the published imagenet_index.npz, for compare_to


@dataclasses.dataclass(frozen=True)
class DatamodelsJob:
    """Ridge datamodels of the eval examples, fit on the runs of one folder."""

    source: Source
    config: DatamodelConfig
    subset: str | None = None  # None: the only folder besides the LDS folder
    examples: Examples = Examples()
    output: str | None = None
    lds: LDSCheck | None = None


@dataclasses.dataclass(frozen=True)
class GradientJob:
    """TracIn or influence functions on one run's checkpoints."""

    source: Source
    method: str  # one of attribution_config.METHODS
    config: TracInConfig | InfluenceConfig
    subset: str | None = None
    run_id: int = 0
    examples: Examples = Examples()
    factors_path: str | None = None  # influence functions: reuse or save the factors
    output: str | None = None
    top: int = DEFAULT_TOP
    data: Data = Data()
    lds: LDSCheck | None = None


@dataclasses.dataclass(frozen=True)
class TRAKJob:
    """TRAK of the final models of an ensemble of runs."""

    source: Source
    config: TRAKConfig
    run_ids: tuple[int, ...]
    subset: str | None = None
    examples: Examples = Examples()
    output: str | None = None
    data: Data = Data()
    lds: LDSCheck | None = None


@dataclasses.dataclass(frozen=True)
class MetagradientJob:
    """Exact metagradients of one recorded run: d log-odds of each eval example / d
    loss weight of each training example, by stepping back through its training."""

    source: Source
    config: MetagradientConfig
    subset: str | None = None
    run_id: int = 0
    examples: Examples = Examples()
    output: str | None = None
    data: Data = Data()
    lds: LDSCheck | None = None


EstimateJob = (VerifyJob | PlanJob | TargetedJob | MergeJob | EstimatesJob | DatamodelsJob
               | GradientJob | TRAKJob | MetagradientJob)


def estimate_job(given: Mapping[str, object], name: Callable[[str], str] = str
                 ) -> EstimateJob:
    """The one job the given settings ask for.

    Args:
        given: the settings a user gave, by parameter (`PARAMETERS`); a setting left out
            takes its default, owned by the config type that holds it.
        name: how messages name a parameter (the CLI passes its flag names).

    Raises:
        ParameterError: a setting the chosen mode does not take (naming it), or an
            invalid value.
    """
    settings = _Settings(given, name)
    other_mode = settings.get("verify") or settings.has("targets") or settings.get("plan")
    if settings.has("merge") and not other_mode:
        job = _merge(settings)  # the parts name their experiment
        settings.refuse_rest(f"{name('merge')} (the parts name their experiment)")
        return job
    source = _source(settings)
    if settings.pop("verify", False):
        job, mode = VerifyJob(source), f"{name('verify')}"
    elif settings.has("targets"):
        job, mode = _targeted(settings, source), f"the targeted report ({name('targets')})"
    elif settings.pop("plan", False):
        job, mode = PlanJob(source, _plan(settings)), f"{name('plan')} without targets"
    else:
        estimators = _estimators(settings)
        method = estimators[0]
        mode = f"{name('estimators')}={','.join(estimators)}"
        if method == DATAMODEL:
            job = _datamodels(settings, source)
        elif method == TRAK:
            job = _trak(settings, source)
        elif method == METAGRADIENT:
            job = _metagradient(settings, source)
        elif method in attribution_config.METHODS:
            job = _gradient(settings, source, method)
        else:
            job = _estimates(settings, source, estimators)
    settings.refuse_rest(mode)
    return job


class _Settings:
    """The given settings, taken one by one; what no mode takes is refused at the end."""

    def __init__(self, given: Mapping[str, object], name: Callable[[str], str]):
        for parameter in given:
            if parameter not in PARAMETERS:
                raise ParameterError(parameter, "not a setting of estimate")
        self._left = dict(given)
        self.name = name

    def has(self, parameter: str) -> bool:
        return parameter in self._left

    def get(self, parameter: str) -> object:
        return self._left.get(parameter)

    def pop(self, parameter: str, default: object = None) -> object:
        return self._left.pop(parameter, default)

    def take(self, parameters: tuple[str, ...]) -> dict[str, object]:
        """The given ones of `parameters`, as keyword arguments."""
        return {p: self._left.pop(p) for p in parameters if p in self._left}

    def refuse(self, parameter: str, why: str) -> None:
        """Refuses `parameter` if it was given."""
        if parameter in self._left:
            raise ParameterError(parameter, why)

    def refuse_rest(self, mode: str) -> None:
        for parameter in self._left:
            raise ParameterError(parameter, f"not a setting of {mode}")


def _source(settings: _Settings) -> Source:
    experiment_dir = settings.pop("experiment_dir", DEFAULT_EXPERIMENT_DIR)
    if not str(experiment_dir).strip():
        raise ParameterError("experiment_dir", "empty; expected a directory (local or "
                             "gs://), a tarball or a release name")
    run_ids = settings.pop("fetch_run_ids")
    if run_ids is not None and not settings.has("fetch_checkpoints"):
        raise ParameterError("fetch_run_ids", "chooses the runs whose checkpoints "
                             f"{settings.name('fetch_checkpoints')} extracts; give that too")
    fetch = Fetch(destination=settings.pop("fetch_dir"),
                  checkpoint_subsets=_tuple(settings.pop("fetch_checkpoints")),
                  checkpoint_run_ids=None if run_ids is None else
                  tuple(designs.parse_run_ids(str(run_ids), "fetch_run_ids")),
                  md5=settings.pop("md5"))
    return Source(str(experiment_dir), fetch, bool(settings.pop("progress", True)))


def _data(settings: _Settings) -> Data:
    data = Data(**settings.take(("dataset", "data_dir", "max_classes")))
    _check_positive("max_classes", data.max_classes)
    return data


def _outputs(settings: _Settings) -> Outputs:
    outputs = Outputs(**settings.take(("output", "csv_dir", "plot_dir")))
    for parameter in ("output", "csv_dir", "plot_dir"):
        value = getattr(outputs, parameter)
        if value is not None and not str(value).strip():
            raise ParameterError(parameter, "empty; expected a path")
    return outputs


def _top(settings: _Settings) -> int:
    top = settings.pop("top", DEFAULT_TOP)
    _check_positive("top", top)
    return top


def _examples(settings: _Settings) -> Examples:
    shard = settings.pop("eval_shard")
    return Examples(indices=settings.pop("eval_indices"),
                    shard=None if shard is None else designs.parse_shard(str(shard),
                                                                         "eval_shard"))


def _lds(settings: _Settings, usable: str | None = None) -> LDSCheck | None:
    """The LDS check, if asked for; `usable` says why the mode cannot judge by LDS."""
    subset = settings.pop("lds_subset")
    run_ids = settings.pop("lds_runs")
    if subset is None:
        if run_ids is not None:
            raise ParameterError("lds_runs", "chooses runs of "
                                 f"{settings.name('lds_subset')}; give that too")
        return None
    if usable:
        raise ParameterError("lds_subset", usable, subset)
    return LDSCheck(_folder("lds_subset", str(subset)), None if run_ids is None else
                    tuple(designs.parse_run_ids(str(run_ids), "lds_runs")))


def _one_subset(settings: _Settings) -> str | None:
    subsets = _subsets(settings)
    if subsets is None:
        return None
    if len(subsets) != 1:
        raise ParameterError("subsets", "this estimator reads one subset folder; several "
                             f"are for {settings.name('estimators')}=cscore only",
                             ",".join(subsets))
    return subsets[0]


def _estimators(settings: _Settings) -> tuple[str, ...]:
    estimators = tuple(settings.pop("estimators", EstimateConfig.estimators))
    unknown = [e for e in estimators if e not in ESTIMATOR_CHOICES]
    if unknown or not estimators:
        raise ParameterError("estimators", "expected one or more of "
                             f"{', '.join(ESTIMATORS)}, or all; or one of "
                             f"{', '.join(ESTIMATOR_CHOICES[len(ESTIMATORS) + 1:])}",
                             ",".join(estimators))
    alone = [e for e in estimators if e not in ESTIMATORS]
    if alone and len(estimators) > 1:
        raise ParameterError("estimators", f"{alone[0]} is estimated on its own",
                             ",".join(estimators))
    return estimators


def _targeted(settings: _Settings, source: Source) -> TargetedJob:
    estimators = settings.pop("estimators")
    if estimators is not None and tuple(estimators) != ("self_influence",):
        raise ParameterError("estimators", "the targeted report is self_influence; "
                             "estimate others without targets", ",".join(estimators))
    targets = str(settings.pop("targets"))
    plan = _plan(settings, keep_shared=True) if settings.pop("plan", False) else None
    if plan is None:
        for parameter in ("effect", "power"):
            settings.refuse(parameter, f"a setting of the power plan; add {settings.name('plan')}")
    config = TargetedConfig(**settings.take(("metric", "test", "confidence", "alpha",
                                             "min_runs")))
    if plan is not None:  # the plan's metric and alpha are the report's
        plan = dataclasses.replace(plan, metric=config.metric, alpha=config.alpha)
    return TargetedJob(source, targets, config, bool(settings.pop("show_all", False)), plan,
                       _outputs(settings), _data(settings))


def _plan(settings: _Settings, keep_shared: bool = False) -> PlanConfig:
    """The power plan's settings; with `keep_shared`, metric and alpha are left for the
    targeted report that shares them."""
    shared = () if keep_shared else ("metric", "alpha")
    return PlanConfig(**settings.take(("effect", "power", *shared)))


def _merge(settings: _Settings) -> MergeJob:
    parts = tuple(settings.pop("merge"))
    if not parts:
        raise ParameterError("merge", "empty; expected the estimate files of the parts")
    compare_to, imagenet_index = _compare_to(settings)
    if compare_to is None:
        settings.refuse("plot_dir", "a merge draws figures only of a comparison; give "
                        f"{settings.name('compare_to')} too")
    return MergeJob(parts, _outputs(settings), _top(settings), compare_to, _data(settings),
                    imagenet_index)


def _compare_to(settings: _Settings) -> tuple[str | None, str | None]:
    """The published file to compare with, and the ImageNet index that places it."""
    compare_to = settings.pop("compare_to")
    if compare_to is None:
        settings.refuse("imagenet_index", "places the ImageNet C-scores of "
                        f"{settings.name('compare_to')}; give that too")
    return compare_to, settings.pop("imagenet_index")


def _estimates(settings: _Settings, source: Source, estimators: tuple[str, ...]
               ) -> EstimatesJob:
    chosen = ESTIMATORS if estimators == ("all",) else estimators
    needs = {  # setting -> the estimators that use it
        "metric": ("self_influence", "influence"),
        "test": ("memorization", "self_influence", "influence"),
        "confidence": ("memorization", "self_influence", "influence"),
        "alpha": ("memorization", "self_influence"),
        "fdr": ("memorization", "self_influence"),
        "fdr_untestable": ("memorization", "self_influence"),
        **{p: ("influence",) for p in ("influence_output", "top_k", "threshold",
                                       "eval_indices", "eval_shard", "lds_subset")}}
    for parameter, users in needs.items():
        if not set(users) & set(chosen):
            settings.refuse(parameter, f"used by {' and '.join(users)} only, not by "
                            f"{settings.name('estimators')}={','.join(estimators)}")
    if not settings.get("fdr"):
        settings.refuse("fdr_untestable", f"a setting of {settings.name('fdr')}; add it")
    threshold = settings.pop("threshold")
    if threshold is not None and not math.isfinite(threshold):
        raise ParameterError("threshold", "expected a finite number", threshold)
    top = _top(settings)
    examples = _examples(settings)
    config = EstimateConfig(
        estimators=chosen, subsets=_subsets(settings),
        **settings.take(("metric", "min_runs", "test", "confidence", "alpha", "fdr",
                         "fdr_untestable", "influence_output", "top_k")),
        threshold=threshold, eval_shard=examples.shard, num_pairs=max(top, 100))
    dense = config.influence_output == "dense"
    lds = _lds(settings, None if dense else
               f"needs the dense influence matrix ({settings.name('influence_output')}="
               "dense)")
    compare_to, imagenet_index = _compare_to(settings)
    return EstimatesJob(source, config, examples.indices, _outputs(settings), top,
                        compare_to, _data(settings), lds, imagenet_index)


def _datamodels(settings: _Settings, source: Source) -> DatamodelsJob:
    output_kind = settings.pop("influence_output", EstimateConfig.influence_output)
    if output_kind not in INFLUENCE_OUTPUTS:
        raise ParameterError("influence_output", f"expected {' or '.join(INFLUENCE_OUTPUTS)}",
                             output_kind)
    if output_kind == "dense":
        settings.refuse("top_k", "keeps the top datamodel weights only with "
                        f"{settings.name('influence_output')}=topk")
    top_k = settings.pop("top_k", EstimateConfig.top_k) if output_kind == "topk" else None
    config = DatamodelConfig(**settings.take(("metric",)), top_k=top_k)
    return DatamodelsJob(source, config, _one_subset(settings), _examples(settings),
                         settings.pop("output"),
                         _lds(settings, None if top_k is None else
                              "needs the dense datamodel weights "
                              f"({settings.name('influence_output')}=dense)"))


def _gradient(settings: _Settings, source: Source, method: str) -> GradientJob:
    config = _method_config(settings, method)
    if method == "tracin":
        settings.refuse("factors_path", "holds the factors of influence functions, not "
                        "TracIn")
    return GradientJob(source, method, config, _one_subset(settings),
                       _non_negative("run_id", settings.pop("run_id", 0)),
                       _examples(settings), settings.pop("factors_path"),
                       settings.pop("output"), _top(settings), _data(settings),
                       _lds(settings))


def _trak(settings: _Settings, source: Source) -> TRAKJob:
    config = _method_config(settings, TRAK)
    runs = settings.pop("trak_runs")
    if runs is None:
        run_ids = (_non_negative("run_id", settings.pop("run_id", 0)),)
    else:
        settings.refuse("run_id", f"TRAK scores the runs of {settings.name('trak_runs')}; "
                        "give one of the two")
        run_ids = tuple(designs.parse_run_ids(str(runs), "trak_runs"))
    return TRAKJob(source, config, run_ids, _one_subset(settings), _examples(settings),
                   settings.pop("output"), _data(settings), _lds(settings))


def _metagradient(settings: _Settings, source: Source) -> MetagradientJob:
    config = MetagradientConfig(**settings.take(("checkpoint_interval",)),
                                progress=source.progress)
    return MetagradientJob(source, config, _one_subset(settings),
                           _non_negative("run_id", settings.pop("run_id", 0)),
                           _examples(settings), settings.pop("output"), _data(settings),
                           _lds(settings))


def _method_config(settings: _Settings, method: str
                   ) -> TracInConfig | InfluenceConfig | TRAKConfig:
    """The method's config from the gradient settings given; one it lacks is refused."""
    given = settings.take(GRADIENT_SETTINGS)
    kind = {TRAK: TRAKConfig, "tracin": TracInConfig}.get(method, InfluenceConfig)
    fields = {f.name for f in dataclasses.fields(kind)} - {"strategy"}
    if method == TRAK:
        fields = (fields - {"seed"}) | {"projection_seed"}
    for parameter in given:
        if parameter not in fields:
            raise ParameterError(parameter, "not a setting of "
                                 f"{settings.name('estimators')}={method}")
    if "lambda_reg" in given:
        given["lambda_reg"] = _lambda_reg(given["lambda_reg"])
    return attribution_config.method_config(method, given)


def _lambda_reg(value: object) -> float | tuple[float, ...]:
    """One number, or a grid of several (from numbers or their text)."""
    values = value if isinstance(value, tuple | list) else (value,)
    try:
        grid = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise ParameterError("lambda_reg", "expected numbers",
                             ",".join(str(v) for v in values)) from None
    return grid[0] if len(grid) == 1 else grid


def _subsets(settings: _Settings) -> tuple[str, ...] | None:
    subsets = _tuple(settings.pop("subsets"))
    return None if subsets is None else tuple(_folder("subsets", s) for s in subsets)


def _folder(parameter: str, name: str) -> str:
    """A subset folder of the experiment: one path component, so reads stay inside it."""
    if name in ("", ".", "..") or name != name.strip() or any(c in name for c in "/\\\0"):
        raise ParameterError(parameter, "expected the name of a subset folder of the "
                             "experiment (no '/', '..' or empty name)", name)
    return name


def _tuple(values: object) -> tuple | None:
    return None if values is None else tuple(values)


def _check_positive(parameter: str, value: int) -> None:
    if value < 1:
        raise ParameterError(parameter, "expected a positive number", value)


def _non_negative(parameter: str, value: int) -> int:
    if value < 0:
        raise ParameterError(parameter, "expected a number >= 0", value)
    return value
