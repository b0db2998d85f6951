"""Estimates memorization and influence from the runs of a heldout experiment.

Reads every complete run of one subset folder, computes per-example memorization
and train-to-test influence (SPEC §4), saves them to an .npz, and prints the most
memorized examples and the highest-influence pairs.

Usage:
  python estimate.py
  python estimate.py --experiment_dir=gs://bucket/cifar10 --subset=0.7 --top=20
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

_EXPERIMENT_DIR = flags.DEFINE_string(
    "experiment_dir", "./experiments/digits", "Experiment directory (local or gs://).")
_SUBSET = flags.DEFINE_string(
    "subset", None, "Subset folder to use (e.g. '0.7'); default: the only one present.")
_OUTPUT = flags.DEFINE_string(
    "output", None, "Where to save the estimates (.npz); default: "
    "<experiment_dir>/estimates-<subset>.npz.")
_DATASET = flags.DEFINE_string(
    "dataset", None, "Data set, only to print labels; default: the one the experiment "
    "was trained on (none for released runs).")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data directory.")
_TOP = flags.DEFINE_integer("top", 10, "Rows of each printed table.")
_DENSE_INFLUENCE = flags.DEFINE_bool(
    "dense_influence", True, "Save the whole [num_train, num_test] influence matrix.")
_MIN_RUNS = flags.DEFINE_integer(
    "min_runs", 1, "Fewest in- and out-runs an example needs to get a score (else NaN).")
_PLOT_DIR = flags.DEFINE_string(
    "plot_dir", None, "Write PNG figures here (histogram, top memorized, influence pairs).")
_PROGRESS = flags.DEFINE_bool("progress", True, "Show a progress bar.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    import heldout

    try:
        if _TOP.value < 1:
            raise ValueError(f"--top={_TOP.value}: expected a positive number")
        estimates = heldout.estimate_experiment(
            _EXPERIMENT_DIR.value, _SUBSET.value, num_pairs=max(_TOP.value, 100),
            dense_influence=_DENSE_INFLUENCE.value, min_runs=_MIN_RUNS.value,
            progress=_PROGRESS.value)
        output = _OUTPUT.value or os.path.join(
            _EXPERIMENT_DIR.value, f"estimates-{estimates.subset}.npz")
        heldout.save_estimates(estimates, output)
        dataset = _DATASET.value or heldout.read_experiment_info(
            _EXPERIMENT_DIR.value).get("dataset")
        data = heldout.load_dataset(dataset, _DATA_DIR.value) if dataset else None
        figures = heldout.plot_estimates(estimates, _PLOT_DIR.value, data) \
            if _PLOT_DIR.value else []
    except ValueError as e:
        sys.exit(f"estimate.py: error: {e}")
    print(heldout.format_report(estimates, None if data is None else data.y_train,
                                None if data is None else data.y_test, top=_TOP.value))
    print(f"\nSaved estimates to {output}")
    for figure in figures:
        print(f"Saved figure {figure}")


if __name__ == "__main__":
    app.run(main)
