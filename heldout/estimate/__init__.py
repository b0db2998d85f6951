"""Layer 5, estimates from an experiment's runs: pure-NumPy estimators, statistics,
the estimate pipeline, targeted reports and plots. Imports only the layers below.
"""
