"""dpact_tf.deploy.entropy: the fingerprint the head keeps of the last accepted entropy holds exactly the first
FINGERPRINT_SIZE words of the buffer's first row and the last of its last row, whatever the channels (the refusals
themselves, on the written .tflite: tests/test_release_exact.py)."""
import numpy as np
import pytest
import tensorflow as tf

from dpact_tf.deploy import entropy

F = entropy.FINGERPRINT_SIZE


@pytest.mark.parametrize("shape", [(2, 3, 5, 8), (2, 3, 5, 3), (2, 3, 5, 16), (1, 1, 2, 3), (1, 2, 1, 1)])
def test_fingerprint_is_the_first_and_last_words_of_the_end_rows(shape):
    words = np.arange(1, np.prod(shape) + 1, dtype=np.int64).reshape(shape)
    first, last = words[0, 0].ravel()[:F], words[-1, -1].ravel()[-F:]
    # a row shorter than FINGERPRINT_SIZE words is zero-padded: after the first row's words, before the last row's
    expected = np.concatenate([first, np.zeros(F - first.size, np.int64), np.zeros(F - last.size, np.int64), last])
    kept = entropy.fingerprint_variable()
    assert bool(entropy.fresh(tf.constant(words), tf.constant(True), kept))
    np.testing.assert_array_equal(kept.numpy(), expected)
    # the same words again are refused and the fingerprint stays
    assert not bool(entropy.fresh(tf.constant(words), tf.constant(True), kept))
    np.testing.assert_array_equal(kept.numpy(), expected)
