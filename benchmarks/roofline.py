"""The machine's matrix-product rate, measured in the running process (issue 17).

Benchmarks call `matmul_rate` once at start-up and print every result beside the floor
that rate implies (`roofline_line`): the time the result's matrix products alone would
take at the rate TensorFlow reaches on one large square product. Measuring in the same
process, next to the result, keeps the ratio honest on a machine shared with other jobs.

Usage (as a module):
  from benchmarks import roofline   # or `import roofline` from inside benchmarks/
  rate = roofline.matmul_rate("float32")
  print(roofline.roofline_line("top-10 influence", seconds, flop, rate))
"""

from __future__ import annotations

import time

DTYPES = ("float32", "bfloat16")


def matmul_rate(dtype: str = "float32", n: int = 3072, repeats: int = 5) -> float:
    """Floating-point operations per second of TensorFlow's ``[n, n] x [n, n]`` product.

    Two warm-up products (thread pools, kernel selection) are not timed; the rate is the
    best of `repeats` timed products (``2 n^3`` operations each), i.e. what the machine
    can do when the other jobs on it leave room.

    Args:
        dtype: ``"float32"`` or ``"bfloat16"`` (inputs and output in that type; on CPUs
            with AVX512_BF16 the products accumulate in float32).
        n: matrix side.
        repeats: timed products.

    Returns:
        flop/s.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r}: expected one of {DTYPES}")
    if n < 1 or repeats < 1:
        raise ValueError(f"n={n}, repeats={repeats}: expected positive numbers")
    import tensorflow as tf

    a = tf.cast(tf.random.stateless_uniform((n, n), seed=(0, 1)), dtype)
    b = tf.cast(tf.random.stateless_uniform((n, n), seed=(0, 2)), dtype)
    for _ in range(2):
        tf.matmul(a, b)[0, 0].numpy()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        tf.matmul(a, b)[0, 0].numpy()  # CPU ops run to completion before returning
        best = min(best, time.perf_counter() - start)
    return 2.0 * n**3 / best


def roofline_line(name: str, seconds: float, flop: float, rate: float,
                  dtype: str = "float32") -> str:
    """One line: the result, its floor at `rate`, and the fraction of the machine reached.

    E.g. ``"top-10 influence 11.8 s; floor 7.4 s at 271 GFLOP/s float32 (0.63 of the
    machine)"``.
    """
    floor = flop / rate
    return (f"{name} {seconds:.2f} s; floor {floor:.2f} s at {rate / 1e9:.0f} GFLOP/s "
            f"{dtype} ({floor / seconds:.2f} of the machine)")
