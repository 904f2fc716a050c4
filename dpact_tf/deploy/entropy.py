"""The head's checks of the app's entropy, as TensorFlow builtin ops: the words are the release's only noise source,
so a buffer that could give no noise, or the last call's noise again, is refused in the graph itself.

* :func:`plausible` -- the activation's shape (LiteRT would broadcast a [1, 1, 1, C] buffer) and a plausible spread:
  the words below 0 and those in [-2^62, 2^62) each half of the buffer within :data:`ENTROPY_TOLERANCE_SE` standard
  errors (a zero-filled or constant buffer, 63-bit words that are never negative, or 32-bit values sign-extended to
  64 bits, which would give no noise at all, fail);
* :func:`fresh` -- not the last accepted call's: the first :data:`FINGERPRINT_SIZE` words of the buffer's first row
  and the last of its last row are kept in a resource variable, and a call whose entropy matches either end is
  refused (LiteRT keeps an input tensor between calls: an app that forgets to refill would release a second image
  with the first one's noise; a buffer resized or refilled at one end only keeps the other).
"""
from __future__ import annotations

import tensorflow as tf

from dpact_tf.deploy import lite_release

__all__ = ["FINGERPRINT_SIZE", "ENTROPY_TOLERANCE_SE", "plausible", "fresh", "fingerprint_variable"]

# Words at each end of ``release``'s entropy kept in the head's fingerprint of the last accepted call.
FINGERPRINT_SIZE = 8
# The entropy's plausibility checks allow this many standard errors (a fair buffer fails with probability ~1e-23).
ENTROPY_TOLERANCE_SE = 10.0


def plausible(entropy: tf.Tensor, act_shape: tf.Tensor) -> tf.Tensor:
    """True iff ``entropy`` has the activation's shape and a plausible spread: the words below 0 and those in
    [-2^62, 2^62) are each n/2 within ENTROPY_TOLERANCE_SE standard errors (sqrt(n)/2) of a fair count."""
    shape_ok = tf.reduce_all(tf.equal(tf.shape(entropy), act_shape))
    # The same ops as the release's (lite_release.fold), so that the converter computes them once: v < 2^62
    # exactly when the word is in [-2^62, 2^62).
    negative, v = lite_release.fold(entropy)
    middle = v < tf.constant(1 << 62, tf.int64)
    n = tf.cast(tf.size(entropy), tf.float32)
    tolerance = ENTROPY_TOLERANCE_SE * 0.5 * tf.sqrt(n)
    ok = shape_ok
    for bits in (negative, middle):
        count = tf.cast(tf.reduce_sum(tf.cast(bits, tf.int32)), tf.float32)
        ok = tf.logical_and(ok, tf.abs(count - 0.5 * n) < tolerance)
    return ok


def fingerprint_variable() -> tf.Variable:
    """The head's memory of the last accepted call: its first and last FINGERPRINT_SIZE words (0: none yet)."""
    return tf.Variable(tf.zeros([2 * FINGERPRINT_SIZE], tf.int64), trainable=False, name="entropy_fingerprint")


def fresh(entropy: tf.Tensor, valid: tf.Tensor, last: tf.Variable) -> tf.Tensor:
    """``valid`` and not the last accepted call's entropy (``last``: :func:`fingerprint_variable`); remembers this
    call's if it is accepted."""
    # The first FINGERPRINT_SIZE words of the first row and the last of the last row (zero-padded when a row is
    # shorter; sliced before reshaping: no full-size copy, and only the pixels that hold them when the channels are
    # known: TFLite's STRIDED_SLICE copies word by word, and a whole row is a fixed cost per call).  EITHER end
    # matching refuses: a stale buffer that was resized (LiteRT keeps a tensor's contents when it shrinks) or
    # refilled at one end keeps the other.
    channels = entropy.shape[-1]
    pixels = None if channels is None else -(-FINGERPRINT_SIZE // int(channels))  # ceil(FINGERPRINT_SIZE / C)
    head_row = tf.reshape(entropy[:1, :1, :pixels], [-1])[:FINGERPRINT_SIZE]
    tail_row = tf.reshape(entropy[-1:, -1:, -pixels if pixels else None:], [-1])[-FINGERPRINT_SIZE:]
    pad = tf.zeros([FINGERPRINT_SIZE], tf.int64)
    fingerprint = tf.concat([tf.concat([head_row, pad], 0)[:FINGERPRINT_SIZE],
                             tf.concat([pad, tail_row], 0)[-FINGERPRINT_SIZE:]], 0)
    same = tf.equal(fingerprint, last)
    repeated = tf.logical_or(tf.reduce_all(same[:FINGERPRINT_SIZE]), tf.reduce_all(same[FINGERPRINT_SIZE:]))
    valid = tf.logical_and(valid, tf.logical_not(repeated))
    last.assign(tf.where(valid, fingerprint, last))
    return valid
