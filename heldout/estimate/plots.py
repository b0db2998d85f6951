"""PNG figures of estimates: what researchers look at rather than read.

* a histogram of memorization scores;
* a grid of the most memorized training images with label and score;
* for the highest-influence test examples, each test image beside its most
  influential training images with their scores (as in Feldman & Zhang's figure).

Images are ``[H, W, C]`` floats in [0, 1] (``C`` 1 or 3); inputs that are not images
get the histogram only.
"""

from __future__ import annotations

import io

import numpy as np

from heldout.store import files


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def is_image_data(x: np.ndarray) -> bool:
    """Whether `x` is ``[n, H, W, C]`` with one or three channels."""
    return x.ndim == 4 and x.shape[-1] in (1, 3)


def _show(ax, image: np.ndarray, title: str) -> None:
    image = np.clip(image, 0.0, 1.0)
    if image.shape[-1] == 1:
        ax.imshow(image[..., 0], cmap="gray_r", vmin=0.0, vmax=1.0)
    else:
        ax.imshow(image)
    ax.set_title(title, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])


def plot_memorization_histogram(scores: np.ndarray, path: str, title: str = "") -> str:
    """Histogram of finite memorization scores, log-scaled counts; returns `path`."""
    plt = _pyplot()
    scores = scores[np.isfinite(scores)]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.hist(scores, bins=np.linspace(min(-0.2, scores.min(initial=0)), 1.0, 41),
            color="tab:blue", edgecolor="white")
    ax.set_yscale("log")
    ax.set_xlabel("memorization score  P[correct | in] - P[correct | out]")
    ax.set_ylabel("training examples")
    ax.set_title(title or f"Memorization of {len(scores)} training examples")
    ax.axvline(0.25, color="tab:red", linestyle="--", linewidth=1, label="0.25")
    ax.legend()
    return _save(fig, path)


def plot_cscore_histogram(scores: np.ndarray, ratios: np.ndarray, path: str) -> str:
    """Histogram of training-example C-scores; returns `path`."""
    plt = _pyplot()
    scores = scores[np.isfinite(scores)]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.hist(scores, bins=np.linspace(0.0, 1.0, 41), color="tab:green", edgecolor="white")
    ax.set_yscale("log")
    ax.set_xlabel("C-score  (held-out accuracy, averaged over subset ratios)")
    ax.set_ylabel("training examples")
    ax.set_title(f"C-scores of {len(scores)} training examples, ratios "
                 f"{', '.join(f'{r:g}' for r in ratios)}", fontsize=9)
    return _save(fig, path)


def plot_top_memorized(images: np.ndarray, labels: np.ndarray, scores: np.ndarray,
                       path: str, count: int = 40, columns: int = 10) -> str:
    """Grid of the `count` highest-scoring training images, each titled index/label/score."""
    plt = _pyplot()
    order = np.argsort(-np.nan_to_num(scores, nan=-np.inf), kind="stable")[:count]
    rows = max(1, -(-len(order) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 1.25, rows * 1.65),
                             squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, i in zip(axes.ravel(), order, strict=False):
        ax.axis("on")
        _show(ax, images[i], f"#{i} y={labels[i]}\nmem={scores[i]:.2f}")
    fig.suptitle("Most memorized training examples", fontsize=10)
    return _save(fig, path)


def plot_influence_pairs(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray,
                         y_test: np.ndarray, pair_train: np.ndarray, pair_test: np.ndarray,
                         pair_score: np.ndarray, path: str, num_test: int = 6,
                         per_test: int = 4) -> str:
    """Test examples beside their most influential training images.

    Pairs are given best first; test examples appear in the order of their best pair,
    each with its first `per_test` pairs.
    """
    plt = _pyplot()
    test_order = list(dict.fromkeys(int(t) for t in pair_test))[:num_test]
    fig, axes = plt.subplots(max(len(test_order), 1), per_test + 1,
                             figsize=((per_test + 1) * 1.4, max(len(test_order), 1) * 1.55),
                             squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for row, test in zip(axes, test_order, strict=False):
        row[0].axis("on")
        _show(row[0], x_test[test], f"test #{test} y={y_test[test]}")
        for spine in row[0].spines.values():
            spine.set_color("tab:red")
            spine.set_linewidth(2)
        mine = np.flatnonzero(pair_test == test)[:per_test]
        for ax, p in zip(row[1:], mine, strict=False):
            ax.axis("on")
            train = pair_train[p]
            _show(ax, x_train[train], f"#{train} y={y_train[train]}\ninfl={pair_score[p]:.2f}")
    fig.suptitle("Test examples (red) and their most influential training examples",
                 fontsize=10)
    return _save(fig, path)


def _save(fig, path: str) -> str:
    """Writes `fig` as a PNG atomically through tf.io.gfile (so gs:// works), closes it."""
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    _pyplot().close(fig)
    files.write_bytes(path, buffer.getvalue())
    return path


def plot_targeted_self_influence(scores: np.ndarray, ci_low: np.ndarray, ci_high: np.ndarray,
                                 groups: list[str], indices: np.ndarray, path: str,
                                 confidence: float = 0.99, metric: str = "logodds") -> str:
    """Per target example: self-influence with its confidence interval, colored by group."""
    plt = _pyplot()
    names = list(dict.fromkeys(groups))
    colors = dict(zip(names, ["tab:blue", "tab:orange", "tab:green", "tab:purple",
                              "tab:red", "tab:brown"] * 4, strict=False))
    order = sorted(range(len(scores)), key=lambda i: (names.index(groups[i]), -scores[i]))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.22 * len(scores) + 2), 4.2))
    for position, i in enumerate(order):
        ax.errorbar(position, scores[i], yerr=[[scores[i] - ci_low[i]], [ci_high[i] - scores[i]]],
                    fmt="o", color=colors[groups[i]], markersize=4, capsize=2,
                    label=groups[i])
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))
    ax.legend(unique.values(), unique.keys())
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(order)))
    ax.set_xticklabels([str(indices[i]) for i in order], rotation=90, fontsize=7)
    ax.set_xlabel("target training example")
    ax.set_ylabel(f"self-influence on {metric}\n(with - without)")
    ax.set_title(f"Targeted self-influence with {confidence:.0%} intervals")
    return _save(fig, path)


