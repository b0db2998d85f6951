"""Layer 1, what the examples are: `Dataset`, the sources behind `load_dataset`, indexed
ImageNet records and on-device augmentation. Imports nothing else of heldout.
"""
