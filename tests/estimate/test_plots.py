"""Tests of heldout.estimate.plots not covered beside their producers (the estimate and
targeted figures are drawn in test_pipeline.py and test_targeted.py)."""

from heldout.estimate import plots

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_lds_plot_labels_each_point_with_its_models(tmp_path):
    points = {"TRAK": [(51.6, 0.66, 0.647, 0.673, 20), (6.0, 0.544, 0.529, 0.558, 1)],
              "datamodels": [(3.9, 0.169, 0.162, 0.175, 100)]}
    path = str(tmp_path / "figures" / "lds.png")
    written, labels = plots.plot_lds_against_cost(points, path, title="digits")
    assert written == path
    assert labels == ["1 model", "20 models", "100 models"]  # by cost within a family
    with open(path, "rb") as handle:
        assert handle.read(8) == PNG_SIGNATURE


def test_lds_plot_draws_the_noise_ceiling_and_many_families(tmp_path):
    points = {f"method {k}": [(1.0 + k, 0.05 * k, 0.04 * k, 0.06 * k, 1)] for k in range(12)}
    path = str(tmp_path / "lds.png")
    written, labels = plots.plot_lds_against_cost(points, path, ceiling=0.868)
    assert written == path and len(labels) == 12
    with open(path, "rb") as handle:
        assert handle.read(8) == PNG_SIGNATURE
