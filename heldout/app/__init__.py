"""The front doors: one typed job per mode of each CLI, and nothing else.

``train.py``, ``estimate.py`` and ``demo.py`` turn their flags into exactly one job of
this layer and call it; a flag the chosen job does not take is refused in one line. The
lower layers know nothing of jobs or flags: their errors name parameters
(`heldout.errors.ParameterError`), and this layer maps a parameter to its flag
(`heldout.app.cli`).

    cli.py            what every CLI does around its one call (flags before TensorFlow,
                      one line per error, parameter -> flag)
    train.py          the jobs of train.py and their runner
    estimate_jobs.py  the jobs of estimate.py (one per mode) and `estimate_job`, which
                      builds the one the settings given ask for (no TensorFlow)
    estimate.py       `run`: one match over those jobs
    demo.py           the two jobs of demo.py, `demo_job` and `run`
"""
