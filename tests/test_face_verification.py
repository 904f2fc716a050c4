"""dpact_tf.face_verification: pairs, threshold verification and nearest class mean, on hand-made features."""
import numpy as np
import pytest

from dpact_tf.face_verification import nearest_mean_accuracy, verification_pairs, verify_pairs


def test_pairs_are_every_same_pair_and_as_many_different_pairs():
    labels = np.array([0, 0, 0, 1, 1, 2])
    same, diff = verification_pairs(labels, seed=3)
    # same pairs: C(3,2) + C(2,2) = 4, listed with i < j
    assert sorted(map(tuple, same)) == [(0, 1), (0, 2), (1, 2), (3, 4)]
    assert len(diff) == 4 and (labels[diff[:, 0]] != labels[diff[:, 1]]).all()
    again, diff2 = verification_pairs(labels, seed=3)
    np.testing.assert_array_equal(diff, diff2)
    with pytest.raises(ValueError, match="repeated label"):
        verification_pairs(np.array([0, 1, 2]))


def test_verify_pairs_counts_decisions_exactly():
    f = np.array([[0.0, 0.0], [0.5, 0.0], [0.0, 1.0], [3.0, 0.0]])
    same = np.array([[0, 1], [0, 2]])        # distances 0.5 (< 0.6: accepted) and 1.0 (rejected)
    diff = np.array([[0, 3], [1, 0]])        # distances 3.0 (rejected: right) and 0.5 (accepted: wrong)
    r = verify_pairs(f, same, diff, threshold=0.6)
    assert (r.true_accept, r.true_reject, r.accuracy, r.pairs) == (0.5, 0.5, 0.5, 4)
    r = verify_pairs(f, same, diff, threshold=1.5)  # accepts 0.5, 1.0, 0.5; rejects 3.0
    assert (r.true_accept, r.true_reject, r.accuracy) == (1.0, 0.5, 0.75)
    with pytest.raises(ValueError, match="threshold"):
        verify_pairs(f, same, diff, threshold=0)


def test_nearest_mean_accuracy():
    train = np.array([[0.0, 0.0], [0.0, 2.0], [10.0, 0.0], [10.0, 2.0]])  # class means (0, 1) and (10, 1)
    labels = np.array([7, 7, 9, 9])
    test = np.array([[1.0, 1.0], [6.0, 1.0], [4.0, 1.0]])                # nearest: 7, 9, 7
    assert nearest_mean_accuracy(train, labels, test, np.array([7, 9, 9])) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="training set"):
        nearest_mean_accuracy(train, labels, test, np.array([7, 9, 8]))
