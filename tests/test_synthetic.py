import numpy as np
import pytest

from dpact_tf.synthetic import synthetic_faces


def test_deterministic_and_labelled():
    a = synthetic_faces(4, 10, 32, seed=3)
    b = synthetic_faces(4, 10, 32, seed=3)
    np.testing.assert_array_equal(a.train_images, b.train_images)
    assert not np.array_equal(a.train_images, synthetic_faces(4, 10, 32, seed=4).train_images)
    assert a.source == "synthetic" and a.is_synthetic and "SYNTHETIC" in a.description
    assert a.num_classes == 4 and len(a.test_labels) == 4 and len(a.train_labels) == 36


def test_identity_structure():
    # images of one identity are closer to each other than to other identities
    s = synthetic_faces(5, 12, 32, seed=0)
    x = s.train_images.reshape(len(s.train_images), -1).astype(np.float32)
    means = np.stack([x[s.train_labels == k].mean(0) for k in range(5)])
    dist = ((x[:, None, :] - means[None]) ** 2).sum(-1)
    assert (dist.argmin(1) == s.train_labels).mean() > 0.9


def test_prefix_makes_disjoint_people():
    a = synthetic_faces(3, 4, 16)
    b = synthetic_faces(3, 4, 16, prefix="synthetic_public", seed=9)
    assert not set(a.class_names) & set(b.class_names)


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_identities"):
        synthetic_faces(1, 10)
    with pytest.raises(ValueError, match="images_per_identity"):
        synthetic_faces(3, 1)


def test_majority_rate_and_distinct_people():
    s = synthetic_faces(5, 10, 16)
    assert s.majority_class_rate == pytest.approx(1 / 5)  # one test image per identity
    idx = s.distinct_people_test_indices(3)
    assert len(set(s.test_labels[idx])) == 3
    assert len(s.distinct_people_test_indices(99)) == 5
