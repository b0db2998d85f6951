"""Packaging of heldout: training-data attribution by retraining."""

import importlib.metadata

from setuptools import find_packages, setup

# Any of these provides the `tensorflow` module; the CPU build is enough for the tests,
# a GPU build is the user's choice. Only when none is installed do we ask for one.
_TENSORFLOW_DISTRIBUTIONS = ("tensorflow", "tensorflow-cpu", "tensorflow-gpu",
                             "tensorflow-macos", "tf-nightly", "tf-nightly-cpu")


def _tensorflow_requirement() -> list[str]:
    for name in _TENSORFLOW_DISTRIBUTIONS:
        try:
            importlib.metadata.version(name)
            return []
        except importlib.metadata.PackageNotFoundError:
            continue
    return ["tensorflow>=2.21"]


setup(
    name="heldout",
    version="0.1.0",
    description="Training-data attribution by retraining: memorization, influence, "
                "C-scores from many models trained on random subsets.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["heldout", "heldout.*"]),
    package_data={},
    python_requires=">=3.11",
    # Lower bounds are the versions the test suite was run with.
    install_requires=_tensorflow_requirement() + [
        "dm-sonnet>=2.0.2",
        "tensorflow-datasets>=4.9.10",
        # TFDS 4.9.10 imports it to download and prepare any data set but requires it
        # for Python < 3.9 only (tests/data/test_sources.py checks every module it imports).
        "importlib_resources>=6.0",
        "absl-py>=2.1",
        "numpy>=2.0",
        "scipy>=1.15",  # scipy.stats.bootstrap(rng=...)
        "scikit-learn>=1.5",
        "matplotlib>=3.9",
    ],
    extras_require={"test": ["pytest>=8", "pytest-xdist>=3.6", "ruff>=0.6", "pillow>=10"]},
)
