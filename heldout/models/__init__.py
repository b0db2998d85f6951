"""Layer 3, Sonnet modules (attribute names are checkpoint structure), prediction arrays
and checkpoint restore. Imports only `heldout.data` and `heldout.store`.
"""
