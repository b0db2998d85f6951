"""Layer 2, everything about an experiment directory: layout, atomic files, runs, designs
(subset folders), target sets, coordination of workers and the released tarballs.
Imports only `heldout.data`; no model math.
"""
