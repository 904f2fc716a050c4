"""The phone head's release, tested the way the server attacks it: it holds the .tflite and one release."""
import numpy as np
import tensorflow as tf

from dpact_tf import grid, grid_tf

DELTA = 1e-5
LO, HI = grid.certified_epsilons(DELTA)


def _words(shape, seed):
    """Uniform int64 words, with the words at every threshold of the table and next to it (both signs) scattered
    among them: 0, 255, 256, 2^63 - 1 and -2^63 (all magnitude bits set: the largest |Z|) among them."""
    rng = np.random.default_rng(seed)
    words = rng.integers(-2 ** 63, 2 ** 63 - 1, shape, dtype=np.int64, endpoint=True)
    t = grid.noise_table().thresholds.astype(np.int64) << 8
    edges = np.concatenate([t - 1, t, t + 255, t + 256, [0, 1, 255, 256, 2 ** 63 - 1]])
    edges = np.concatenate([edges, -edges - 1])  # the same magnitudes with a negative sign
    flat = words.reshape(-1)
    where = rng.permutation(flat.size)[:edges.size]
    flat[where] = edges[:where.size]
    return words


def _spec(epsilon):
    return grid.grid_spec(epsilon, DELTA, steps_per_std=grid.STEPS_PER_STD)


def test_tree_sampler_equals_the_reference_on_every_threshold():
    # The TFLite sampler as TF ops, against grid.release: the words at each threshold of the table and next to it,
    # 0, 2^63 - 1 and -2^63 (whose magnitude bits are all ones: the largest |Z|, not the search tree's padding)
    words = _words((4, 8, 16, 16), seed=1)
    clean = np.random.default_rng(2).uniform(0, 0.6, words.shape).astype(np.float32)
    for eps in (LO * (1 + 1e-6), 5.0, HI * (1 - 1e-6)):
        spec = _spec(eps)
        ref = grid.release(clean, words, spec)
        for sampler in grid_tf.SAMPLERS:
            out = grid_tf.release_levels(tf.constant(clean), tf.constant(words), tf.constant(np.float32(spec.scale)),
                                         tf.constant(spec.max_level, tf.int32), sampler=sampler).numpy()
            np.testing.assert_array_equal(out, ref, err_msg=f"{sampler} at epsilon {eps}")
    top = grid.noise_table().max_magnitude
    assert grid.sample(np.array([2 ** 63 - 1, -2 ** 63], np.int64)).tolist() == [top, -top]
