import numpy as np
import pytest
import tensorflow as tf

from dpact_tf import build_split_vggface
from dpact_tf.weights import (VGGFACE_MEAN_BGR, fold_preprocessing, load_vggface_weights, read_keras_h5_weights,
                              vggface_preprocess, write_keras_h5_weights)


def _small(num_classes=3):
    return build_split_vggface((32, 32, 3), num_classes, width=1 / 16, fc_units=8)


def _random_file(path, split, fc8_classes=None):
    """A weights file in the keras-vggface layout with random weights of this model's shapes."""
    rng = np.random.default_rng(0)
    weights = {}
    for layer in split.client.layers + split.server.layers:
        if layer.name.startswith(("conv", "fc")):
            arrays = [rng.normal(0, 0.1, w.shape).astype(np.float32) for w in layer.weights]
            if layer.name == "fc8" and fc8_classes:
                arrays = [rng.normal(0, 0.1, (arrays[0].shape[0], fc8_classes)), rng.normal(0, 0.1, (fc8_classes,))]
            weights[layer.name] = arrays
    write_keras_h5_weights(str(path), weights)
    return weights


def test_read_write_round_trip(tmp_path):
    split = _small()
    written = _random_file(tmp_path / "w.h5", split)
    read = read_keras_h5_weights(str(tmp_path / "w.h5"))
    assert list(read) == list(written)
    np.testing.assert_array_equal(read["conv3_2"][0], written["conv3_2"][0])


def test_load_by_name_with_folding(tmp_path):
    split = _small()
    written = _random_file(tmp_path / "w.h5", split)
    report = load_vggface_weights(split, str(tmp_path / "w.h5"))
    assert report["skipped"] == [] and "conv1_1" in report["loaded"] and "fc8" in report["loaded"]
    np.testing.assert_array_equal(split.server.get_layer("conv2_1").get_weights()[0], written["conv2_1"][0])

    # The folded conv1_1 on [0, 1] RGB equals the original conv1_1 on BGR*255 - mean (interior pixels).
    x = np.random.default_rng(1).uniform(size=(2, 32, 32, 3)).astype(np.float32)
    kernel, bias = written["conv1_1"]
    reference = tf.nn.relu(tf.nn.conv2d(vggface_preprocess(x), kernel, 1, "SAME") + bias).numpy()
    ours = tf.keras.Model(split.client.input, split.client.get_layer("conv1_1").output)(x).numpy()
    scale = np.abs(reference).max()
    np.testing.assert_allclose(ours[:, 1:-1, 1:-1], reference[:, 1:-1, 1:-1], atol=1e-5 * scale)
    # In the border the original pads with the mean colour, ours with black: they differ there.
    assert np.abs(ours[:, 0] - reference[:, 0]).max() > 1e-3 * scale


def test_fold_hand_example():
    # a 1x1 kernel reading only the B channel (BGR index 0) with weight 1 and bias 0:
    # original output = 255 * x_B - 93.5940, x_B is RGB index 2.
    kernel = np.zeros((1, 1, 3, 1)); kernel[0, 0, 0, 0] = 1.0
    k, b = fold_preprocessing(kernel, np.zeros(1))
    assert k[0, 0, 2, 0] == pytest.approx(255.0) and k[0, 0, 0, 0] == 0
    assert b[0] == pytest.approx(-VGGFACE_MEAN_BGR[0])


def test_fc8_skipped_when_classes_differ(tmp_path):
    split = _small(num_classes=3)
    _random_file(tmp_path / "w.h5", split, fc8_classes=7)
    before = split.server.get_layer("fc8").get_weights()[0].copy()
    report = load_vggface_weights(split, str(tmp_path / "w.h5"))
    assert report["skipped"] == ["fc8"]
    np.testing.assert_array_equal(before, split.server.get_layer("fc8").get_weights()[0])


def test_shape_mismatch_is_an_error(tmp_path):
    _random_file(tmp_path / "w.h5", build_split_vggface((32, 32, 3), 3, width=1 / 8, fc_units=8))
    with pytest.raises(ValueError, match="layer conv1_1: the model expects"):
        load_vggface_weights(_small(), str(tmp_path / "w.h5"))


def test_not_a_weights_file(tmp_path):
    import h5py
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f.create_dataset("a", data=[1])
    with pytest.raises(ValueError, match="not a Keras HDF5 weights file"):
        read_keras_h5_weights(str(tmp_path / "x.h5"))
