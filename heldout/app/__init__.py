"""The front doors: one typed job per mode of each CLI, and nothing else.

``train.py``, ``estimate.py`` and ``demo.py`` turn their flags into exactly one job of
this layer and call it; a flag the chosen job does not take is refused in one line. The
lower layers know nothing of jobs or flags: their errors name parameters
(`heldout.errors.ParameterError`), and this layer maps a parameter to its flag
(`heldout.app.cli`).
"""
