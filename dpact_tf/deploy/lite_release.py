"""The grid release of :mod:`dpact_tf.grid` in the TFLite kernels' cheapest ops: what the exported head runs.

:func:`dpact_tf.grid_tf.release_levels` is written for XLA, which fuses its ops into one pass; TFLite runs every op
on its own, most integer ops in single-threaded reference kernels, and some are several times slower than others
on the same tensor (measured at 8x64x64x8 on x86, LiteRT 2.3: an int32 MINIMUM, MAXIMUM or RIGHT_SHIFT against a
scalar takes the kernels' generic broadcast path, ~0.26 ms, a float32 MINIMUM ~0.03 ms).  :func:`release_levels`
computes the same integers from the same words with fewer and cheaper ops:

* the word's magnitude bits v as ``max(w, -1 - w)`` (``-(w + 1)`` for a negative word, ``w`` otherwise: one SUB and
  one MAXIMUM instead of ADD, NEG and SELECT), with :func:`fold`, which :func:`dpact_tf.deploy.entropy.plausible`
  calls too so that the converter computes it once;
* the dither j, the low byte of v, as a cast to uint8 (a cast truncates modulo 256) instead of a shift, a
  multiplication and a subtraction;
* one GATHER instead of two where every bucket's smallest |Z| fits a byte (K up to 24; the paper's K = 16 has
  |Z| <= 137): the "lookup" sampler's ``split[b]`` (256 t - 1, or 2^63 - 1 where the bucket holds no threshold)
  always ends in the byte 255, which :func:`packed_table` replaces by ``low[b]``; with v' = v - j (v with its low
  byte cleared), ``v' > packed[b]`` exactly when ``v > split[b]`` (both say v >> 8 >= t), and ``low[b]`` is the
  packed word's low byte;
* the clamp to the largest level D in float32 before the cast to int32 (``min(x, D)`` then the cast equals
  ``min(floor(x), D)`` for the finite x > 0 of a valid release) instead of two int32 clamps after it; the head
  refuses a release whose activation is not finite (:func:`finite`), where the cast would give any integer.

The noise |Z| comes from the ``"lookup"`` sampler's tables (:func:`dpact_tf.grid_tf.lookup_tables`), so the levels
are bit-identical to :func:`dpact_tf.grid.release` on the same words (tests/test_lite_release.py, and
tests/test_release_exact.py for the written .tflite).
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import tensorflow as tf

from dpact_tf import grid, grid_tf

__all__ = ["fold", "finite", "packed_table", "release_levels"]

_INT64_MAX = np.iinfo(np.int64).max
# Float32's largest finite value: a sum of non-negative activations below it is finite.
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def fold(words: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
    """(sign, magnitude bits) of int64 words: ``w < 0`` and v = ``max(w, -1 - w)`` in [0, 2^63) (no overflow:
    -1 - w is in int64 for every w)."""
    return words < 0, tf.maximum(words, tf.constant(-1, tf.int64) - words)


def finite(clean: tf.Tensor) -> tf.Tensor:
    """True iff every entry of the non-negative activation ``clean`` is finite: their sum is (a NaN makes it NaN,
    which fails the strict comparison, and the entries of Eq. (1)'s output are at most 1 / bias^beta, so the sum of
    finite ones stays far below float32's largest value)."""
    return tf.reduce_sum(clean) < _FLOAT32_MAX


def packed_table(lookup: grid_tf.LookupTables) -> Optional[np.ndarray]:
    """int64 [B]: ``split[b]`` with its low byte (always 255) replaced by ``low[b]``; ``None`` if some |Z| does
    not fit in a byte (K > 24)."""
    if int(lookup.low.max()) > 255 or np.any(lookup.split & 255 != 255):
        return None
    return (lookup.split & ~np.int64(255)) | lookup.low.astype(np.int64)


def release_levels(clean: tf.Tensor, words: tf.Tensor, scale: tf.Tensor, max_level: tf.Tensor,
                   table: grid.NoiseTable) -> tf.Tensor:
    """n = min(floor(max(f, 0) * scale + (j + 1/2) / 256), D) + Z as int32, :func:`dpact_tf.grid.release`, for a
    finite ``clean`` (float32), int64 ``words`` of its shape, ``scale`` >= 0 and ``max_level`` D as float32 scalars,
    and a ``table`` whose thresholds the lookup's buckets separate (``ValueError`` otherwise: use
    :func:`dpact_tf.grid_tf.release_levels` with ``sampler="tree"``)."""
    lookup = grid_tf.lookup_tables(table)
    negative, v = fold(words)
    low_byte = tf.cast(v, tf.uint8)  # j = v mod 256 (a cast truncates): the dither
    # |Z| = low[b] + (v > split[b]) in the bucket b of d = 2^63 - 1 - v (grid_tf's "lookup" sampler)
    distance = tf.constant(_INT64_MAX, tf.int64) - v
    bucket = tf.bitwise.right_shift(tf.bitcast(tf.cast(distance, tf.float32), tf.int32), lookup.shift)
    packed = packed_table(lookup)
    if packed is not None:
        entry = tf.gather(tf.constant(packed), bucket)
        above = v - tf.cast(low_byte, tf.int64) > entry
        magnitude = tf.cast(tf.cast(entry, tf.uint8), tf.int32) + tf.cast(above, tf.int32)
    else:
        above = v > tf.gather(tf.constant(lookup.split), bucket)
        magnitude = tf.gather(tf.constant(lookup.low), bucket) + tf.cast(above, tf.int32)
    noise = tf.where(negative, -magnitude, magnitude)
    u = (tf.cast(low_byte, tf.float32) + 0.5) * (1.0 / grid.DITHER_LEVELS)
    x = tf.maximum(clean, 0.0) * scale + u  # > 0 and finite: the cast after the clamp is the floor
    return tf.cast(tf.minimum(x, max_level), tf.int32) + noise
