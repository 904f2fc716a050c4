"""dpact_tf.dlib_faces: the crop geometry exactly, embeddings with a stand-in model, and dlib's network on real LFW.

The LFW check is skipped without LFW ($DPACT_LFW_DIR or data/lfw) or without the model file
(data_scripts/fetch_dlib_model.py); data_scripts/dlib_lfw_check.py runs the full version and chooses the crop.
"""
import numpy as np
import pytest

from dpact_tf.dlib_faces import LFW_CROP, FaceCrop, crop_box, face_embeddings, face_extractor


def _mean_colour_model(size=150):
    """A stand-in for the face network: the chip's mean colour (3 numbers), so embeddings can be derived by hand."""
    import tensorflow as tf

    inputs = tf.keras.Input((size, size, 3))
    return tf.keras.Model(inputs, tf.keras.layers.GlobalAveragePooling2D()(inputs))


def _left_minus_right_model(size=150):
    """Mean of the chip's left half minus its right half: mirroring negates it, so a mirror average is 0."""
    import tensorflow as tf

    inputs = tf.keras.Input((size, size, 3))
    pool = tf.keras.layers.GlobalAveragePooling2D()
    left = pool(tf.keras.layers.Cropping2D(((0, 0), (0, size // 2)))(inputs))
    right = pool(tf.keras.layers.Cropping2D(((0, 0), (size // 2, 0)))(inputs))
    return tf.keras.Model(inputs, tf.keras.layers.Subtract()([left, right]))


def test_mirror_averages_the_descriptor_of_the_mirrored_chip():
    model = _left_minus_right_model()
    images = np.zeros((3, 250, 250, 3), np.uint8)
    images[:, :, :125] = 120  # bright left half of the frame
    plain = face_embeddings(images, model, crop=FaceCrop(1.0), normalize=False)
    assert (plain > 100).all()  # left mean ~120, right mean ~0 (the centre column blends)
    mirrored = face_embeddings(images, model, crop=FaceCrop(1.0), normalize=False, mirror=True)
    np.testing.assert_allclose(mirrored, 0.0, atol=1e-4)


def _sample_points(box, image_size, source_crop_fraction, out_size):
    """Where crop_and_resize samples, as fractions of the 250x250 frame (rows)."""
    y1, _, y2, _ = box[0]
    p = y1 * (image_size - 1) + np.arange(out_size) * (y2 - y1) * (image_size - 1) / (out_size - 1)
    return (p + 0.5) / image_size * source_crop_fraction + (1 - source_crop_fraction) / 2


@pytest.mark.parametrize("image_size,fraction", [(250, 1.0), (64, 0.6), (224, 224 / 250), (97, 0.8)])
def test_crop_box_samples_the_same_frame_points_at_every_resolution(image_size, fraction):
    crop = FaceCrop(side=0.44, center_y=0.53, center_x=0.5)
    box = crop_box(crop, image_size=image_size, source_crop_fraction=fraction, out_size=150)
    # output pixel i samples the box at (i + 0.5) / 150 of its side
    want = crop.center_y - crop.side / 2 + (np.arange(150) + 0.5) * crop.side / 150
    np.testing.assert_allclose(_sample_points(box, image_size, fraction, 150), want, atol=1e-6)


def test_whole_frame_crop_is_the_identity_sampling():
    box = crop_box(FaceCrop(side=1.0), image_size=150, out_size=150)
    np.testing.assert_allclose(box, [[0.0, 0.0, 1.0, 1.0]], atol=1e-6)
    with pytest.raises(ValueError, match="source_crop_fraction"):
        crop_box(LFW_CROP, image_size=64, source_crop_fraction=0.0)
    with pytest.raises(ValueError, match="side"):
        FaceCrop(side=0.0)


def test_embeddings_by_hand_with_a_mean_colour_model():
    model = _mean_colour_model()
    images = np.zeros((5, 250, 250, 3), np.uint8)
    images[:, :, :] = [[200, 100, 50]]
    # a box inside the image sees only the colour
    raw = face_embeddings(images, model, crop=FaceCrop(0.5), normalize=False, batch_size=2)
    np.testing.assert_allclose(raw, np.tile([200.0, 100.0, 50.0], (5, 1)), rtol=1e-5)
    unit = face_embeddings(images, model, crop=FaceCrop(0.5), batch_size=3)
    np.testing.assert_allclose(unit, raw / np.linalg.norm(raw, axis=1, keepdims=True), rtol=1e-5)
    # a box twice the frame: samples outside the image's outer pixel centres (frame fractions 0.5/250 .. 249.5/250)
    # read as black, about three quarters of the chip
    big = face_embeddings(images[:1], model, crop=FaceCrop(2.0), normalize=False)
    f = -0.5 + (np.arange(150) + 0.5) * 2.0 / 150
    inside = np.mean((f >= 0.5 / 250 - 1e-9) & (f <= 249.5 / 250 + 1e-9))
    np.testing.assert_allclose(big, [np.array([200.0, 100.0, 50.0]) * inside ** 2], rtol=1e-5)
    # the same frame stored at 64 px of the centre 0.6 gives the same chip statistics
    small = face_embeddings(images[:1, :64, :64], model, crop=FaceCrop(0.5), source_crop_fraction=0.6,
                            normalize=False)
    np.testing.assert_allclose(small, raw[:1], rtol=1e-5)
    extract = face_extractor(model, crop=FaceCrop(0.5), normalize=False)
    np.testing.assert_allclose(extract(images), raw, rtol=1e-6)
    with pytest.raises(ValueError, match=r"\[N, S, S, 3\]"):
        face_embeddings(images[:, :, :200], model)


def _lfw_and_model():
    from dpact_tf.data import LFWNotFoundError, resolve_lfw_dir
    from dpact_tf.dlib_resnet import find_model_file

    try:
        resolve_lfw_dir()
        find_model_file()
    except (LFWNotFoundError, FileNotFoundError) as err:
        pytest.skip(f"needs LFW and dlib's model: {str(err)[:200]}")
    from dpact_tf.dlib_keras import load_face_resnet

    return load_face_resnet()


def test_dlib_resnet_on_real_lfw():
    """Conversion and crop together: high verification on public people the crop was not chosen on, and
    nearest-class-mean identification of the 158 evaluation people far above chance (1/158), each person's mean
    from three of their training images (data_scripts/dlib_lfw_check.py embeds every image)."""
    from dpact_tf.data import load_lfw, load_lfw_public
    from dpact_tf.face_verification import nearest_mean_accuracy, verification_pairs, verify_pairs

    model = _lfw_and_model()
    pub = load_lfw_public(min_images_per_person=2, max_images_per_person=4, image_size=250, crop_fraction=1.0,
                          strict=False, progress=False)
    images = np.concatenate([pub.train_images, pub.test_images])[:800]
    labels = np.concatenate([pub.train_labels, pub.test_labels])[:800]
    same, diff = verification_pairs(labels)
    result = verify_pairs(face_embeddings(images, model, normalize=False), same, diff, threshold=0.6)
    assert len(same) > 300
    assert result.accuracy > 0.95, result  # chance: 0.5
    split = load_lfw(image_size=250, crop_fraction=1.0, progress=False)
    first = np.concatenate([np.flatnonzero(split.train_labels == c)[:3] for c in np.unique(split.train_labels)])
    assert len(np.unique(split.train_labels[first])) == 158 and len(split.test_labels) > 400
    acc = nearest_mean_accuracy(face_embeddings(split.train_images[first], model), split.train_labels[first],
                                face_embeddings(split.test_images, model), split.test_labels)
    assert acc > 0.95  # chance: 1/158
