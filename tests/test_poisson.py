"""Poisson-sampled batches: the sampling rate the accountant assumes, fresh draws per epoch, seeded."""
import math

import numpy as np
import pytest

from dpact_tf.baselines.poisson import PoissonBatches


def _data(n=500):
    """Float images whose pixel encodes the example's index (i / n), labels i mod 7."""
    images = (np.arange(n, dtype=np.float64) / n).reshape(n, 1, 1, 1).repeat(2, axis=1)
    return images, np.arange(n) % 7


def _index(x, n):
    return np.rint(x[:, 0, 0, 0].astype(np.float64) * n).astype(int)


def test_each_example_is_included_with_probability_b_over_n():
    """Over 200 epochs of 10 steps (2,000 draws per example), each example's inclusion frequency is q = 50/500;
    the mean over 500 examples within 4 standard errors (sqrt(q(1-q)/(500 x 2,000)))."""
    images, labels = _data()
    batches = PoissonBatches(images, labels, expected_batch_size=50, seed=3)
    assert len(batches) == 10 and batches.sampling_rate == 0.1
    counts = np.zeros(500)
    sizes = []
    for _ in range(200):
        for x, y in batches:
            assert x.dtype == np.float32 and y.dtype == np.int32 and len(x) == len(y)
            counts[_index(x, 500)] += 1
            sizes.append(len(y))
    q, draws = 0.1, 2000
    freq = counts / draws
    assert abs(freq.mean() - q) < 4 * math.sqrt(q * (1 - q) / (500 * draws))
    assert len(set(sizes)) > 5  # the batch size varies (fixed-size batches would give one value)
    # each example's own frequency: binomial(2000, 0.1) has std 0.0067; none strays 6 std
    assert np.all(np.abs(freq - q) < 6 * math.sqrt(q * (1 - q) / draws))


def test_labels_follow_their_images_and_pixels_are_scaled():
    images, labels = _data(50)
    for x, y in PoissonBatches(images, labels, expected_batch_size=10, seed=0):
        assert np.array_equal(y, labels[_index(x, 50)])
    uint8 = np.full((20, 2, 2, 3), 255, np.uint8)
    for x, _ in PoissonBatches(uint8, np.zeros(20), expected_batch_size=10, seed=0):
        assert x.dtype == np.float32 and np.all(x == 1.0)


def test_same_seed_same_batches_new_epoch_new_batches():
    images, labels = _data(100)
    a = [y.tolist() for y in (b for _, b in PoissonBatches(images, labels, expected_batch_size=10, seed=1))]
    again = PoissonBatches(images, labels, expected_batch_size=10, seed=1)
    first = [y.tolist() for _, y in again]
    second = [y.tolist() for _, y in again]
    assert a == first and first != second


@pytest.mark.parametrize("batch", [0, 101, 2.5])
def test_refuses_bad_batch_sizes(batch):
    images, labels = _data(100)
    with pytest.raises(ValueError, match="expected_batch_size"):
        PoissonBatches(images, labels, expected_batch_size=batch)
    with pytest.raises(ValueError, match="as many images"):
        PoissonBatches(images[:5], labels, expected_batch_size=2)
