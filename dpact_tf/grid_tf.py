"""The grid release of :mod:`dpact_tf.grid` as TensorFlow ops: the Keras layer's and the exported .tflite head's.

The ops are TFLite builtins only, so the same function runs in a Keras model and converts to the head; the Keras
layer runs it compiled with XLA (:func:`compiled_release_levels`), which fuses its integer ops into one pass.
Every sampler and both ways of running it are tested equal to :func:`dpact_tf.grid.release` on the same words.

Two samplers of the same noise:

* ``"lookup"`` (the default; the fastest, with and without XLA): the word's distance to the top,
  d = 2^63 - 1 - v, cast to float32, has its exponent and leading mantissa bits read as a bucket index
  (:func:`lookup_tables`: buckets on a log scale of d, i.e. of the tail probability, where the table's thresholds
  are spread); the buckets are fine enough that each holds at most one threshold, so a GATHER of the bucket's
  smallest |Z| and of its threshold and one comparison give |Z|.  The float32 cast only picks the bucket: the
  tables allow it to round either way, so |Z| is exact whatever rounding a runtime's cast uses.
* ``"tree"`` (for a table the lookup cannot separate): a branch-free binary search -- the thresholds (times 256,
  so the 64-bit word is compared without a shift) in breadth-first (Eytzinger) order, one GATHER and one
  comparison per level (the first two levels, whose three nodes are known, by comparisons with constants).

TFLite has no 64-bit AND: the dither is the low byte of the word's low 32 bits, by an arithmetic shift.

Entropy: one uniform int64 word per coordinate.  :func:`random_words` draws them inside a graph from a key
(stateless, so the key decides everything; the layer passes a fresh key per release); the head takes them from the
app.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable, Optional, Tuple

import numpy as np
import tensorflow as tf

from dpact_tf import grid

__all__ = ["LookupTables", "lookup_tables", "eytzinger_thresholds", "release_levels", "compiled_release_levels",
           "random_words", "SAMPLERS"]

SAMPLERS = ("lookup", "tree")
_INT64_MAX = np.iinfo(np.int64).max


def eytzinger_thresholds(table: grid.NoiseTable) -> np.ndarray:
    """256 t - 1 for the table's thresholds t, in breadth-first order of a complete binary search tree (index 1
    is the root; 0 unused), padded with int64 max to 2^L - 1 entries.  A word's magnitude bits reach t iff
    v > 256 t - 1 (so the padding is never passed, even by v = 2^63 - 1): |Z| = (node after L levels) - 2^L."""
    scaled = (table.thresholds.astype(np.int64) << 8) - 1
    levels = int(np.ceil(np.log2(len(scaled) + 1)))
    padded = np.concatenate([scaled, np.full((1 << levels) - 1 - len(scaled), _INT64_MAX, np.int64)])
    out = np.zeros(1 << levels, np.int64)
    it = iter(padded)

    def fill(node: int) -> None:  # in-order walk of the implicit tree assigns the sorted values
        if node < (1 << levels):
            fill(2 * node)
            out[node] = next(it)
            fill(2 * node + 1)

    fill(1)
    return out


@dataclasses.dataclass(frozen=True)
class LookupTables:
    """The ``"lookup"`` sampler's tables, indexed by bucket b = bits(float32(2^63 - 1 - v)) >> shift: every v whose
    d = 2^63 - 1 - v casts (rounded either way) to a float32 of bucket b has |Z| = low[b] + (v > split[b])."""

    shift: int           # right shift of the float32's bits: 23 - shift leading mantissa bits per octave of d
    low: np.ndarray      # int32 [B]: |Z| at the bucket's smallest v
    split: np.ndarray    # int64 [B]: threshold * 256 - 1 of the one threshold inside the bucket (int64 max: none)


def _bucket_words(shift: int) -> Tuple[np.ndarray, np.ndarray]:
    """(v_lo, v_hi) int64 per bucket: the words whose d = 2^63 - 1 - v may cast to a float32 of the bucket, whether the
    cast rounds down or up (d lies strictly between the float32 values just outside the bucket)."""
    top = int(np.array(float(2 ** 63), np.float32).view(np.int32))  # the bits of float32(2^63), the largest d's
    buckets = (top >> shift) + 1
    v_lo, v_hi = np.empty(buckets, np.int64), np.empty(buckets, np.int64)
    for b in range(buckets):
        first, last = b << shift, ((b + 1) << shift) - 1
        below = -1.0 if first == 0 else float(np.array(first - 1, np.int32).view(np.float32))
        above = float(np.array(last + 1, np.int32).view(np.float32))
        d_lo = max(0, math.floor(below) + 1)                   # d > the float32 below the bucket
        d_hi = min(_INT64_MAX, math.ceil(above) - 1)           # d < the float32 above it
        v_lo[b], v_hi[b] = _INT64_MAX - min(d_hi, _INT64_MAX), _INT64_MAX - d_lo
    return v_lo, v_hi


def lookup_tables(table: grid.NoiseTable) -> LookupTables:
    """The coarsest buckets (largest shift) in which no bucket holds two thresholds: the table's thresholds are
    spaced at least ~1/20 of the tail probability apart, so 16 buckets per octave of d suffice for the paper's K
    (a bucket with a repeated threshold, which |Z| would jump by 2, counts as two); ``ValueError`` if none do."""
    return _lookup_tables(table.thresholds.astype(np.int64).tobytes(), table.steps_per_std)


@functools.lru_cache(maxsize=None)
def _lookup_tables(thresholds: bytes, steps_per_std: int) -> LookupTables:
    scaled = np.frombuffer(thresholds, np.int64) << 8
    for shift in range(20, 8, -1):
        v_lo, v_hi = _bucket_words(shift)
        low = np.searchsorted(scaled, v_lo, side="right")
        high = np.searchsorted(scaled, v_hi, side="right")
        if np.all(high - low <= 1):  # the thresholds in (v_lo, v_hi] are scaled[low:high]
            split = np.where(high > low, scaled[np.minimum(low, len(scaled) - 1)] - 1, _INT64_MAX)
            return LookupTables(shift, low.astype(np.int32), split.astype(np.int64))
    raise ValueError(f"no bucket size separates the thresholds of the table with K = {steps_per_std}")


def _magnitude(v: tf.Tensor, table: grid.NoiseTable, sampler: str) -> tf.Tensor:
    """#{m : thresholds[m] <= v >> 8} (int32) for v in [0, 2^63)."""
    if sampler == "lookup":
        t = lookup_tables(table)
        distance = tf.constant(_INT64_MAX, tf.int64) - v
        bucket = tf.bitwise.right_shift(tf.bitcast(tf.cast(distance, tf.float32), tf.int32), t.shift)
        above = v > tf.gather(tf.constant(t.split), bucket)
        return tf.gather(tf.constant(t.low), bucket) + tf.cast(above, tf.int32)
    below = eytzinger_thresholds(table)  # 256 t - 1 per node, int64 max as padding: v > node <=> v >> 8 >= t
    levels = int(np.log2(len(below)))
    # the first levels' nodes are known: after them, node = 2^top + #{their thresholds below v}
    top = min(2, levels)
    node = tf.constant(1 << top, tf.int32)
    for t in below[1:1 << top]:
        node = node + tf.cast(v > t, tf.int32)
    below = tf.constant(below)
    for _ in range(levels - top):
        node = node + node + tf.cast(v > tf.gather(below, node), tf.int32)
    return node - (1 << levels)


