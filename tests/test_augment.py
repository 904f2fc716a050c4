import numpy as np
import pytest
import tensorflow as tf

from dpact_tf.augment import Augmentation, augment_batch
from dpact_tf.data import make_dataset

OFF = Augmentation(flip=False, min_crop=1.0, brightness=0.0, contrast=0.0, saturation=0.0)
KEY = tf.constant([3, 7], tf.int64)


def _faces(n=64, size=32, seed=0):
    return np.random.default_rng(seed).uniform(size=(n, size, size, 3)).astype(np.float32)


def test_shape_and_pixel_range_are_kept():
    extremes = np.concatenate([_faces(16), np.zeros((4, 32, 32, 3), np.float32), np.ones((4, 32, 32, 3), np.float32)])
    strong = Augmentation(min_crop=0.5, brightness=0.9, contrast=0.9, saturation=0.9)
    for k in range(5):
        out = augment_batch(extremes, tf.constant([k, 1], tf.int64), strong).numpy()
        assert out.shape == extremes.shape and out.dtype == np.float32
        assert out.min() >= 0.0 and out.max() <= 1.0
    # shapes are static in a traced pipeline (the network's input needs them), whatever the batch size
    spec = tf.TensorSpec([None, 32, 32, 3], tf.float32)
    traced = tf.function(lambda x: augment_batch(x, KEY)).get_concrete_function(spec)
    assert traced.output_shapes.as_list() == [None, 32, 32, 3]


def test_same_seed_same_images_other_seed_other_images():
    x = _faces()
    a, b = augment_batch(x, KEY).numpy(), augment_batch(x, KEY).numpy()
    c = augment_batch(x, tf.constant([3, 8], tf.int64)).numpy()
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).mean() > 0.01


def test_everything_off_is_the_identity():
    x = _faces()
    np.testing.assert_array_equal(augment_batch(x, KEY, OFF).numpy(), x)


def test_flip_mirrors_some_images_and_keeps_the_others():
    x = _faces()
    out = augment_batch(x, KEY, Augmentation(flip=True, min_crop=1.0, brightness=0, contrast=0, saturation=0)).numpy()
    kept = np.all(out == x, axis=(1, 2, 3))
    mirrored = np.all(out == x[:, :, ::-1], axis=(1, 2, 3))
    assert np.all(kept | mirrored)
    assert kept.any() and mirrored.any()  # 64 fair coins: all equal with probability 2^-63


def test_crop_zooms_in_by_at_most_min_crop():
    # A horizontal ramp: pixel (row, col) = col / (W - 1).  A crop of side s (fraction of the image) resized back
    # keeps it a ramp with step s / (W - 1) per pixel, s in [min_crop, 1], and inside [0, 1].
    w = 32
    ramp = np.broadcast_to(np.arange(w, dtype=np.float32) / (w - 1), (64, w, w)).copy()
    x = np.stack([ramp] * 3, axis=-1)
    out = augment_batch(x, KEY, Augmentation(flip=False, min_crop=0.6, brightness=0, contrast=0,
                                             saturation=0)).numpy()
    steps = np.diff(out[..., 0], axis=2) * (w - 1)  # = s for every pixel of an image
    s = steps.mean(axis=(1, 2))
    np.testing.assert_allclose(steps, np.broadcast_to(s[:, None, None], steps.shape), atol=1e-4)
    assert s.min() >= 0.6 - 1e-4 and s.max() <= 1 + 1e-4 and s.std() > 0.05
    np.testing.assert_allclose(out[..., 0], out[..., 1])  # the same crop for every channel
    np.testing.assert_allclose(out[:, 0, :, 0], out[:, -1, :, 0], atol=1e-6)  # every row alike: still a ramp


def test_colour_jitter_changes_colour_not_geometry():
    # A constant image stays constant under brightness and contrast (each image is shifted and scaled as a whole)
    grey = np.full((16, 8, 8, 3), 0.5, np.float32)
    out = augment_batch(grey, KEY, Augmentation(flip=False, min_crop=1.0, brightness=0.3, contrast=0.5,
                                                saturation=0.5)).numpy()
    assert np.all(out.std(axis=(1, 2, 3)) < 1e-6) and out.reshape(16, -1)[:, 0].std() > 0.05


@pytest.mark.parametrize("field,value", [("min_crop", 0.0), ("min_crop", 1.5), ("brightness", -0.1),
                                         ("contrast", 1.0)])
def test_bad_settings_are_refused(field, value):
    with pytest.raises(ValueError, match=field):
        Augmentation(**{field: value})


def test_make_dataset_augments_only_when_asked():
    images = (_faces(10) * 255).astype(np.uint8)
    plain = np.concatenate([b[0].numpy() for b in make_dataset(images, np.arange(10), batch_size=4)])
    np.testing.assert_allclose(plain, images / 255.0, atol=1e-7)  # evaluation pipelines: the images as they are
    ds = make_dataset(images, np.arange(10), batch_size=4, augment=Augmentation(), seed=5)
    assert int(ds.cardinality()) == 3  # the trainer's schedule needs the number of batches
    epoch1 = np.concatenate([b[0].numpy() for b in ds])
    epoch2 = np.concatenate([b[0].numpy() for b in ds])
    again = np.concatenate([b[0].numpy() for b in make_dataset(images, np.arange(10), batch_size=4,
                                                               augment=Augmentation(), seed=5)])
    assert epoch1.shape == plain.shape and 0.0 <= epoch1.min() and epoch1.max() <= 1.0
    assert np.abs(epoch1 - plain).mean() > 0.01 and np.abs(epoch1 - epoch2).mean() > 0.01  # new draws every epoch
    np.testing.assert_array_equal(epoch1, again)  # ... fixed by the seed
