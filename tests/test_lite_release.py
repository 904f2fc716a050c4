"""dpact_tf.deploy.lite_release: the head's grid release in TFLite's cheaper ops equals dpact_tf.grid.release on the
same words (both table layouts), and its packed table and finiteness check say what they claim.  The written
.tflite is compared with the reference in tests/test_release_exact.py."""
import numpy as np
import pytest
import tensorflow as tf

from dpact_tf import grid, grid_tf, privacy
from dpact_tf.deploy import lite_release

DELTA = 1e-5
RANGE = float(np.float32(privacy.PAPER_ACTIVATION_RANGE))  # the largest clean value (grid_spec's default)


def _edge_words(table, shape, seed):
    """Uniform words with, scattered among them, every threshold's edges (256 t - 1, 256 t, 256 t + 255 and the next
    byte), 0, 255, 256 and 2^63 - 1, with both signs (-w - 1 has w's magnitude bits and a negative sign)."""
    rng = np.random.default_rng(seed)
    words = rng.integers(-2 ** 63, 2 ** 63 - 1, shape, dtype=np.int64, endpoint=True)
    t = table.thresholds.astype(np.int64) << 8
    edges = np.concatenate([t - 1, t, t + 255, t + 256, [0, 1, 255, 256, 2 ** 63 - 1]])
    edges = np.concatenate([edges, -edges - 1])
    flat = words.reshape(-1)
    flat[rng.permutation(flat.size)[:edges.size]] = edges
    return words


@pytest.mark.parametrize("steps_per_std, packed", [(16, True), (32, False)])
def test_release_levels_equal_the_reference(steps_per_std, packed):
    table = grid.noise_table(steps_per_std)
    assert (lite_release.packed_table(grid_tf.lookup_tables(table)) is not None) == packed
    rng = np.random.default_rng(steps_per_std)
    spec = grid.grid_spec(5.0, DELTA, steps_per_std=steps_per_std)
    # clean values over [0, true range], some exactly 0, at the range, and above it (whose levels the clamp to D cuts)
    clean = rng.uniform(0, RANGE, (4, 16, 16, 8)).astype(np.float32)
    clean.reshape(-1)[:64] = 0.0
    clean.reshape(-1)[64:128] = np.float32(RANGE)
    clean.reshape(-1)[128:192] = np.float32(2 * RANGE)
    words = _edge_words(table, clean.shape, seed=steps_per_std)
    levels = lite_release.release_levels(tf.constant(clean), tf.constant(words), tf.constant(np.float32(spec.scale)),
                                         tf.constant(np.float32(spec.max_level)), table)
    np.testing.assert_array_equal(levels.numpy(), grid.release(clean, words, spec))


def test_packed_table_keeps_split_and_low():
    lookup = grid_tf.lookup_tables(grid.noise_table(16))
    packed = lite_release.packed_table(lookup)
    # the low byte is |Z| at the bucket's smallest word; the rest is split's (whose low byte is always 255)
    np.testing.assert_array_equal(packed & 255, lookup.low)
    np.testing.assert_array_equal(packed >> 8, lookup.split >> 8)
    assert np.all(lookup.split & 255 == 255)
    # K = 32 has |Z| up to 273: no room in a byte
    assert int(grid_tf.lookup_tables(grid.noise_table(32)).low.max()) > 255


def test_fold_splits_sign_and_magnitude_bits():
    words = np.array([0, 1, 2 ** 63 - 1, -1, -2, -2 ** 63], np.int64)
    negative, v = lite_release.fold(tf.constant(words))
    assert negative.numpy().tolist() == [False, False, False, True, True, True]
    # -w - 1 for a negative word: -1 -> 0, -2 -> 1, -2^63 -> 2^63 - 1
    assert v.numpy().tolist() == [0, 1, 2 ** 63 - 1, 0, 1, 2 ** 63 - 1]


def test_finite_refuses_nan():
    clean = np.full((2, 4, 4, 8), 0.5, np.float32)
    assert bool(lite_release.finite(tf.constant(clean)))
    clean[1, 2, 3, 4] = np.nan
    assert not bool(lite_release.finite(tf.constant(clean)))