def release_levels(clean: tf.Tensor, words: tf.Tensor, scale: tf.Tensor, max_level: tf.Tensor,
                   table: Optional[grid.NoiseTable] = None, *, sampler: str = "lookup") -> tf.Tensor:
    """n = clip(floor(max(f, 0) * scale + (j + 1/2) / 256), 0, D) + Z as int32: :func:`dpact_tf.grid.release`.

    ``clean`` float32, ``words`` int64 of the same shape, ``scale`` float32 (grid steps per unit), ``max_level``
    int32 D.  The float32 operations are the reference's, in its order, so the levels are bit-identical."""
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS} (got {sampler!r})")
    table = table or grid.noise_table()
    negative = words < 0
    v = tf.where(negative, -(words + 1), words)
    magnitude = _magnitude(v, table, sampler)
    noise = tf.where(negative, -magnitude, magnitude)
    low = tf.cast(v, tf.int32)  # the low 32 bits; their low byte is the dither
    dither = low - tf.bitwise.right_shift(low, 8) * 256
    u = (tf.cast(dither, tf.float32) + 0.5) * (1.0 / grid.DITHER_LEVELS)
    x = tf.maximum(clean, 0.0) * scale + u
    # x > 0: the cast is the floor; the clamp keeps every level in [0, D] whatever the float computation gave
    # (an out-of-range or NaN activation casts to an arbitrary int32).
    level = tf.clip_by_value(tf.cast(x, tf.int32), 0, max_level)
    return level + noise


def compiled_release_levels(table: Optional[grid.NoiseTable] = None, *,
                            sampler: str = "lookup") -> Callable[..., tf.Tensor]:
    """:func:`release_levels` for ``table`` compiled with XLA (one fused pass over the coordinates, ~6x faster on
    a CPU than the ops one by one): ``f(clean, words, scale, max_level) -> levels``, bit-identical to the reference
    (tests/test_grid.py).  Cached per table and sampler."""
    table = table or grid.noise_table()
    return _compiled(table.steps_per_std, table.thresholds.astype(np.int64).tobytes(), sampler)


@functools.lru_cache(maxsize=None)
def _compiled(steps_per_std: int, thresholds: bytes, sampler: str) -> Callable[..., tf.Tensor]:
    table = grid.noise_table(steps_per_std)
    if table.thresholds.astype(np.int64).tobytes() != thresholds:
        raise ValueError("a noise table other than grid.noise_table(steps_per_std) cannot be compiled")
    return tf.function(lambda clean, words, scale, max_level: release_levels(clean, words, scale, max_level, table,
                                                                             sampler=sampler),
                       jit_compile=True, reduce_retracing=True)


def random_words(shape: tf.Tensor, key: tf.Tensor) -> tf.Tensor:
    """Uniform int64 words over the full range from an int64[2] key (stateless: the key decides every word)."""
    return tf.random.stateless_uniform(shape, seed=key, dtype=tf.int64, minval=None, maxval=None)