def plot_estimate_scatter(x: np.ndarray, y: np.ndarray, path: str, x_label: str,
                          y_label: str, threshold: float | None = None,
                          title: str = "") -> str:
    """Scatter of one estimate against another (ours vs published), with the diagonal and,
    when given, the threshold on both axes."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.scatter(x, y, s=4, alpha=0.4 if len(x) > 1000 else 0.8, linewidths=0)
    low = float(min(np.min(x), np.min(y))) if len(x) else 0.0
    high = float(max(np.max(x), np.max(y))) if len(x) else 1.0
    ax.plot([low, high], [low, high], color="gray", lw=0.8)
    if threshold is not None:
        ax.axvline(threshold, color="tab:red", lw=0.8, ls="--")
        ax.axhline(threshold, color="tab:red", lw=0.8, ls="--")
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    ax.set_title(title, fontsize=9)
    return _save(fig, path)


def plot_lds_against_cost(points: dict[str, list[tuple[float, float, float, float, int]]],
                          path: str, title: str = "", ceiling: float | None = None
                          ) -> tuple[str, list[str]]:
    """LDS of attribution methods against their cost, each point labelled with the number
    of trained models it uses.

    Args:
        points: family (a line) -> its points ``(cost seconds, LDS mean, interval low,
            interval high, models)``; drawn in order of cost, on a log cost axis.
        path: the PNG.
        title: the figure's title.
        ceiling: the noise ceiling of the LDS runs (`heldout.estimate.lds.noise_ceiling`),
            drawn as a dashed line; None: not drawn.

    Returns:
        ``(path, labels)``: the labels written beside the points, in drawing order
        (``"1 model"``, ``"20 models"``).
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 5.0))
    labels = []
    # One color per family (more families than the default cycle's 10 would repeat).
    colors = plt.get_cmap("tab20" if len(points) > 10 else "tab10").colors
    for index, (family, members) in enumerate(points.items()):
        members = sorted(members, key=lambda point: point[0])
        cost = np.array([p[0] for p in members])
        mean = np.array([p[1] for p in members])
        error = np.abs(np.array([[p[2] for p in members], [p[3] for p in members]]) - mean)
        line = ax.errorbar(cost, mean, yerr=np.nan_to_num(error), marker="o", capsize=3,
                           label=family, color=colors[index % len(colors)])
        for x, y, (*_, models) in zip(cost, mean, members, strict=True):
            text = f"{models} model{'s' if models != 1 else ''}"
            labels.append(text)
            ax.annotate(text, (x, y), xytext=(4, -9), textcoords="offset points", fontsize=6,
                        color=line[0].get_color())
    ax.set_xscale("log")
    ax.set_xlabel("cost: seconds (training of the models used + the method), log scale")
    ax.set_ylabel("LDS (mean Spearman over test examples)")
    ax.axhline(0, color="k", lw=0.5)
    if ceiling is not None and np.isfinite(ceiling):
        ax.axhline(ceiling, color="k", ls="--", lw=1,
                   label=f"noise ceiling ({ceiling:.3f})")
    ax.set_title((title + "\n" if title else "") + "each point: the number of trained "
                 "models it uses (runs for retraining, ensemble size otherwise)", fontsize=8)
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    return _save(fig, path), labels
