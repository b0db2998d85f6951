"""The per-run metrics an experiment's aux arrays can record (no TensorFlow here, so
settings that name a metric are checked before TensorFlow loads)."""

# correctness: 0/1 per example (the released keys); margin: correct-class logit minus
# the largest other; logodds: correct-class logit minus logsumexp of the others.
METRICS = ("correctness", "margin", "logodds")
